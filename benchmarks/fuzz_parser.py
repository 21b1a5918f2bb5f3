"""Fuzz the RESP3 parser: random and mutated inputs, fed in random splits.

The corpus holds valid frames of every RESP3 type (simple, blob and
verbatim strings and errors, integers, big numbers, doubles with inf and
nan, booleans, nulls of every spelling, arrays, maps, sets, pushes,
attributes, streamed strings and streamed aggregates, deep nesting), some
hand-written and most made by a small random writer. Each input is a corpus
frame (or several) put through one to four mutations: bit flips, byte
overwrites, inserts (of random bytes, of RESP3 tokens, of whole frames) and
deletes, truncation, splicing two frames, duplicating a slice, and tweaks of
a length field (to 0, -1, -2, off by one, 2**31, 2**32, 2**63, 10**30,
``?``, a sign, a space, leading zeros...); some inputs are plain random
bytes. A quarter of the inputs run under tiny parser limits.

Every input is parsed twice: fed whole, and fed in random pieces (sometimes
byte by byte) with ``next_frame`` called until ``NEED_DATA`` after each feed.
A failure is any of:

- an exception other than ``ProtocolError`` (from ``feed`` or ``next_frame``);
- a ``ProtocolError`` that does not stick (the next ``next_frame`` must raise
  it again);
- a runaway: more ``next_frame`` results than the input could hold (every
  frame takes at least 3 bytes);
- a hang: an input still running after ``--hang-timeout`` seconds of CPU
  time (``SIGVTALRM`` interrupts it), or a slow one (over ``--slow``
  seconds of CPU time: wall time on a busy machine measures the neighbours);
- a value of a type outside the documented mapping;
- a split mismatch: the frames, or the outcome (complete, incomplete,
  ``ProtocolError``), differ between the whole and the split feeding
  (the same bytes must mean the same thing however they arrive);
- memory: the peak RSS of the process (``ru_maxrss``, which also catches
  brief spikes) growing more than ``--rss-limit`` MiB over the baseline, or,
  on one input in ``--trace-every`` (run under ``tracemalloc``), a traced
  peak over ``64 * len(input) + 256 KiB``: a parser that believed a length
  field would blow either.

Run: ``python -m benchmarks.fuzz_parser [--count 1000000] [--seed N]
[--save DIR]``; ``--atheris`` runs the same checks under atheris
(coverage-guided libFuzzer) instead, when it is installed. The exit status
is non-zero when anything failed; ``--save`` writes the failing inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import re
import resource
import signal
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from valkeyaside.errors import ResponseError
from valkeyaside.resp3 import NEED_DATA, Parser, ProtocolError, Push

__all__ = ["FuzzResult", "build_corpus", "check_input", "fuzz", "mutate"]

CRLF = b"\r\n"
_TYPE_BYTES = b"+-:$*%~>|_,#(=!;."
_TOKENS = [
    b"\r\n", b"\r", b"\n", b"?", b"-1", b"-2", b"0", b"1", b"+", b"-", b".", b"inf", b"nan",
    b"4294967296", b"18446744073709551616", b"$?\r\n", b"*?\r\n", b";0\r\n", b".\r\n",
    b"|1\r\n", b"*1\r\n", b"%1\r\n", b"txt:", b"\x00", b"\xff", b"\xc3\x28",
] + [bytes([b]) for b in _TYPE_BYTES]
_LENGTHS = [
    b"0", b"1", b"2", b"3", b"-1", b"-2", b"-0", b"?", b"", b"+1", b" 1", b"1 ", b"01",
    b"0001", b"2147483647", b"2147483648", b"4294967295", b"4294967296", b"4294967297",
    b"9223372036854775807", b"9223372036854775808", b"18446744073709551616",
    b"536870911", b"536870912", b"536870913", b"1" + b"0" * 30, b"1e3", b"0x10", b"1_0",
    b"\xd9\xa1",  # Arabic-Indic digit one (str.isdigit is True for it, bytes.isdigit is not)
]
_LENGTH_FIELD = re.compile(rb"[$*%~>|=!;]([^\r\n]{0,24})\r\n")
_MAX_INPUT = 1 << 16


# -- corpus ----------------------------------------------------------------------


def _frame(type_byte: bytes, payload: bytes) -> bytes:
    return b"%s%d\r\n%s\r\n" % (type_byte, len(payload), payload)


_HAND_WRITTEN = [
    b"+OK\r\n", b"+\r\n", b"-ERR unknown command\r\n", b"-\r\n", b":0\r\n", b":-123\r\n",
    b":+42\r\n", b":9223372036854775807\r\n", b":-9223372036854775808\r\n",
    b"$5\r\nhello\r\n", b"$0\r\n\r\n", b"$-1\r\n", b"$2\r\n\r\n\r\n", b"*-1\r\n", b"*0\r\n",
    b"*2\r\n:1\r\n$1\r\na\r\n", b"%0\r\n", b"%1\r\n+k\r\n:1\r\n", b"~0\r\n",
    b"~2\r\n:1\r\n:2\r\n", b"~2\r\n*1\r\n:1\r\n:2\r\n", b">0\r\n",
    b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b">2\r\n$10\r\ninvalidate\r\n_\r\n", b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
    b"|0\r\n:1\r\n", b"*1\r\n|1\r\n+a\r\n+b\r\n:1\r\n", b",1.5\r\n", b",-0.0\r\n",
    b",1e10\r\n", b",1.5E-3\r\n", b",.5\r\n", b",inf\r\n", b",-inf\r\n", b",+inf\r\n",
    b",nan\r\n", b",-nan\r\n", b"#t\r\n", b"#f\r\n",
    b"(3492890328409238509324850943850943825024385\r\n", b"(-1\r\n",
    b"=15\r\ntxt:Some string\r\n", b"=4\r\ntxt:\r\n", b"!21\r\nSYNTAX invalid syntax\r\n",
    b"!0\r\n\r\n", b"_\r\n", b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
    b"$?\r\n;0\r\n", b"*?\r\n:1\r\n:2\r\n.\r\n", b"*?\r\n.\r\n", b"%?\r\n+a\r\n:1\r\n.\r\n",
    b"~?\r\n+a\r\n.\r\n", b"*?\r\n*?\r\n.\r\n$?\r\n;1\r\nx\r\n;0\r\n.\r\n",
    b"*1\r\n" * 40 + b":1\r\n", b"*1\r\n" * 70 + b":1\r\n",
    b"%7\r\n$6\r\nserver\r\n$6\r\nvalkey\r\n$7\r\nversion\r\n$5\r\n8.1.0\r\n$5\r\nproto\r\n:3\r\n"
    b"$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
    b"$7\r\nmodules\r\n*0\r\n",
    b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:-1\r\n$3\r\nbar\r\n",
    b"*2\r\n:-2\r\n_\r\n", b"-EXECABORT Transaction discarded\r\n",
    # Streamed values followed by more frames in the same buffer: a closed
    # stream must leave no trace in how the next frame is read.
    b"$?\r\n;1\r\na\r\n;0\r\n=5\r\ntxt:x\r\n", b"$?\r\n;0\r\n!3\r\nERR\r\n$1\r\nb\r\n",
    b"*?\r\n:1\r\n.\r\n*?\r\n.\r\n:2\r\n", b"%?\r\n+a\r\n:1\r\n.\r\n~?\r\n.\r\n",
    b"*1\r\n$?\r\n;2\r\nab\r\n;0\r\n=5\r\ntxt:y\r\n",
]


def _random_value(rng: random.Random, depth: int) -> bytes:
    """One valid frame: a random value in a random (equivalent) encoding."""
    out = b""
    if rng.random() < 0.08:  # an attribute before the value, read and dropped
        out += b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n"
    roll = rng.random() if depth < 4 else rng.random() * 0.6
    if roll < 0.1:
        n = rng.choice([0, 1, -1, 7, 2**63 - 1, -(2**63), 10**25, rng.randint(-999, 999)])
        return out + (b":%d\r\n" % n if abs(n) < 2**63 else b"(%d\r\n" % n)
    if roll < 0.25:
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 3, 10, 40])))
        if rng.random() < 0.25 and data:
            cut = rng.randint(1, len(data))
            return out + b"$?\r\n" + _frame(b";", data[:cut]) + (
                _frame(b";", data[cut:]) if cut < len(data) else b"") + b";0\r\n"
        return out + _frame(b"$", data)
    if roll < 0.33:
        text = rng.choice([b"OK", b"", b"PONG", b"QUEUED", "\u00e9t\u00e9".encode()])
        return out + b"+" + text + CRLF
    if roll < 0.38:
        return out + rng.choice([b"-ERR x\r\n", _frame(b"!", b"ERR a\r\nb"),
                                 b"-WRONGTYPE Operation\r\n"])
    if roll < 0.45:
        return out + rng.choice([b"_\r\n", b"$-1\r\n", b"*-1\r\n", b"#t\r\n", b"#f\r\n"])
    if roll < 0.52:
        d = rng.choice([0.0, -0.0, 1.5, -2.25e-8, 1e300, math.pi])
        return out + b"," + rng.choice([repr(d), f"{d:.17e}", "inf", "-inf", "nan"]).encode() \
            + CRLF
    if roll < 0.58:
        return out + _frame(b"=", rng.choice([b"txt", b"mkd"]) + b":" + b"line\r\nnext")
    # an aggregate
    kind = rng.choice([b"*", b"*", b"%", b"~", b">"])
    count = rng.choice([0, 1, 2, 3, 5])
    items = [_random_value(rng, depth + 1) for _ in range(count * (2 if kind == b"%" else 1))]
    if kind == b"~":  # set members must be hashable: scalars only
        items = [rng.choice([b":1\r\n", b"$1\r\na\r\n", b"+s\r\n", b"#t\r\n", b"_\r\n"])
                 for _ in range(count)]
    if kind == b"%":  # map keys must be hashable too
        items = [rng.choice([b":%d\r\n" % i, b"$1\r\n%d\r\n" % (i % 10)]) if i % 2 == 0 else item
                 for i, item in enumerate(items)]
    if kind != b">" and rng.random() < 0.25:
        return out + kind + b"?\r\n" + b"".join(items) + b".\r\n"
    return out + kind + b"%d\r\n" % count + b"".join(items)


def build_corpus(seed: int = 0, generated: int = 400) -> List[bytes]:
    """Valid RESP3 frames of every type: the hand-written ones and ``generated`` random ones."""
    rng = random.Random(seed)
    return list(_HAND_WRITTEN) + [_random_value(rng, 0) for _ in range(generated)]


# -- mutation ---------------------------------------------------------------------


def _bit_flip(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    if data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _overwrite(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(
            [rng.randrange(256), rng.choice(_TYPE_BYTES), 13, 10, 48 + rng.randrange(10)])


def _insert(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    at = rng.randint(0, len(data))
    roll = rng.random()
    if roll < 0.4:
        piece = rng.choice(_TOKENS)
    elif roll < 0.7:
        piece = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
    else:
        piece = rng.choice(corpus)
    data[at:at] = piece


def _delete(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    if data:
        at = rng.randrange(len(data))
        del data[at:at + rng.randint(1, 8)]


def _truncate(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    if data:
        del data[rng.randrange(len(data)):]


def _splice(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    other = rng.choice(corpus)
    data[rng.randint(0, len(data)):] = other[rng.randint(0, len(other)):]


def _duplicate(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    if data:
        start = rng.randrange(len(data))
        piece = data[start:start + rng.randint(1, 32)]
        at = rng.randint(0, len(data))
        data[at:at] = piece * rng.randint(1, 4)


def _length(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    fields = list(_LENGTH_FIELD.finditer(data))
    if not fields:
        _insert(rng, data, corpus)
        return
    match = rng.choice(fields)
    old = match.group(1)
    roll = rng.random()
    if roll < 0.6:
        new = rng.choice(_LENGTHS)
    elif re.fullmatch(rb"-?[0-9]{1,24}", old):
        new = b"%d" % (int(old) + rng.choice([-2, -1, 1, 2, 100]))
    else:
        new = b"%d" % rng.randint(-2, 20)
    data[match.start(1):match.end(1)] = new


def _header(rng: random.Random, data: bytearray, corpus: Sequence[bytes]) -> None:
    """Change a frame's type byte (the byte after a CRLF, or the first one)."""
    starts = [0] + [m.end() for m in re.finditer(rb"\r\n", data) if m.end() < len(data)]
    if data:
        data[rng.choice(starts)] = rng.choice(_TYPE_BYTES)


