"""The cost of a hit: ``Client.get`` of a key held in the local cache.

What is measured, in the same process, on the same server, in the same run:

(a) one thread, nanoseconds per call (median over rounds of each round's
    median batch):
    - ``valkeyaside``: ``client.get(key, ttl)`` answered from the local cache;
    - ``floor``: a method doing what any local cache must do on a hit, a
      dict lookup and a ``time.monotonic()`` expiry check, called the same
      way (bound method, two arguments): no cache can be much cheaper;
    - ``valkey-py cache``: valkey-py's own client-side cache hit
      (``cache_enabled=True`` on a RESP3 connection; ``client.get(key)``),
      on its pure-Python parser and command packer, as valkeyaside is;
    - ``round trip``: ``client.execute("GET", key)``, uncached, for scale.
(b) 4 threads hitting one key through one shared client: the aggregate
    rate against 1 thread's. With the GIL, 4 threads cannot beat 1; the
    question is whether they lose much to contention.

Every variant is timed in batches of calls that take a few milliseconds
each; a run lasts ``--seconds`` and reports its median batch. Variants
alternate round by round (rotating order), and the tables give the median
over ``--rounds`` rounds. Each run is checked: the valkeyaside and valkey-py
hit runs must send no GET to the server (``INFO commandstats``).

Targets: hit <= 5x the floor and <= 1 us; >= 15x faster than valkey-py's
cache hit; 4 threads >= 0.7x the rate of 1 thread.

Run: ``python -m benchmarks.hit [--rounds 7] [--seconds 0.5] [--threads 4]
[--url valkey://host:port/db]``
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks._commandstats import commandstats, delta
from benchmarks._peers import pure_python_valkey
from benchmarks._report import (
    environment,
    fmt_num,
    interleaved_rounds,
    median,
    print_table,
    ratio,
    threaded_rate,
)
from benchmarks._server import Server, running_server, server_version, simple_command

KEY = "bench:hit:key"
VALUE = "v" * 100
TTL = 3600
BATCH_SECONDS = 0.002  # a batch of calls lasts about this long
OURS, FLOOR, VALKEY_PY, ROUND_TRIP = "valkeyaside", "floor", "valkey-py cache", "round trip"

_monotonic = time.monotonic


class FloorCache:
    """The least a local cache can do on a hit: find the entry, check its expiry."""

    def __init__(self) -> None:
        self._entries: Dict[str, Tuple[str, float]] = {}

    def put(self, key: str, value: str, ttl: float) -> None:
        self._entries[key] = (value, _monotonic() + ttl)

    def get(self, key: str, ttl: float) -> Optional[str]:
        entry = self._entries.get(key)
        if entry is not None and entry[1] > _monotonic():
            return entry[0]
        return None


# -- timing ------------------------------------------------------------------------------


def _loop1(fn: Callable[[Any], Any], a: Any, n: int) -> int:
    """ns for ``n`` calls of ``fn(a)``."""
    clock = time.perf_counter_ns
    rng = range(n)
    t0 = clock()
    for _ in rng:
        fn(a)
    return clock() - t0


def _loop2(fn: Callable[[Any, Any], Any], a: Any, b: Any, n: int) -> int:
    """ns for ``n`` calls of ``fn(a, b)``."""
    clock = time.perf_counter_ns
    rng = range(n)
    t0 = clock()
    for _ in rng:
        fn(a, b)
    return clock() - t0


Batch = Callable[[int], int]  # n -> ns for n calls


def batch_of(fn: Callable[..., Any], *args: Any) -> Batch:
    """A batch runner calling ``fn(*args)`` directly (no ``*args`` in the timed loop)."""
    if len(args) == 1:
        return lambda n: _loop1(fn, args[0], n)
    if len(args) == 2:
        return lambda n: _loop2(fn, args[0], args[1], n)
    raise ValueError("one or two arguments")


def calibrate(batch: Batch) -> int:
    """How many calls make a batch of about ``BATCH_SECONDS``."""
    n = 1
    while True:
        ns = batch(n)
        if ns >= BATCH_SECONDS * 1e9 / 4 or n >= 1 << 22:
            return max(1, int(n * BATCH_SECONDS * 1e9 / max(ns, 1)))
        n *= 4


def latency_run(batch: Batch, n: int, seconds: float) -> float:
    """Batches of ``n`` calls for ``seconds``; the median ns per call."""
    samples: List[float] = []
    deadline = time.perf_counter() + seconds
    while True:
        samples.append(batch(n) / n)
        if time.perf_counter() >= deadline and len(samples) >= 5:
            break
    return median(samples)


def paired_batches(first: Batch, second: Batch,
                   sizes: Tuple[int, int], seconds: float, flip: bool) -> List[float]:
    """Batches of ``first`` and of ``second``, one of each in turn (the order
    alternating, ``second`` first when ``flip``), for ``seconds``: the ratio
    first/second of each pair, per call.

    Pairs a few milliseconds long share the machine's state (frequency, a
    neighbour's load) far better than runs half a second apart, so on a
    shared machine their ratios scatter much less than the runs' figures do.
    """
    ratios: List[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(ratios) < 5:
        if flip:
            b = second(sizes[1]) / sizes[1]
            a = first(sizes[0]) / sizes[0]
        else:
            a = first(sizes[0]) / sizes[0]
            b = second(sizes[1]) / sizes[1]
        ratios.append(a / b)
        flip = not flip
    return ratios


def rate_run(batch: Batch, n: int, threads: int, seconds: float) -> float:
    """``threads`` threads run batches of ``n`` calls for ``seconds``; total calls/s."""

    def step() -> int:
        batch(n)
        return n

    return threaded_rate(step, threads, seconds)


def open_ours(server: Server) -> Any:
    """A valkeyaside client holding ``KEY`` in its local cache."""
    import valkeyaside

    client = valkeyaside.Client(server.url)
    client.get(KEY, TTL)  # a tracked read: stored locally
    client.get(KEY, TTL)
    if client.stats()["hits"] < 1:
        raise AssertionError("valkeyaside did not keep the key locally")
    return client


def open_valkey_py(server: Server) -> Any:
    """valkey-py with its client-side cache, on the pure-Python parser and packer."""
    client = pure_python_valkey(server, cache_enabled=True)
    client.get(KEY)  # fill its cache
    return client


def check_no_gets(server: Server, name: str, run: Callable[[], float]) -> Callable[[], float]:
    """Wrap a hit run: fail if it sent any GET to the server (it was not a hit)."""

    def checked() -> float:
        before = commandstats(server)
        result = run()
        sent = delta(before, commandstats(server))
        if sent.get("get", 0):
            raise AssertionError(f"{name}: {sent['get']} GETs reached the server during hits")
        return result

    return checked


# -- reports ------------------------------------------------------------------------------


def medians(results: Dict[str, List[float]]) -> Dict[str, float]:
    """The median over rounds of every variant."""
    return {name: median(values) for name, values in results.items()}


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report_latency(ns: Dict[str, float], rounds: int, seconds: float) -> None:
    """Table (a) and its targets."""
    rows = [[name, fmt_num(value, 1), ratio(value, ns[FLOOR])] for name, value in ns.items()]
    print_table(
        f"(a) one call, 1 thread: ns per call, median of {rounds} rounds of {seconds:g} s "
        "(lower is better)",
        ["variant", "ns/call", "vs floor"],
        rows,
    )
    ours = ns[OURS]
    targets = [
        ["hit <= 5x floor", ratio(ours, ns[FLOOR]), met(ours <= 5 * ns[FLOOR])],
        ["hit <= 1 us", f"{ours:,.0f} ns", met(ours <= 1000)],
    ]
    if VALKEY_PY in ns:
        speedup = ns[VALKEY_PY] / ours
        targets.append(["hit >= 15x faster than valkey-py cache", f"{speedup:.1f}x",
                        met(speedup >= 15)])  # fmt: skip
    targets.append(["round trip / hit", f"{ns[ROUND_TRIP] / ours:,.0f}x", ""])
    print_table("targets (a)", ["target", "measured", "verdict"], targets)


def report_threads(rates: Dict[str, float], threads: int, rounds: int, seconds: float) -> None:
    """Table (b) and its target."""
    one, many = rates["1 thread"], rates[f"{threads} threads"]
    rows = [[name, fmt_num(rate, 0), ratio(rate, one)] for name, rate in rates.items()]
    print_table(
        f"(b) hits of one key through one client: calls/s, median of {rounds} rounds of "
        f"{seconds:g} s (higher is better)",
        ["threads", "hits/s", "vs 1 thread"],
        rows,
    )
    ok = math.isfinite(many / one) and many / one >= 0.7
    print_table("target (b)", ["target", "measured", "verdict"],
                [[f"{threads} threads >= 0.7x 1 thread", ratio(many, one), met(ok)]])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="seconds per variant per round (default 0.5)")
    ap.add_argument("--threads", type=int, default=4, help="threads for (b) (default 4)")
    ap.add_argument("--url", help="use this server instead of starting one")
    args = ap.parse_args(argv)

    with running_server(args.url) as server:
        print(environment(["valkey"]))
        pid = f", pid {server.pid}" if server.pid else ""
        print(f"server: {server.url} (valkey {server_version(server)}{pid})")
        if simple_command(server, "SET", KEY, VALUE) != b"+OK":
            raise RuntimeError("cannot store the benchmark key")
        ours = open_ours(server)
        floor = FloorCache()
        floor.put(KEY, VALUE, TTL)
        batches: Dict[str, Batch] = {
            OURS: batch_of(ours.get, KEY, TTL),
            FLOOR: batch_of(floor.get, KEY, TTL),
        }
        other: Any = None
        try:
            other = open_valkey_py(server)
            batches[VALKEY_PY] = batch_of(other.get, KEY)
        except ImportError as exc:
            print(f"{VALKEY_PY}: skipped, {type(exc).__name__}: {exc}")
        batches[ROUND_TRIP] = batch_of(ours.execute, "GET", KEY)
        try:
            for name, batch in batches.items():  # warm up, and check the values
                batch(1000 if name != ROUND_TRIP else 100)
            got = {OURS: ours.get(KEY, TTL), FLOOR: floor.get(KEY, TTL)}
            if other is not None:
                got[VALKEY_PY] = other.get(KEY).decode()
            if any(value != VALUE for value in got.values()):
                raise AssertionError(f"wrong values: {got!r:.200}")
            sizes = {name: calibrate(batch) for name, batch in batches.items()}
            variants: Dict[str, Callable[[], float]] = {}
            for name, batch in batches.items():
                run = functools.partial(latency_run, batch, sizes[name], args.seconds)
                checked = name in (OURS, VALKEY_PY)
                variants[name] = check_no_gets(server, name, run) if checked else run
            ns = medians(interleaved_rounds(variants, args.rounds, before_each=gc.collect))
            n = sizes[OURS]
            thread_variants = {
                "1 thread": check_no_gets(
                    server, OURS, lambda: rate_run(batches[OURS], n, 1, args.seconds)),
                f"{args.threads} threads": check_no_gets(
                    server, OURS, lambda: rate_run(batches[OURS], n, args.threads, args.seconds)),
            }  # fmt: skip
            rates = medians(interleaved_rounds(thread_variants, args.rounds,
                                               before_each=gc.collect))
            stats = ours.stats()
        finally:
            ours.close()
            if other is not None:
                other.close()
            simple_command(server, "DEL", KEY)
    print(f"valkeyaside counters: hits={stats['hits']:,} misses={stats['misses']} "
          f"invalidations={stats['invalidations']}")
    report_latency(ns, args.rounds, args.seconds)
    report_threads(rates, args.threads, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
