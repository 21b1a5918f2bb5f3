"""RESP3 parser throughput: valkeyaside's parser against valkey-py's and two C readers.

What is measured: how fast each parser turns a stream of RESP3 bytes into
Python values, with no network involved. Every parser gets the same corpus,
cut into the same 64 KiB chunks (what one ``recv`` on a busy socket gives),
and must drain every frame; the time covers feeding and parsing only.

The parsers:

- ``valkeyaside``: ``valkeyaside.resp3.Parser`` (pure Python, sans-I/O),
  drained with ``frames()``, every complete value of a chunk in one call, as
  the client's own reader drains it; ``valkeyaside next_frame`` drains it one
  ``next_frame()`` call per value, for comparison (the targets use the first).
- ``valkey-py``: valkey-py's pure-Python ``_RESP3Parser``. It reads through
  a ``SocketBuffer`` bound to a socket, so it is driven the way valkey-py's
  own connection drives it (``on_connect`` with a connection whose ``_sock``
  is a fake socket serving the chunks from ``recv``); end of data surfaces
  as its "connection closed" error. Push frames are read with
  ``push_request=True`` and an identity invalidation handler, so they come
  back as replies instead of being swallowed.
- ``hiredis`` and ``libvalkey``: the C readers of the PyPI packages of the
  same names (``Reader.feed`` / ``Reader.gets``).

Two corpora, generated from a seeded RNG so every run parses the same bytes:
``mixed`` (~6 MB: bulk strings of 10 B-10 KB, integers, arrays of 10, maps,
``invalidate`` push frames, doubles, nulls, booleans) and ``small``
(~0.8 MB of short replies: ``+OK``, small integers, short bulk strings,
small arrays). Before timing, each parser's values are checked against the
values the generator meant, so every parser provably did the same work.

Rounds interleave the parsers (rotating their order) and the table gives
medians. Parsing is single-threaded and CPU-bound, so runs are timed in
process CPU time by default: other processes on a shared machine then do not
count against whichever parser happened to be running (``--clock wall``
times elapsed time instead). Targets: ``small`` replies/s >= 2.5x valkey-py's parser and
``mixed`` MB/s >= 2x.

Run: ``python -m benchmarks.parser [--rounds 7] [--seed 1] [--scale 1.0] [--clock cpu]``
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple

from benchmarks._report import (
    environment,
    fmt_num,
    interleaved_rounds,
    median,
    print_table,
    ratio,
    verdict,
)

CHUNK_SIZE = 64 * 1024
OURS, VALKEY_PY, HIREDIS, LIBVALKEY = "valkeyaside", "valkey-py", "hiredis", "libvalkey"
OURS_NEXT_FRAME = "valkeyaside next_frame"
SMALL_TARGET, MIXED_TARGET = 2.5, 2.0

Frame = Tuple[bytes, Any]  # encoded bytes, the Python value a parser should return
Drain = Callable[[Sequence[bytes]], int]  # parses all chunks, returns the reply count
Collect = Callable[[Sequence[bytes]], List[Any]]  # same, returning the values


# --------------------------------------------------------------------------- corpus


def _bulk(rng: random.Random, pool: bytes, lo: int, hi: int, log: bool = False) -> Frame:
    """A bulk string of ``lo``..``hi`` bytes (log-uniform length when ``log``)."""
    if log:
        n = int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))
        n = min(max(n, lo), hi)
    else:
        n = rng.randint(lo, hi)
    start = rng.randrange(len(pool) - n)
    payload = pool[start : start + n]
    return b"$%d\r\n%s\r\n" % (n, payload), payload


def _integer(rng: random.Random, lo: int, hi: int) -> Frame:
    n = rng.randint(lo, hi)
    return b":%d\r\n" % n, n


def _double(rng: random.Random) -> Frame:
    x = round(rng.uniform(-1e6, 1e6), rng.randint(0, 6))
    return b",%s\r\n" % repr(x).encode(), x


def _null(rng: random.Random) -> Frame:
    return b"_\r\n", None


def _boolean(rng: random.Random) -> Frame:
    flag = rng.random() < 0.5
    return (b"#t\r\n" if flag else b"#f\r\n"), flag


def _ok(rng: random.Random) -> Frame:
    return b"+OK\r\n", "OK"


def _aggregate(marker: bytes, items: Sequence[Frame]) -> Tuple[bytes, List[Any]]:
    head = b"%s%d\r\n" % (marker, len(items))
    return head + b"".join(f[0] for f in items), [f[1] for f in items]


def _short_scalar(rng: random.Random, pool: bytes) -> Frame:
    """A short bulk string or an integer: the typical element of a small aggregate."""
    if rng.random() < 0.6:
        return _bulk(rng, pool, 1, 40)
    return _integer(rng, 0, 100_000)


def _array(rng: random.Random, pool: bytes, n: int) -> Frame:
    return _aggregate(b"*", [_short_scalar(rng, pool) for _ in range(n)])


def _map(rng: random.Random, pool: bytes) -> Frame:
    """A map of 2-8 distinct field names to short values (like HGETALL)."""
    n = rng.randint(2, 8)
    parts = [b"%%%d\r\n" % n]
    value: Dict[bytes, Any] = {}
    for i in range(n):
        name = b"field:%d" % i
        enc, val = _short_scalar(rng, pool)
        parts += [b"$%d\r\n%s\r\n" % (len(name), name), enc]
        value[name] = val
    return b"".join(parts), value


def _push(rng: random.Random) -> Frame:
    """An ``invalidate`` push for 1-3 keys, as client-side caching receives them."""
    keys = [b"user:%d" % rng.randint(0, 10**6) for _ in range(rng.randint(1, 3))]
    enc_keys, _ = _aggregate(b"*", [(b"$%d\r\n%s\r\n" % (len(k), k), k) for k in keys])
    return b">2\r\n$10\r\ninvalidate\r\n" + enc_keys, [b"invalidate", keys]


KindGen = Callable[[random.Random, bytes], Frame]

MIXED_KINDS: Dict[str, Tuple[float, KindGen]] = {
    "bulk": (30, lambda r, p: _bulk(r, p, 10, 10_240, log=True)),
    "integer": (15, lambda r, p: _integer(r, -(10**12), 10**12)),
    "array": (15, lambda r, p: _array(r, p, 10)),
    "map": (10, lambda r, p: _map(r, p)),
    "push": (10, lambda r, p: _push(r)),
    "double": (10, lambda r, p: _double(r)),
    "null": (5, lambda r, p: _null(r)),
    "boolean": (5, lambda r, p: _boolean(r)),
}
SMALL_KINDS: Dict[str, Tuple[float, KindGen]] = {
    "simple-string": (25, lambda r, p: _ok(r)),
    "integer": (25, lambda r, p: _integer(r, 0, 1000)),
    "short-bulk": (35, lambda r, p: _bulk(r, p, 1, 16)),
    "small-array": (15, lambda r, p: _array(r, p, r.randint(2, 4))),
}


@dataclass
class Corpus:
    """A RESP3 byte stream, the values it encodes, and its 64 KiB chunks."""

    name: str
    data: bytes
    expected: List[Any]
    kinds: Tuple[str, ...]
    chunks: List[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chunks = [self.data[i : i + CHUNK_SIZE] for i in range(0, len(self.data), CHUNK_SIZE)]


def make_corpus(
    name: str, kinds: Dict[str, Tuple[float, KindGen]], target_bytes: int, seed: int
) -> Corpus:
    """Draw frames of the given kinds (by weight) until ``target_bytes`` is reached."""
    rng = random.Random(f"{name}:{seed}")
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_"
    pool = bytes(rng.choice(alphabet) for _ in range(32 * 1024))
    names = list(kinds)
    weights = [kinds[k][0] for k in names]
    parts: List[bytes] = []
    expected: List[Any] = []
    size = 0
    while size < target_bytes:
        kind = rng.choices(names, weights)[0]
        enc, value = kinds[kind][1](rng, pool)
        parts.append(enc)
        expected.append(value)
        size += len(enc)
    return Corpus(name, b"".join(parts), expected, tuple(names))


# --------------------------------------------------------------------------- parsers


def _ours(bulk: bool = True) -> Tuple[Drain, Collect]:
    """valkeyaside.resp3.Parser: feed each chunk, then take its frames, in one
    ``frames()`` call (``bulk``) or one ``next_frame()`` call per value."""
    from valkeyaside.resp3 import NEED_DATA, Parser

    def frames_of(p: Parser) -> List[Any]:
        if bulk:
            return p.frames()
        out = []
        v = p.next_frame()
        while v is not NEED_DATA:
            out.append(v)
            v = p.next_frame()
        return out

    def collect(chunks: Sequence[bytes]) -> List[Any]:
        p = Parser()
        out: List[Any] = []
        for chunk in chunks:
            p.feed(chunk)
            out.extend(frames_of(p))
        return out

    def drain(chunks: Sequence[bytes]) -> int:
        return len(collect(chunks))

    return drain, collect


def _c_reader(module_name: str) -> Tuple[Drain, Collect]:
    """A hiredis-style C ``Reader``: feed each chunk, then ``gets()`` until no data."""
    module = __import__(module_name)
    no_data = object()  # ``gets()`` returns False by default, which is also a RESP3 value

    def drain(chunks: Sequence[bytes]) -> int:
        reader = module.Reader(notEnoughData=no_data)
        n = 0
        for chunk in chunks:
            reader.feed(chunk)
            v = reader.gets()
            while v is not no_data:
                n += 1
                v = reader.gets()
        return n

    def collect(chunks: Sequence[bytes]) -> List[Any]:
        reader = module.Reader(notEnoughData=no_data)
        out = []
        for chunk in chunks:
            reader.feed(chunk)
            v = reader.gets()
            while v is not no_data:
                out.append(v)
                v = reader.gets()
        return out

    return drain, collect


class _ChunkSocket:
    """Stands in for a connected socket: ``recv`` serves the chunks, then ``b""``."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = iter(chunks)

    def recv(self, bufsize: int) -> bytes:
        return next(self._chunks, b"")

    def settimeout(self, timeout: float | None) -> None:
        pass