MUTATORS: List[Callable[[random.Random, bytearray, Sequence[bytes]], None]] = [
    _bit_flip, _overwrite, _insert, _delete, _truncate, _splice, _duplicate, _length,
    _length, _header,
]


def mutate(rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    """A new input: random bytes, or corpus frames put through 1 to 4 mutations."""
    roll = rng.random()
    if roll < 0.03:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if roll < 0.06:  # random bytes drawn from the RESP3 alphabet
        alphabet = b"\r\n?-+.0123456789" + _TYPE_BYTES
        return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 64)))
    data = bytearray(rng.choice(corpus))
    while rng.random() < 0.3 and len(data) < 4096:  # several frames back to back
        data += rng.choice(corpus)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        rng.choice(MUTATORS)(rng, data, corpus)
    del data[_MAX_INPUT:]
    return bytes(data)


def random_limits(rng: random.Random) -> Dict[str, int]:
    """Parser limits: the defaults three times in four, else tiny ones."""
    if rng.random() < 0.75:
        return {}
    return {
        "max_bulk_len": rng.choice([0, 1, 4, 16, 64]),
        "max_depth": rng.choice([1, 2, 3, 8]),
        "max_aggregate_len": rng.choice([0, 1, 2, 5]),
        "max_line_len": rng.choice([1, 4, 16, 64, 1024]),
    }


