"""The asyncio front end against its floor, valkey-py's asyncio client and valkey-glide.

What is measured, on one server in one run, variants interleaved round by round:

(a) hit: ``await client.get(key, ttl)`` on a local entry, against the floor
    of awaiting an ``async def`` that returns ``dict.get``, and against a hit
    of valkey-glide's client-side cache (``ClientSideCache`` with
    ``server_assisted=True``: tracking in broadcast mode, entries dropped by
    the server's pushes), ``await glide.get(key)`` on a cached key (ns per
    call; glide's cache metrics are read to show that its calls were hits).
    The ratio to the floor that is judged is the median ratio of paired
    batches (a batch of hits and a batch of the floor, milliseconds apart,
    as ``benchmarks.cluster`` judges its hits): runs of each a second apart
    drift with the machine by more than the two differ.
(b) 100 tasks doing uncached ``GET`` through one ``AsyncClient.execute``
    against 100 tasks on one ``valkey.asyncio.Valkey`` (its pool, pure-Python
    RESP3 parser, as in ``benchmarks._peers``) and 100 tasks on one
    valkey-glide ``GlideClient`` (its Rust core multiplexes one connection):
    GETs per second.
(c) 1 task, ``GET`` latency, the same three clients (median microseconds),
    their calls interleaved one by one (ours, valkey-py, glide, then the next
    three in a rotated order): a shared machine's state drifts between runs
    of thousands of calls by more than the clients differ, so each of a
    round's calls is timed next to the others' (per round: each client's
    median; reported: the median over rounds).
(d) stampede: 1,000 tasks on one cold key, the loader sleeping 200 ms: how
    many loads, and how long after the load ended the last task got its value;
    against its floor, measured after each round: how long asyncio takes to
    wake 1,000 tasks that each await a future (the last one's return).

valkey-glide (``pip install valkey-glide``, in the ``bench`` extra) is
optional: when it is missing, or its installed version has no
server-assisted ``ClientSideCache``, its rows are left out and the output
says why.

Run: ``python -m benchmarks.asyncio_bench [--rounds 5] [--seconds 1] [--pin [CPU]]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import time
from importlib import metadata
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

import valkeyaside
from benchmarks._report import (
    environment,
    interleaved_rounds,
    median,
    print_table,
    ratio,
    rotated,
    verdict,
)
from benchmarks._server import Server, running_server
from benchmarks.hit import calibrate, paired_batches

TASKS = 100
STAMPEDE_TASKS = 1000
GLIDE_HITS = 5000  # per round: a glide cache hit costs a round trip to its Rust core


def _valkey_py_asyncio(server: Server) -> Any:
    import valkey.asyncio as avalkey
    from valkey._parsers import _AsyncRESP3Parser

    pool = avalkey.ConnectionPool(host=server.host, port=server.port, protocol=3,
                                  parser_class=_AsyncRESP3Parser, max_connections=TASKS)
    return avalkey.Valkey(connection_pool=pool)


@dataclasses.dataclass
class _Glide:
    """Two valkey-glide async clients: one with a server-assisted cache, one without."""

    version: str
    cached: Any
    plain: Any

    def hit_rate(self) -> float:
        return float(self.cached.get_cache_hit_rate())

    async def close(self) -> None:
        await self.cached.close()
        await self.plain.close()


async def _valkey_glide(server: Server) -> Union[_Glide, str]:
    """valkey-glide's clients, or why there are none (a sentence for the output)."""
    try:
        version = metadata.version("valkey-glide")
    except metadata.PackageNotFoundError:
        return "valkey-glide is not installed (pip install valkey-glide, or '.[bench]')"
    try:
        import glide
    except ImportError as exc:
        return f"valkey-glide {version} is installed but does not import: {exc}"
    cache_type = getattr(glide, "ClientSideCache", None)
    if cache_type is None:
        return f"valkey-glide {version} has no ClientSideCache (client-side caching)"
    if "server_assisted" not in {f.name for f in dataclasses.fields(cache_type)}:
        return (f"valkey-glide {version}'s ClientSideCache has no server_assisted option "
                "(only TTL-expired entries, no invalidation by the server)")
    address = [glide.NodeAddress(server.host, server.port)]
    cache = cache_type.create(max_cache_kb=1024, entry_ttl_ms=600_000, enable_metrics=True,
                              server_assisted=True)
    cached = await glide.GlideClient.create(glide.GlideClientConfiguration(
        address, protocol=glide.ProtocolVersion.RESP3, client_side_cache=cache))
    plain = await glide.GlideClient.create(glide.GlideClientConfiguration(
        address, protocol=glide.ProtocolVersion.RESP3))
    return _Glide(version, cached, plain)