class _FakeConnection:
    """The three attributes ``_RESPBase.on_connect`` reads from a valkey-py Connection."""

    def __init__(self, sock: _ChunkSocket) -> None:
        from valkey._parsers import Encoder

        self._sock = sock
        self.socket_timeout = None
        self.encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]


def _valkey_py_parser(chunks: Sequence[bytes]) -> Any:
    """A valkey-py ``_RESP3Parser`` connected, as valkey-py connects it, to the chunks."""
    from valkey._parsers import _RESP3Parser

    parser: Any = _RESP3Parser(socket_read_size=CHUNK_SIZE)  # type: ignore[no-untyped-call]
    parser.on_connect(_FakeConnection(_ChunkSocket(chunks)))
    parser.set_invalidation_push_handler(lambda push: push)
    return parser


def _valkey_py() -> Tuple[Drain, Collect]:
    """valkey-py's ``_RESP3Parser`` over a fake socket (see the module docstring).

    ``read_response(push_request=True)`` returns a push frame as a reply
    (through the identity handler) instead of handling it and reading on.
    The stream ends with valkey-py's "connection closed" error.
    """
    from valkey.exceptions import ConnectionError as ValkeyConnectionError

    def drain(chunks: Sequence[bytes]) -> int:
        parser = _valkey_py_parser(chunks)
        n = 0
        try:
            while True:
                parser.read_response(push_request=True)
                n += 1
        except ValkeyConnectionError:  # recv gave b"": the stream is drained
            pass
        parser.on_disconnect()
        return n

    def collect(chunks: Sequence[bytes]) -> List[Any]:
        parser = _valkey_py_parser(chunks)
        out = []
        try:
            while True:
                out.append(parser.read_response(push_request=True))
        except ValkeyConnectionError:
            pass
        leftover = parser._buffer.unread_bytes()
        parser.on_disconnect()
        if leftover:
            raise AssertionError(f"valkey-py left {leftover} bytes unparsed")
        return out

    return drain, collect