def random_cuts(rng: random.Random, size: int) -> List[int]:
    """Where to split an input of ``size`` bytes: sometimes every byte, else a few places."""
    if size <= 1:
        return []
    roll = rng.random()
    if roll < 0.1 and size <= 512:
        return list(range(1, size))
    if roll < 0.2:
        return []
    return sorted({rng.randrange(1, size) for _ in range(rng.randint(1, 8))})


# -- checking one input ---------------------------------------------------------------


class _Hang(BaseException):
    """Raised by SIGVTALRM in an input that ran too long."""


def canonical(value: Any) -> Any:
    """An exactly comparable form of a parsed value (None for a type outside the mapping)."""
    kind = type(value)
    if value is None or kind in (bool, int, bytes, str):
        return (kind.__name__, value)
    if kind is float:
        return ("float", "nan" if math.isnan(value) else repr(value))
    if kind is ResponseError:
        return ("error", str(value))
    if kind in (list, Push):
        items = tuple(canonical(item) for item in value)
        return None if None in items else (kind.__name__, items)
    if kind is set:
        items = tuple(canonical(item) for item in value)
        return None if None in items else ("set", tuple(sorted(items, key=repr)))
    if kind is dict:
        pairs = tuple((canonical(k), canonical(v)) for k, v in value.items())
        if any(k is None or v is None for k, v in pairs):
            return None
        return ("map", tuple(sorted(pairs, key=repr)))
    return None


