"""A bounded run of the parser fuzzer (``benchmarks/fuzz_parser.py``) with a
fixed seed, and proof that its checks catch a misbehaving parser."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.fuzz_parser import build_corpus, check_input, fuzz
from valkeyaside.resp3 import Parser

SEED = 20240601
COUNT = 50_000
TIME_CAP = 20.0  # seconds; the count is normally reached in 3 to 5


def describe(result: Any) -> str:
    return "\n".join(failure.describe() for failure in result.failures)


def test_corpus_is_valid_resp3() -> None:
    corpus = build_corpus(SEED)
    too_deep = b"*1\r\n" * 70 + b":1\r\n"
    for frame in corpus:
        cuts = list(range(1, len(frame))) if len(frame) < 600 else [len(frame) // 2]
        outcome, detail, frames = check_input(frame, cuts, {})
        if frame == too_deep:
            assert outcome == "protocol-error", detail
        else:
            assert (outcome, frames >= 1) == ("done", True), (frame, outcome, detail)


def test_fuzz_fixed_seed() -> None:
    result = fuzz(COUNT, seed=SEED, seconds=TIME_CAP, hang_timeout=2.0)
    assert result.failure_count == 0, describe(result)
    assert result.count >= min(COUNT, 5_000), f"only {result.count} inputs in {TIME_CAP} s"
    # The mutator must reach every outcome, not only the easy rejections.
    for outcome in ("done", "incomplete", "protocol-error"):
        assert result.outcomes[outcome] >= result.count // 20, result.outcomes
    assert result.traced > 0
    assert result.rss_peak - result.rss_baseline < 64 * 2**20


class _Misbehaving(Parser):
    """A parser with planted bugs, each set off by a marker in the input."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.seen = b""

    def feed(self, data: Any) -> None:
        self.seen += bytes(data)
        super().feed(data)

    def next_frame(self) -> Any:
        if b"#t" in self.seen:
            raise KeyError("planted")
        if b",inf" in self.seen:
            while True:  # planted hang
                pass
        if b"_\r\n" in self.seen and len(self.seen) > 8:
            return 1  # planted runaway: a frame out of nothing, forever
        if b"$5\r\nhello" in self.seen:
            self.hog = bytearray(8 * 2**20)  # planted allocation
        return super().next_frame()


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"#t\r\n", "unexpected-exception"),
        (b",inf\r\n", "hang"),
        (b"*2\r\n_\r\n_\r\n", "runaway"),
        (b"$5\r\nhello\r\n", "memory"),
    ],
)
def test_fuzz_catches_a_misbehaving_parser(frame: bytes, kind: str) -> None:
    result = fuzz(30, seed=1, corpus=[frame], parser_class=_Misbehaving, hang_timeout=0.2,
                  trace_every=1)
    assert kind in {failure.kind for failure in result.failures}, describe(result)
    assert result.failure_count > 0