PARSER_FACTORIES: Dict[str, Callable[[], Tuple[Drain, Collect]]] = {
    OURS: _ours,
    OURS_NEXT_FRAME: lambda: _ours(bulk=False),
    VALKEY_PY: _valkey_py,
    HIREDIS: lambda: _c_reader("hiredis"),
    LIBVALKEY: lambda: _c_reader("libvalkey"),
}


def load_parsers() -> Tuple[Dict[str, Tuple[Drain, Collect]], Dict[str, str]]:
    """The parsers that import, and why the others were skipped."""
    found: Dict[str, Tuple[Drain, Collect]] = {}
    missing: Dict[str, str] = {}
    for name, factory in PARSER_FACTORIES.items():
        try:
            found[name] = factory()
        except ImportError as exc:
            missing[name] = f"not importable ({exc})"
    return found, missing


# --------------------------------------------------------------------------- checks


def normalize(value: Any) -> Any:
    """Map parser-specific shapes onto one: str -> bytes, list subclasses -> list.

    Simple strings are ``str`` for valkeyaside and ``bytes`` for the others;
    push frames are a ``list`` subclass in some parsers. Booleans are tagged
    so that ``True`` never passes for ``1``.
    """
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {normalize(k): normalize(v) for k, v in value.items()}
    return value