def _parse(data: bytes, chunks: Sequence[bytes], limits: Dict[str, int],
           parser_class: Callable[..., Any]) -> Tuple[List[Any], str, str]:
    """Feed ``chunks``; return (frames, outcome, detail); outcome is one of
    ``done``, ``incomplete``, ``protocol-error`` or a failure kind."""
    parser = parser_class(**limits)
    frames: List[Any] = []
    budget = len(data) // 3 + 1  # every frame takes at least 3 bytes
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while True:
                frame = parser.next_frame()
                if frame is NEED_DATA:
                    break
                frames.append(frame)
                if len(frames) > budget:
                    return frames, "runaway", f"{len(frames)} frames from {len(data)} bytes"
    except ProtocolError as exc:
        try:
            parser.next_frame()
        except ProtocolError:
            return frames, "protocol-error", str(exc)
        except Exception as again:
            return frames, "unexpected-exception", f"after {exc!r}: {again!r}"
        return frames, "error-not-sticky", str(exc)
    except (_Hang, KeyboardInterrupt):
        raise
    except BaseException as exc:
        return frames, "unexpected-exception", f"{type(exc).__name__}: {exc}"
    return frames, ("incomplete" if parser.buffered else "done"), ""


_OK_OUTCOMES = ("done", "incomplete", "protocol-error")
_LINE_LIMIT = "line longer than"
#: Tolerated unless ``strict``: the parser enforces ``max_line_len`` only on a
#: line that is still waiting for its CRLF, so a long line that arrives whole
#: passes while the same bytes in pieces raise ProtocolError.
LINE_LIMIT_NOTE = (
    "max_line_len is enforced only on lines still waiting for their CRLF: the same bytes "
    "fed whole pass, fed in pieces raise (tolerated unless --strict)"
)