async def _rate(call: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done / (time.perf_counter() - started)


async def _latencies_us(calls: Dict[str, Callable[[], Awaitable[Any]]],
                        count: int = 2000) -> Dict[str, float]:
    """Each client's median latency over ``count`` calls, the clients' calls
    interleaved one by one, in an order rotated at each step."""
    names = list(calls)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for step in range(count):
        for name in rotated(names, step):
            started = time.perf_counter()
            await calls[name]()
            samples[name].append(time.perf_counter() - started)
    return {name: median(values) * 1e6 for name, values in samples.items()}


async def _hit_ns(client: valkeyaside.AsyncClient, count: int = 200_000) -> float:
    return await _awaited_ns(client.get, count) / count


async def _floor_lookup(key: str, ttl: float) -> Any:
    """The floor of a hit: an ``async def`` that returns ``dict.get``."""
    return _FLOOR_TABLE.get(key)


_FLOOR_TABLE = {"hot": "value"}


async def _floor_ns(count: int = 200_000) -> float:
    return await _awaited_ns(_floor_lookup, count) / count


async def _awaited_ns(get: Callable[[str, float], Awaitable[Any]], count: int) -> int:
    """ns for ``count`` calls of ``await get("hot", 60)``."""
    clock = time.perf_counter_ns
    started = clock()
    for _ in range(count):
        await get("hot", 60)
    return clock() - started


def _hit_pairs(loop: asyncio.AbstractEventLoop, client: valkeyaside.AsyncClient,
               seconds: float) -> Callable[[], float]:
    """A round's median ratio hit/floor over paired batches (``paired_batches``),
    each batch about 10 ms, so that its ``run_until_complete`` (tens of us)
    weighs on neither side."""
    def hits(n: int) -> int:
        return loop.run_until_complete(_awaited_ns(client.get, n))

    def floor(n: int) -> int:
        return loop.run_until_complete(_awaited_ns(_floor_lookup, n))

    sizes = (5 * calibrate(hits), 5 * calibrate(floor))
    flips = itertools.cycle([False, True])  # which goes first in a round's first pair
    return lambda: median(paired_batches(hits, floor, sizes, seconds, next(flips)))


async def _stampede(client: valkeyaside.AsyncClient, key: str) -> tuple[int, float]:
    ended = [0.0]
    loads = [0]

    async def load(_key: str) -> str:
        loads[0] += 1
        await asyncio.sleep(0.2)
        ended[0] = time.perf_counter()
        return "value"

    finished: List[float] = []

    async def one() -> None:
        await client.get(key, 60, load)
        finished.append(time.perf_counter())

    await asyncio.gather(*(one() for _ in range(STAMPEDE_TASKS)))
    return loads[0], (max(finished) - ended[0]) * 1e3


async def _wake_floor() -> float:
    """The floor of the stampede's tail: ms from waking 1,000 tasks that each await
    a future of their own (as ``gather`` collects them) to the last one's return."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(STAMPEDE_TASKS)]
    finished: List[float] = []

    async def one(future: asyncio.Future[None]) -> None:
        await future
        finished.append(time.perf_counter())

    waiting = asyncio.gather(*(one(future) for future in futures))
    await asyncio.sleep(0.05)  # every task is parked on its future
    woken = time.perf_counter()
    for future in futures:
        future.set_result(None)
    await waiting
    return (max(finished) - woken) * 1e3


def _run_round(loop: asyncio.AbstractEventLoop, coroutine: Awaitable[Any]) -> Any:
    return loop.run_until_complete(coroutine)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--pin", type=int, nargs="?", const=0, default=None, metavar="CPU")
    args = ap.parse_args()
    cpus = None
    if args.pin is not None:
        cpus = {args.pin}
        os.sched_setaffinity(0, cpus)
    loop = asyncio.new_event_loop()
    with running_server(cpus=cpus) as server:
        ours = valkeyaside.AsyncClient(server.url)
        theirs = _valkey_py_asyncio(server)
        found = loop.run_until_complete(_valkey_glide(server))
        glide: Optional[_Glide] = found if isinstance(found, _Glide) else None
        loop.run_until_complete(ours.get("hot", 60, lambda key: "value"))
        loop.run_until_complete(ours.execute("SET", "plain", "v"))
        loop.run_until_complete(theirs.get("plain"))
        if glide is not None:
            loop.run_until_complete(glide.plain.get("plain"))
            loop.run_until_complete(glide.cached.get("hot"))  # a miss: cached from now on

        hit_variants: Dict[str, Callable[[], float]] = {
            "floor": lambda: loop.run_until_complete(_floor_ns()),
            "valkeyaside": lambda: loop.run_until_complete(_hit_ns(ours)),
            "pairs": _hit_pairs(loop, ours, args.seconds / 2),
        }
        rate_variants: Dict[str, Callable[[], float]] = {
            "valkeyaside": lambda: loop.run_until_complete(
                _rate(lambda: ours.execute("GET", "plain"), TASKS, args.seconds)),
            "valkey-py": lambda: loop.run_until_complete(
                _rate(lambda: theirs.get("plain"), TASKS, args.seconds)),
        }
        latency_calls: Dict[str, Callable[[], Awaitable[Any]]] = {
            "valkeyaside": lambda: ours.execute("GET", "plain"),
            "valkey-py": lambda: theirs.get("plain"),
        }
        if glide is not None:
            cached, plain = glide.cached, glide.plain
            hit_variants["valkey-glide"] = lambda: loop.run_until_complete(
                _awaited_ns(lambda key, _ttl: cached.get(key), GLIDE_HITS)) / GLIDE_HITS
            rate_variants["valkey-glide"] = lambda: loop.run_until_complete(
                _rate(lambda: plain.get("plain"), TASKS, args.seconds))
            latency_calls["valkey-glide"] = lambda: plain.get("plain")
        hits = interleaved_rounds(hit_variants, args.rounds)
        glide_hit_rate = glide.hit_rate() if glide is not None else 0.0
        rates = interleaved_rounds(rate_variants, args.rounds)
        for call in latency_calls.values():  # warm: connections made, code paths run
            for _ in range(100):
                loop.run_until_complete(call())
        rounds = [loop.run_until_complete(_latencies_us(latency_calls))
                  for _ in range(args.rounds)]
        latency = {name: [found[name] for found in rounds] for name in latency_calls}
        stampedes, floors = [], []
        for r in range(args.rounds):  # interleaved: each round's floor next to it
            stampedes.append(loop.run_until_complete(_stampede(ours, f"cold:{r}")))
            floors.append(loop.run_until_complete(_wake_floor()))
        loop.run_until_complete(ours.aclose())
        loop.run_until_complete(theirs.aclose())
        if glide is not None:
            loop.run_until_complete(glide.close())
    loop.close()

    m: Dict[str, float] = {}
    m["hit"], m["floor"] = median(hits["valkeyaside"]), median(hits["floor"])
    m["hit_pairs"] = median(hits["pairs"])
    m["rate"], m["rate_py"] = median(rates["valkeyaside"]), median(rates["valkey-py"])
    m["lat"], m["lat_py"] = median(latency["valkeyaside"]), median(latency["valkey-py"])
    tails = [tail for _, tail in stampedes]
    rows = [
        ["hit, ns", f"{m['hit']:.0f}", f"floor {m['floor']:.0f}", ratio(m["hit"], m["floor"])],
        ["hit vs floor, paired batches (judged)", "", "", f"{m['hit_pairs']:.2f}x"],
        [f"{TASKS} tasks execute GET, GET/s", f"{m['rate']:.0f}",
         f"valkey-py {m['rate_py']:.0f}", ratio(m["rate"], m["rate_py"])],
        ["1 task GET, us", f"{m['lat']:.1f}", f"valkey-py {m['lat_py']:.1f}",
         ratio(m["lat"], m["lat_py"])],
        [f"stampede {STAMPEDE_TASKS} tasks: loads, last waiter ms after load",
         f"{max(n for n, _ in stampedes)} load(s), {median(tails):.1f} ms",
         f"rounds {', '.join(f'{t:.1f}' for t in tails)}", ""],
        ["stampede tail vs waking 1,000 bare futures, ms", f"{median(tails):.1f}",
         f"floor {median(floors):.1f}", ratio(median(tails), median(floors))],
    ]
    if glide is not None:
        m["hit_glide"] = median(hits["valkey-glide"])
        m["rate_glide"] = median(rates["valkey-glide"])
        m["lat_glide"] = median(latency["valkey-glide"])
        rows[2:2] = [["hit vs glide cache hit, ns", f"{m['hit']:.0f}",
                      f"valkey-glide {m['hit_glide']:.0f}",
                      f"{ratio(m['hit_glide'], m['hit'])} faster"]]
        rows[4:4] = [[f"{TASKS} tasks GET vs glide, GET/s", f"{m['rate']:.0f}",
                      f"valkey-glide {m['rate_glide']:.0f}",
                      ratio(m["rate"], m["rate_glide"])]]
        rows[6:6] = [["1 task GET vs glide, us", f"{m['lat']:.1f}",
                      f"valkey-glide {m['lat_glide']:.1f}", ratio(m["lat"], m["lat_glide"])]]
    print(environment(["valkey", "valkey-glide"]))
    print_table(f"asyncio (medians of {args.rounds} interleaved rounds)",
                ["what", "valkeyaside", "baseline", "ratio"], rows)
    if glide is None:
        print(f"valkey-glide: not measured: {found}")
        return
    print(f"valkey-glide {glide.version}: ClientSideCache(server_assisted=True) "
          f"hit rate over the hit rounds {glide_hit_rate:.4f} (its own metrics)")
    print(f"targets: hit >= 100x faster than a glide cache hit: "
          f"{verdict(m['hit_glide'] / m['hit'], 100)}; {TASKS} tasks >= 1x glide: "
          f"{verdict(m['rate'] / m['rate_glide'], 1)}")


if __name__ == "__main__":
    main()