def first_mismatch(got: Sequence[Any], expected: Sequence[Any]) -> str | None:
    """A description of the first difference between two reply lists, or None."""
    if len(got) != len(expected):
        return f"{len(got)} replies, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        if normalize(g) != normalize(e):
            return f"reply {i}: got {g!r:.80}, expected {e!r:.80}"
    return None


def unsupported_kinds(collect: Collect, kinds: Dict[str, Tuple[float, KindGen]]) -> List[str]:
    """The corpus kinds this parser mis-parses, probed one sample frame per kind."""
    rng = random.Random(0)
    pool = b"probe-payload-" * 1024
    bad = []
    for kind, (_, gen) in kinds.items():
        enc, value = gen(rng, pool)
        try:
            ok = first_mismatch(collect([enc]), [value]) is None
        except Exception:
            ok = False
        if not ok:
            bad.append(kind)
    return bad


EXTRA_RESP3 = {  # other RESP3 types, probed only to report what each parser supports
    "blob-error(!)": b"!9\r\nERR oops!\r\n",
    "verbatim(=)": b"=7\r\ntxt:abc\r\n",
    "big-number(()": b"(123456789012345678901234567890\r\n",
    "set(~)": b"~2\r\n:1\r\n:2\r\n",
    "attribute(|)": b"|1\r\n+ttl\r\n:3\r\n:5\r\n",
    "streamed($?)": b"$?\r\n;3\r\nabc\r\n;0\r\n",
}


def probe_extra(collect: Collect) -> List[str]:
    """Other RESP3 types this parser rejects (error) or returns oddly (a count of values)."""
    notes = []
    for label, enc in EXTRA_RESP3.items():
        try:
            got = collect([enc])
        except Exception as exc:
            notes.append(f"{label} raises {type(exc).__name__}")
            continue
        if len(got) != 1:
            notes.append(f"{label} gives {len(got)} replies")
        elif label == "big-number(()" and not isinstance(got[0], int):
            notes.append(f"{label} as {type(got[0]).__name__}")
    return notes


# --------------------------------------------------------------------------- run


@dataclass
class Plan:
    """What one parser runs on a corpus: the corpus itself, or a subset it can parse."""

    corpus: Corpus
    note: str = ""


def plan_runs(
    parsers: Dict[str, Tuple[Drain, Collect]],
    specs: Dict[str, Dict[str, Tuple[float, KindGen]]],
    sizes: Dict[str, int],
    seed: int,
) -> Dict[str, Dict[str, Plan]]:
    """Per corpus and parser, the verified corpus to time (full, or a subset)."""
    plans: Dict[str, Dict[str, Plan]] = {}
    for cname, kinds in specs.items():
        full = make_corpus(cname, kinds, sizes[cname], seed)
        plans[cname] = {}
        for pname, (_, collect) in parsers.items():
            bad = unsupported_kinds(collect, kinds)
            corpus, note = full, ""
            if bad:
                subset = {k: v for k, v in kinds.items() if k not in bad}
                corpus = make_corpus(cname, subset, sizes[cname], seed)
                note = f"subset: no {', '.join(bad)}"
            problem = first_mismatch(collect(corpus.chunks), corpus.expected)
            if problem:
                raise AssertionError(f"{pname} on {cname}: {problem}")
            plans[cname][pname] = Plan(corpus, note)
    return plans


CLOCKS: Dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def timed(drain: Drain, corpus: Corpus, clock: Callable[[], float]) -> Callable[[], float]:
    """A run: parse the whole corpus once, check the reply count, return seconds."""

    def run() -> float:
        start = clock()
        n = drain(corpus.chunks)
        elapsed = clock() - start
        if n != len(corpus.expected):
            raise AssertionError(f"{n} replies, expected {len(corpus.expected)}")
        return elapsed

    return run