def check_input(data: bytes, cuts: Sequence[int], limits: Dict[str, int],
                parser_class: Callable[..., Any] = Parser) -> Tuple[str, str, int]:
    """Parse ``data`` whole and split at ``cuts``; (outcome or failure kind, detail, frames)."""
    whole_frames, whole, whole_detail = _parse(data, [data] if data else [], limits,
                                               parser_class)
    if whole not in _OK_OUTCOMES:
        return whole, "fed whole: " + whole_detail, len(whole_frames)
    points = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in zip(points, points[1:]) if b > a]
    split_frames, split, split_detail = _parse(data, chunks, limits, parser_class)
    if split not in _OK_OUTCOMES:
        return split, "fed in pieces: " + split_detail, len(split_frames)
    whole_canon = [canonical(f) for f in whole_frames]
    if None in whole_canon:
        bad = whole_frames[whole_canon.index(None)]
        return "bad-type", f"{type(bad).__name__}: {bad!r:.200}", len(whole_frames)
    if whole != split or whole_canon != [canonical(f) for f in split_frames]:
        kind = "split-mismatch"
        if _LINE_LIMIT in whole_detail or _LINE_LIMIT in split_detail:
            kind = "line-limit-mismatch"  # a known library issue: see LINE_LIMIT_NOTE
        return (kind,
                f"whole: {whole} {whole_detail} after {len(whole_frames)} frames; "
                f"pieces: {split} {split_detail} after {len(split_frames)} frames",
                len(whole_frames))
    return whole, whole_detail, len(whole_frames)


# -- the loop ---------------------------------------------------------------------------


@dataclasses.dataclass
class Failure:
    kind: str
    detail: str
    data: bytes
    cuts: List[int]
    limits: Dict[str, int]

    def describe(self) -> str:
        return (f"{self.kind}: {self.detail}\n    input={self.data[:300]!r}"
                f"{'...' if len(self.data) > 300 else ''} ({len(self.data)} bytes)\n"
                f"    cuts={self.cuts[:40]} limits={self.limits}")


