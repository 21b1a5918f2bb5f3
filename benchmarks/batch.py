"""Batches and the decorator: ``get_many`` and ``@client.cached`` against single gets.

What is measured, on one server in one run, variants interleaved round by round:

(a) ``get_many`` of 100 hot keys against 100 single ``get`` hits (µs per 100).
(b) ``get_many`` of 100 cold keys (``fn`` answers at once): its round trips
    (requests written: each is one write and one wait) and the server's
    commands, and its time against 100 sequential ``get`` misses. Judged by
    the median ratio of pairs (one call of each, back to back, the order
    alternating), as ``benchmarks.hit`` judges a hit: a single call of 3-5 ms
    is at the mercy of the machine's swings, which a pair shares.
(c) a ``@client.cached`` hit against a direct ``client.get`` hit (ns), and the
    same for an ``AsyncClient``: an awaited decorated ``async def`` against
    an awaited ``client.get`` (each baseline called the way the decorated
    function is: through a function taking the id).
(d) a ``@client.cached_many`` call of 100 hot ids against what it saves
    writing: a ``get_many`` whose caller builds the keys from the ids with an
    f-string and maps the values back to the ids (µs per 100).

Targets (issue 11): (a) <= 1.5x; (b) <= 4 round trips + one ``fn`` call, and
>= 20x faster than 100 sequential misses; (c) <= 1.3x (both front ends).
(d) has none: it shows what the decorator's keys and checks cost.

Run: ``python -m benchmarks.batch [--rounds 5] [--cold-seconds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any, Callable, Dict, List

import valkeyaside
from benchmarks._commandstats import commandstats, delta
from benchmarks._report import interleaved_rounds, median, print_table, ratio
from benchmarks.hit import paired_batches
from benchmarks.miss import RequestCounter

TTL = 60
KEYS = 100
_fresh = itertools.count()


def _many_loader(keys: List[str]) -> Dict[str, str]:
    return {key: "v" for key in keys}


def _hot_many(client: valkeyaside.Client, keys: List[str], loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        client.get_many(keys, TTL)
    return (time.perf_counter() - started) / loops * 1e6


def _per_call_us(call: Callable[[], Any], loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        call()
    return (time.perf_counter() - started) / loops * 1e6


def _hot_single(client: valkeyaside.Client, keys: List[str], loops: int) -> float:
    get = client.get
    started = time.perf_counter()
    for _ in range(loops):
        for key in keys:
            get(key, TTL)
    return (time.perf_counter() - started) / loops * 1e6


def _cold_many(client: valkeyaside.Client) -> float:
    keys = [f"cold:{next(_fresh)}" for _ in range(KEYS)]
    started = time.perf_counter()
    client.get_many(keys, TTL, _many_loader)
    return (time.perf_counter() - started) * 1e6


def _cold_single(client: valkeyaside.Client) -> float:
    keys = [f"cold:{next(_fresh)}" for _ in range(KEYS)]
    started = time.perf_counter()
    for key in keys:
        client.get(key, TTL, lambda _key: "v")
    return (time.perf_counter() - started) * 1e6


def _hit_ns(call: Any, loops: int = 200_000) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        call(42)
    return (time.perf_counter() - started) / loops * 1e9


async def _async_hit_ns(call: Any, loops: int = 200_000) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        await call(42)
    return (time.perf_counter() - started) / loops * 1e9


def _async_hits(url: str, rounds: int) -> Dict[str, List[float]]:
    """Part (c) for an ``AsyncClient``: its decorator's hit against its ``get``'s."""
    loop = asyncio.new_event_loop()
    client = valkeyaside.AsyncClient(url)

    @client.cached(TTL, key="user:{user_id}")
    async def load_user(user_id: int) -> str:
        return f"user {user_id}"

    async def direct(_id: int) -> Any:
        return await client.get("user:42", TTL)

    try:
        loop.run_until_complete(load_user(42))
        loop.run_until_complete(client.execute("PING"))  # the read behind the fill is in
        return interleaved_rounds({
            "decorator": lambda: loop.run_until_complete(_async_hit_ns(load_user)),
            "client.get": lambda: loop.run_until_complete(_async_hit_ns(direct)),
        }, rounds)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def main() -> None:
    from benchmarks._server import running_server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold-seconds", type=float, default=2.0,
                    help="how long (b) pairs a cold get_many with 100 cold gets (default 2 s)")
    args = ap.parse_args()
    with running_server() as server:
        client = valkeyaside.Client(server.url)
        hot = [f"hot:{i}" for i in range(KEYS)]
        client.get_many(hot, TTL, _many_loader)
        client.execute("PING")  # the reads behind the fills are answered
        _cold_many(client)  # the marker exists and the scripts are loaded: steady state

        counter = RequestCounter(client)
        before = commandstats(server)
        counted = _cold_many(client)
        commands = delta(before, commandstats(server))
        trips = counter.count

        @client.cached(TTL, key="user:{user_id}")
        def load_user(user_id: int) -> str:
            return f"user {user_id}"

        load_user(42)
        client.get("user:42", TTL)

        @client.cached_many(TTL, key="hot:{}")  # the keys of ``hot``
        def load_hot(ids: List[int]) -> Dict[int, str]:
            return {i: "v" for i in ids}

        def by_hand(ids: List[int]) -> Dict[int, Any]:
            keys = [f"hot:{i}" for i in ids]
            found = client.get_many(keys, TTL)
            return {i: found[key] for i, key in zip(ids, keys)}

        ids = list(range(KEYS))
        assert load_hot(ids) == by_hand(ids)
        hot_rounds = interleaved_rounds({
            "get_many": lambda: _hot_many(client, hot, 2000),
            "100 gets": lambda: _hot_single(client, hot, 2000),
            "cached_many": lambda: _per_call_us(lambda: load_hot(ids), 2000),
            "by hand": lambda: _per_call_us(lambda: by_hand(ids), 2000),
        }, args.rounds)
        cold: Dict[str, List[float]] = {"get_many": [], "100 gets": []}

        def timed(name: str, run: Callable[[valkeyaside.Client], float]) -> Any:
            def one_call(_n: int) -> float:
                cost = run(client)
                cold[name].append(cost)
                return cost
            return one_call

        cold_pairs = paired_batches(timed("get_many", _cold_many),
                                    timed("100 gets", _cold_single), (1, 1),
                                    args.cold_seconds, flip=False)
        hits = interleaved_rounds({
            "decorator": lambda: _hit_ns(load_user),
            "client.get": lambda: _hit_ns(lambda _id: client.get("user:42", TTL)),
            "client.get, key built": lambda: _hit_ns(
                lambda user_id: client.get(f"user:{user_id}", TTL)),
        }, args.rounds)
        client.close()
        async_hits = _async_hits(server.url, args.rounds)
    m = {name: median(values) for name, values in hot_rounds.items()}
    c = {name: median(values) for name, values in cold.items()}
    faster = median([1 / r for r in cold_pairs])
    h = {name: median(values) for name, values in hits.items()}
    a = {name: median(values) for name, values in async_hits.items()}
    print_table(f"batches and the decorator (medians of {args.rounds} interleaved rounds)",
                ["what", "ours", "baseline", "ratio"], [
        ["get_many of 100 hot keys, us", f"{m['get_many']:.1f}",
         f"100 gets {m['100 gets']:.1f}", ratio(m["get_many"], m["100 gets"])],
        [f"get_many of 100 cold keys, us (medians of {len(cold_pairs)} pairs)",
         f"{c['get_many']:.0f}", f"100 gets {c['100 gets']:.0f}",
         ratio(c["100 gets"], c["get_many"]) + " faster"],
        ["  the same, median ratio of the pairs (judged)", "", "",
         f"{faster:.2f}x faster"],
        ["get_many of 100 cold keys: round trips, commands", f"{trips} round trips",
         ", ".join(f"{name} {count}" for name, count in sorted(commands.items())
                   if name != "info"), f"({counted:.0f} us)"],
        ["decorator hit, ns", f"{h['decorator']:.0f}", f"client.get {h['client.get']:.0f}",
         ratio(h["decorator"], h["client.get"])],
        ["decorator hit vs a get that formats its key, ns", f"{h['decorator']:.0f}",
         f"{h['client.get, key built']:.0f}",
         ratio(h["decorator"], h["client.get, key built"])],
        ["asyncio: decorator hit, ns", f"{a['decorator']:.0f}",
         f"await client.get {a['client.get']:.0f}", ratio(a["decorator"], a["client.get"])],
        ["cached_many of 100 hot ids, us", f"{m['cached_many']:.1f}",
         f"get_many, keys by hand {m['by hand']:.1f}", ratio(m["cached_many"], m["by hand"])],
    ])


if __name__ == "__main__":
    main()