def measure(
    parsers: Dict[str, Tuple[Drain, Collect]],
    plans: Dict[str, Dict[str, Plan]],
    rounds: int,
    clock: Callable[[], float],
) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Median (MB/s, replies/s) per corpus and parser, parsers interleaved per round."""
    out: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for cname, by_parser in plans.items():
        variants = {p: timed(parsers[p][0], pl.corpus, clock) for p, pl in by_parser.items()}
        for run in variants.values():
            run()  # warm-up, untimed
        times = interleaved_rounds(variants, rounds, before_each=gc.collect)
        out[cname] = {}
        for pname, secs in times.items():
            corpus = by_parser[pname].corpus
            mbs = median([len(corpus.data) / 1e6 / s for s in secs])
            rps = median([len(corpus.expected) / s for s in secs])
            out[cname][pname] = (mbs, rps)
    return out


def report(
    results: Dict[str, Dict[str, Tuple[float, float]]],
    plans: Dict[str, Dict[str, Plan]],
    rounds: int,
    clock: str,
) -> None:
    """Print the throughput table, the ratios and the targets."""
    cnames = list(results)
    pnames = list(next(iter(results.values())))
    headers = ["parser"]
    for c in cnames:
        headers += [f"{c} MB/s", f"{c} replies/s"]
    rows = []
    for p in pnames:
        row = [p]
        for c in cnames:
            mbs, rps = results[c][p]
            row += [fmt_num(mbs), fmt_num(rps, 0)]
        rows.append(row)
    for other in (VALKEY_PY, HIREDIS):
        if OURS in pnames and other in pnames:
            row = [f"{OURS}/{other}"]
            for c in cnames:
                row += [ratio(results[c][OURS][0], results[c][other][0])]
                row += [ratio(results[c][OURS][1], results[c][other][1])]
            rows.append(row)
    title = f"RESP3 parse throughput ({clock} time), median of {rounds} rounds"
    print_table(title, headers, rows)
    notes = [f"{p} on {c}: {pl.note}" for c in plans for p, pl in plans[c].items() if pl.note]
    for note in notes:
        print(f"  note: {note}")
    report_targets(results)


def report_targets(results: Dict[str, Dict[str, Tuple[float, float]]]) -> None:
    """Print whether the targets against valkey-py's parser are met."""
    try:
        small = results["small"][OURS][1] / results["small"][VALKEY_PY][1]
        mixed = results["mixed"][OURS][0] / results["mixed"][VALKEY_PY][0]
    except KeyError:
        print("\ntargets: not evaluated (valkeyaside or valkey-py missing)")
        return
    print()
    print(f"target small replies/s >= {SMALL_TARGET}x valkey-py: "
          f"{small:.2f}x  {verdict(small, SMALL_TARGET)}")  # fmt: skip
    print(f"target mixed MB/s      >= {MIXED_TARGET}x valkey-py: "
          f"{mixed:.2f}x  {verdict(mixed, MIXED_TARGET)}")  # fmt: skip


def describe(
    parsers: Dict[str, Tuple[Drain, Collect]],
    missing: Dict[str, str],
    plans: Dict[str, Dict[str, Plan]],
) -> None:
    """Print the versions, the corpora and what each parser supports."""
    print(environment(["valkey", "hiredis", "libvalkey"]))
    for cname, by_parser in plans.items():
        corpus = next(iter(by_parser.values())).corpus
        print(f"corpus {cname}: {len(corpus.data) / 1e6:.2f} MB, "
              f"{len(corpus.expected):,} replies, {len(corpus.chunks)} chunks of "
              f"{CHUNK_SIZE // 1024} KiB; kinds: {', '.join(corpus.kinds)}")  # fmt: skip
    for pname, (_, collect) in parsers.items():
        subsets = [f"{c} {by[pname].note}" for c, by in plans.items() if by[pname].note]
        extra = probe_extra(collect)
        corpus_note = "; ".join(subsets) if subsets else "all corpus types ok"
        extra_note = f"other RESP3: {'; '.join(extra)}" if extra else "other RESP3 ok"
        print(f"{pname}: {corpus_note}; {extra_note}")
    for pname, why in missing.items():
        print(f"{pname}: skipped, {why}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--seed", type=int, default=1, help="corpus RNG seed (default 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="corpus size factor (default 1)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: process CPU time (default; immune to other processes); "
                         "wall: elapsed time")  # fmt: skip
    args = ap.parse_args(argv)

    parsers, missing = load_parsers()
    specs = {"mixed": MIXED_KINDS, "small": SMALL_KINDS}
    sizes = {"mixed": int(6_000_000 * args.scale), "small": int(800_000 * args.scale)}
    plans = plan_runs(parsers, specs, sizes, args.seed)
    describe(parsers, missing, plans)
    results = measure(parsers, plans, args.rounds, CLOCKS[args.clock])
    report(results, plans, args.rounds, args.clock)


if __name__ == "__main__":
    main()