@dataclasses.dataclass
class FuzzResult:
    count: int = 0
    seconds: float = 0.0
    outcomes: Counter = dataclasses.field(default_factory=Counter)  # type: ignore[type-arg]
    errors: Counter = dataclasses.field(default_factory=Counter)  # type: ignore[type-arg]
    failures: List[Failure] = dataclasses.field(default_factory=list)
    failure_count: int = 0
    tolerated: List[Failure] = dataclasses.field(default_factory=list)
    frames: int = 0
    bytes_fed: int = 0
    slowest: float = 0.0
    rss_baseline: int = 0
    rss_peak: int = 0
    traced: int = 0
    traced_worst_peak: int = 0
    traced_worst_size: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def _max_rss() -> int:
    """Peak resident set size of this process, in bytes (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


_NUMBER = re.compile(r"\d+")
_QUOTED = re.compile(r"b?['\"].*")  # the quoted input in a message: too many variants to count


def fuzz(
    count: int = 1_000_000,
    *,
    seed: int = 0,
    seconds: Optional[float] = None,
    hang_timeout: float = 2.0,
    slow: float = 0.5,
    rss_limit_mib: float = 128.0,
    trace_every: int = 500,
    parser_class: Callable[..., Any] = Parser,
    corpus: Optional[Sequence[bytes]] = None,
    progress: Optional[Callable[[FuzzResult], None]] = None,
    keep: int = 20,
    strict: bool = False,
) -> FuzzResult:
    """Run ``count`` inputs (or until ``seconds`` pass); see the module docstring."""
    accepted = _OK_OUTCOMES if strict else (*_OK_OUTCOMES, "line-limit-mismatch")
    rng = random.Random(seed)
    corpus = list(corpus) if corpus is not None else build_corpus(seed)
    result = FuzzResult(rss_baseline=_max_rss())
    # CPU time (ITIMER_VIRTUAL), not wall time: a looping parser burns CPU,
    # and the real-time timer stays free for others (pytest-timeout uses it).
    use_alarm = hasattr(signal, "setitimer") and hang_timeout > 0
    previous: Any = None
    if use_alarm:
        def on_alarm(signum: int, frame: Any) -> None:
            raise _Hang()

        previous = signal.signal(signal.SIGVTALRM, on_alarm)
    started = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    next_progress = started + 10.0
    perf_counter = time.perf_counter
    thread_time = time.thread_time  # CPU time: a busy machine's preemptions are not ours
    try:
        for i in range(count):
            data = mutate(rng, corpus)
            cuts = random_cuts(rng, len(data))
            limits = random_limits(rng)
            traced = trace_every > 0 and i % trace_every == 0
            t0 = thread_time()
            try:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_VIRTUAL, hang_timeout)
                if traced:
                    tracemalloc.start()
                try:
                    outcome, detail, frames = check_input(data, cuts, limits, parser_class)
                finally:
                    if traced:
                        peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
                    if use_alarm:
                        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            except _Hang:
                outcome, detail, frames = "hang", f"still running after {hang_timeout} s of CPU", 0
            elapsed = thread_time() - t0
            result.count += 1
            result.frames += frames
            result.bytes_fed += len(data)
            result.outcomes[outcome] += 1
            if outcome == "protocol-error":
                result.errors[_QUOTED.sub("...", _NUMBER.sub("N", detail))[:60]] += 1
            if elapsed > result.slowest:
                result.slowest = elapsed
            if outcome == "line-limit-mismatch" and len(result.tolerated) < 3:
                result.tolerated.append(Failure(outcome, detail, data, list(cuts), limits))
            if outcome in accepted and elapsed > slow:
                outcome, detail = "slow", f"{elapsed:.3f} s of CPU"
            if traced:
                result.traced += 1
                if peak > result.traced_worst_peak:
                    result.traced_worst_peak = peak
                    result.traced_worst_size = len(data)
                if outcome in accepted and peak > 64 * len(data) + 256 * 1024:
                    outcome, detail = "memory", f"traced peak {peak} bytes"
            if outcome not in accepted:
                result.failure_count += 1
                if len(result.failures) < keep:
                    result.failures.append(Failure(outcome, detail, data, list(cuts), limits))
            if i % 1024 == 0:
                rss = _max_rss()
                result.rss_peak = rss
                if rss - result.rss_baseline > rss_limit_mib * 2**20:
                    result.failure_count += 1
                    result.failures.append(Failure(
                        "memory", f"peak RSS grew {(rss - result.rss_baseline) / 2**20:.0f} MiB",
                        data, list(cuts), limits))
                    break
                now = perf_counter()
                if deadline is not None and now >= deadline:
                    break
                if progress is not None and now >= next_progress:
                    result.seconds = now - started
                    progress(result)
                    next_progress = now + 10.0
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, previous)
    result.seconds = perf_counter() - started
    result.rss_peak = _max_rss()
    return result


def report(result: FuzzResult) -> None:
    mib = 2**20
    print(f"inputs              {result.count:,} in {result.seconds:.1f} s "
          f"({result.rate:,.0f} inputs/s); {result.bytes_fed / mib:.1f} MiB fed, "
          f"{result.frames:,} frames parsed")
    print("outcomes            " + ", ".join(f"{k} {v:,}" for k, v in
                                             result.outcomes.most_common()))
    print(f"FAILURES            {result.failure_count}")
    print(f"slowest input       {result.slowest * 1e3:.2f} ms of CPU")
    print(f"peak RSS            {result.rss_peak / mib:.1f} MiB "
          f"(baseline {result.rss_baseline / mib:.1f} MiB)")
    print(f"tracemalloc         {result.traced:,} inputs traced; largest peak "
          f"{result.traced_worst_peak / 1024:.1f} KiB (for a {result.traced_worst_size}-byte "
          "input; bound 64 x size + 256 KiB)")
    print("most common ProtocolErrors:")
    for message, n in result.errors.most_common(12):
        print(f"  {n:>9,}  {message}")
    if result.outcomes["line-limit-mismatch"]:
        print(f"tolerated           {result.outcomes['line-limit-mismatch']:,} "
              f"line-limit mismatches: {LINE_LIMIT_NOTE}")
        for example in result.tolerated:
            print("  " + example.describe())
    for failure in result.failures:
        print("  " + failure.describe())


def save_failures(result: FuzzResult, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for i, failure in enumerate(result.failures):
        base = os.path.join(directory, f"failure-{i:03d}-{failure.kind}")
        with open(base + ".bin", "wb") as f:
            f.write(failure.data)
        with open(base + ".txt", "w") as f:
            f.write(failure.describe() + "\n")


# -- atheris ------------------------------------------------------------------------------


def run_atheris(runs: int, max_seconds: int, extra: Sequence[str], strict: bool = False) -> None:
    """Coverage-guided fuzzing with atheris (never returns: libFuzzer exits)."""
    accepted = _OK_OUTCOMES if strict else (*_OK_OUTCOMES, "line-limit-mismatch")
    import tempfile

    import atheris

    import valkeyaside.resp3._parser as parser_module

    atheris.instrument_func(parser_module.Parser.feed)
    atheris.instrument_func(parser_module.Parser.next_frame)
    atheris.instrument_func(parser_module.Parser._parse)
    atheris.instrument_func(parser_module.Parser._open)
    atheris.instrument_func(parser_module.Parser._length)
    atheris.instrument_func(parser_module._build)
    seeds = tempfile.mkdtemp(prefix="resp3-seeds-")
    for i, frame in enumerate(build_corpus(0)):
        with open(os.path.join(seeds, f"seed-{i:04d}"), "wb") as f:
            f.write(frame)

    def one_input(data: bytes) -> None:
        # The splits and limits come from a hash of the input, so that the
        # input stays a plain RESP3 byte string (the seeds are valid frames)
        # and a crash file replays the same way.
        rng = random.Random(zlib.crc32(data))
        cuts = random_cuts(rng, len(data))
        limits = random_limits(rng)
        outcome, detail, _ = check_input(data, cuts, limits)
        if outcome not in accepted:
            raise AssertionError(f"{outcome}: {detail} (limits {limits}, cuts {cuts})")

    argv = [sys.argv[0], seeds, f"-runs={runs}", f"-max_total_time={max_seconds}",
            "-timeout=5", "-rss_limit_mb=2048", "-max_len=4096", *extra]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=None, help="stop earlier, after this")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hang-timeout", type=float, default=2.0)
    parser.add_argument("--slow", type=float, default=0.5)
    parser.add_argument("--rss-limit", type=float, default=128.0, help="MiB of peak RSS growth")
    parser.add_argument("--trace-every", type=int, default=500)
    parser.add_argument("--strict", action="store_true",
                        help="count line-limit mismatches as failures (see LINE_LIMIT_NOTE)")
    parser.add_argument("--save", default=None, help="write failing inputs to this directory")
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided fuzzing with atheris instead")
    parser.add_argument("--atheris-seconds", type=int, default=300)
    args, extra = parser.parse_known_args(argv)
    if args.atheris:
        run_atheris(args.count, args.atheris_seconds, extra, args.strict)
        return 0
    if extra:
        parser.error(f"unknown arguments: {extra}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {seed}; {args.count:,} inputs", flush=True)

    def progress(r: FuzzResult) -> None:
        print(f"  {r.count:,} inputs, {r.rate:,.0f}/s, {r.failure_count} failures", flush=True)

    result = fuzz(args.count, seed=seed, seconds=args.seconds, hang_timeout=args.hang_timeout,
                  slow=args.slow, rss_limit_mib=args.rss_limit, trace_every=args.trace_every,
                  progress=progress, strict=args.strict)
    report(result)
    if args.save and result.failures:
        save_failures(result, args.save)
    return 0 if result.failure_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
