"""The asyncio front end against its floor and valkey-py's asyncio client.

What is measured, on one server in one run, variants interleaved round by round:

(a) hit: ``await client.get(key, ttl)`` on a local entry, against the floor
    of awaiting an ``async def`` that returns ``dict.get`` (ns per call).
(b) 100 tasks doing uncached ``GET`` through one ``AsyncClient.execute``
    against 100 tasks on one ``valkey.asyncio.Valkey`` (its pool, pure-Python
    RESP3 parser, as in ``benchmarks._peers``): GETs per second.
(c) 1 task, ``GET`` latency, the same two clients (median microseconds).
(d) stampede: 1,000 tasks on one cold key, the loader sleeping 200 ms: how
    many loads, and how long after the load ended the last task got its value.

Run: ``python -m benchmarks.asyncio_bench [--rounds 5] [--seconds 1] [--pin [CPU]]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any, Awaitable, Callable, Dict, List

import valkeyaside
from benchmarks._report import interleaved_rounds, median, print_table, ratio
from benchmarks._server import Server, running_server

TASKS = 100
STAMPEDE_TASKS = 1000


def _valkey_py_asyncio(server: Server) -> Any:
    import valkey.asyncio as avalkey
    from valkey._parsers import _AsyncRESP3Parser

    pool = avalkey.ConnectionPool(host=server.host, port=server.port, protocol=3,
                                  parser_class=_AsyncRESP3Parser, max_connections=TASKS)
    return avalkey.Valkey(connection_pool=pool)


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


async def _latency_us(call: Callable[[], Awaitable[Any]], count: int = 2000) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return median(samples) * 1e6


async def _hit_ns(client: valkeyaside.AsyncClient, count: int = 200_000) -> float:
    get = client.get
    started = time.perf_counter()
    for _ in range(count):
        await get("hot", 60)
    return (time.perf_counter() - started) / count * 1e9


async def _floor_ns(count: int = 200_000) -> float:
    table = {"hot": "value"}

    async def lookup(key: str, ttl: float) -> Any:
        return table.get(key)

    started = time.perf_counter()
    for _ in range(count):
        await lookup("hot", 60)
    return (time.perf_counter() - started) / count * 1e9


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
        loop.run_until_complete(ours.get("hot", 60, lambda key: "value"))
        loop.run_until_complete(ours.execute("SET", "plain", "v"))
        loop.run_until_complete(theirs.get("plain"))

        hits = interleaved_rounds({
            "floor": lambda: loop.run_until_complete(_floor_ns()),
            "valkeyaside": lambda: loop.run_until_complete(_hit_ns(ours)),
        }, args.rounds)
        rates = interleaved_rounds({
            "valkeyaside": lambda: loop.run_until_complete(
                _rate(lambda: ours.execute("GET", "plain"), TASKS, args.seconds)),
            "valkey-py": lambda: loop.run_until_complete(
                _rate(lambda: theirs.get("plain"), TASKS, args.seconds)),
        }, args.rounds)
        latency = interleaved_rounds({
            "valkeyaside": lambda: loop.run_until_complete(
                _latency_us(lambda: ours.execute("GET", "plain"))),
            "valkey-py": lambda: loop.run_until_complete(
                _latency_us(lambda: theirs.get("plain"))),
        }, args.rounds)
        stampedes = [loop.run_until_complete(_stampede(ours, f"cold:{r}"))
                     for r in range(args.rounds)]
        loop.run_until_complete(ours.aclose())
        loop.run_until_complete(theirs.aclose())
    loop.close()

    m: Dict[str, float] = {}
    m["hit"], m["floor"] = median(hits["valkeyaside"]), median(hits["floor"])
    m["rate"], m["rate_py"] = median(rates["valkeyaside"]), median(rates["valkey-py"])
    m["lat"], m["lat_py"] = median(latency["valkeyaside"]), median(latency["valkey-py"])
    tails = [tail for _, tail in stampedes]
    print_table(f"asyncio (medians of {args.rounds} interleaved rounds)",
                ["what", "valkeyaside", "baseline", "ratio"], [
                    ["hit, ns", f"{m['hit']:.0f}", f"floor {m['floor']:.0f}",
                     ratio(m["hit"], m["floor"])],
                    [f"{TASKS} tasks execute GET, GET/s", f"{m['rate']:.0f}",
                     f"valkey-py {m['rate_py']:.0f}", ratio(m["rate"], m["rate_py"])],
                    ["1 task GET, us", f"{m['lat']:.1f}", f"valkey-py {m['lat_py']:.1f}",
                     ratio(m["lat"], m["lat_py"])],
                    [f"stampede {STAMPEDE_TASKS} tasks: loads, last waiter ms after load",
                     f"{max(n for n, _ in stampedes)} load(s), {median(tails):.1f} ms",
                     f"rounds {', '.join(f'{t:.1f}' for t in tails)}", ""],
                ])


if __name__ == "__main__":
    main()
