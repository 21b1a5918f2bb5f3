"""Valkey Cluster: the cluster client against the standalone one and valkey-py's cluster clients.

A real cluster of 3 primaries without replicas (``tests/cluster.py``'s
``ValkeyCluster``) and one standalone valkey-server (``benchmarks._server``),
on loopback, in one run; variants interleaved round by round, medians of
rounds, ratios between figures of the same run:

(1) hit: ``client.get(key, ttl)`` of a local entry, a cluster ``Client``
    against a ``Client`` of the standalone server (ns per call, median
    batch, as ``benchmarks.hit`` times it), and ``await client.get`` of
    an ``AsyncClient`` the same way. Every run is checked to be hits only
    (the client's ``misses`` do not move).
(2) 4 threads of uncached ``GET`` through one cluster ``Client``
    (``execute("GET", key)``, keys over all slots) against 4 threads sharing
    one ``valkey.cluster.ValkeyCluster`` (``get(key)``), and, for scale, 4
    threads on one standalone ``Client``: GETs per second.
(3) 100 asyncio tasks of uncached ``GET`` through one cluster ``AsyncClient``
    against 100 tasks on one ``valkey.asyncio.cluster.ValkeyCluster``, and
    the standalone ``AsyncClient`` for scale: GETs per second.
(4) tracking: ``N`` cluster ``Client``s each make a cached read of the same
    ``M`` keys (27-byte names, like ``benchmarks.tracking_cost``'s, spread
    over all slots), then each primary's ``INFO`` is read: tracked keys,
    items ((key, client) pairs), tracking clients, connections and
    ``used_memory`` growth (net of ``mem_clients_normal``), against what the
    README's model says per node: one tracking connection per client per
    primary, the node's keys, ``N`` items per key, 124 B for a key's first
    client plus 60 B for each further one. Then one ``SET`` per key on each
    owner: one push per item expected, and an empty table.

valkey-py runs on its pure-Python parser and packer with ``protocol=3``, as
valkeyaside does (checked on a live connection of every node; see
``benchmarks._peers``). When it is missing, or would run on libvalkey, its
rows are left out and the output says why.

Targets: cluster hit <= 1.1x the standalone hit (sync and async); 4 threads
>= 2x valkey-py's ValkeyCluster; 100 tasks >= 2x valkey-py's asyncio
ValkeyCluster. A missed target is reported, not an error.

Run: ``python -m benchmarks.cluster [--rounds 5] [--seconds 0.5] [--clients 10]
[--keys 3000]`` (about 2 minutes with the defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import random
import secrets
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

import valkeyaside
from benchmarks._peers import pure_python_valkey_async_cluster, pure_python_valkey_cluster
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
from benchmarks.hit import batch_of, calibrate, latency_run
from valkeyaside.cluster import key_slot

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from cluster import ClusterNode, ValkeyCluster  # tests/cluster.py

PRIMARIES = 3
HOT = "bench:cluster:hot"
VALUE = "v" * 100
TTL = 3600
GET_KEYS = 3000  # keys of the uncached GETs, over all slots
STEP = 32  # GETs per step of a thread
TRACK_VALUE = "v" * 100
#: The README's per-node constants ("At scale"): a key's first client, each further one.
MODEL_FIRST_B = 124
MODEL_FURTHER_B = 60
WAIT = 20.0  # longest wait for the invalidations to arrive

CLUSTER_PY, CLUSTER_OURS, STANDALONE_OURS = "valkey-py cluster", "cluster", "standalone"


# -- set-up ------------------------------------------------------------------------------


def owners_by_slot(cluster: ValkeyCluster) -> List[ClusterNode]:
    """The primary owning each of the 16,384 slots (one ``CLUSTER SHARDS``)."""
    owners: List[Optional[ClusterNode]] = [None] * 16384
    for shard in cluster.shards():
        if shard.primary is None:
            continue
        node = cluster.node(shard.primary)
        for first, last in shard.slots:
            owners[first:last + 1] = [node] * (last - first + 1)
    if any(owner is None for owner in owners):
        raise RuntimeError("a slot has no owner")
    return owners  # type: ignore[return-value]


def by_node(keys: Sequence[str], owners: Sequence[ClusterNode]) -> Dict[str, List[str]]:
    """``keys`` grouped by the address of their primary."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        groups.setdefault(owners[key_slot(key)].address, []).append(key)
    return groups


def set_keys(cluster: ValkeyCluster, owners: Sequence[ClusterNode], keys: Sequence[str],
             value: str) -> None:
    """SET every key on its owner, pipelined, as the harness (untracked)."""
    for address, group in by_node(keys, owners).items():
        node = next(n for n in cluster.nodes if n.address == address)
        for start in range(0, len(group), 1000):
            replies = node.server.pipeline([("SET", key, value)
                                            for key in group[start:start + 1000]])
            if any(reply not in ("OK", b"OK") for reply in replies):
                raise RuntimeError(f"SET failed on {address}: {replies[:3]!r}")


def seed_url(cluster: ValkeyCluster) -> str:
    """The cluster's primaries as seeds of one URL."""
    return "valkey://" + ",".join(node.address for node in cluster.primaries()) + "/0"


# -- (1) hits ----------------------------------------------------------------------------


def checked_hits(client: Any, run: Callable[[], float]) -> Callable[[], float]:
    """Wrap a hit run: fail if the client missed meanwhile (it was not a hit)."""

    def checked() -> float:
        before = client.stats()["misses"]
        result = run()
        if client.stats()["misses"] != before:
            raise AssertionError("a hit run missed the local cache")
        return result

    return checked


async def _async_hits(get: Callable[[str, float], Awaitable[Any]], n: int) -> int:
    """ns for ``n`` awaited hits."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        await get(HOT, TTL)
    return clock() - t0


def async_hit_batch(loop: asyncio.AbstractEventLoop, client: Any) -> Callable[[int], int]:
    """A batch runner (``n -> ns``) of awaited hits, each batch one ``run_until_complete``."""
    return lambda n: loop.run_until_complete(_async_hits(client.get, n))


# -- (2) threads -------------------------------------------------------------------------


def threaded_gets(get: Callable[[str], Any], keys: Sequence[str], threads: int,
                  seconds: float) -> float:
    """``threads`` threads each GET ``STEP`` keys from a random place, over and over;
    total GETs per second."""
    last = len(keys) - STEP

    def step() -> int:
        start = random.randrange(last)
        for key in keys[start:start + STEP]:
            get(key)
        return STEP

    return threaded_rate(step, threads, seconds)


# -- (3) tasks ---------------------------------------------------------------------------


async def task_gets(get: Callable[[str], Awaitable[Any]], keys: Sequence[str], tasks: int,
                    seconds: float) -> float:
    """``tasks`` tasks each GET keys in turn from a place of its own; GETs per second."""
    done = 0
    stop = time.perf_counter() + seconds
    count = len(keys)

    async def worker(i: int) -> None:
        nonlocal done
        at = i * count // tasks
        while time.perf_counter() < stop:
            await get(keys[at])
            at = (at + 1) % count
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return done / (time.perf_counter() - started)


# -- (4) tracking ------------------------------------------------------------------------


def node_figures(node: ClusterNode) -> Dict[str, int]:
    """One primary's tracking and memory figures from ``INFO``."""
    f = node.info("default")
    return {
        "keys": int(f["tracking_total_keys"]),
        "items": int(f["tracking_total_items"]),
        "tracking_clients": int(f.get("tracking_clients", "-1")),
        "connections": int(f["connected_clients"]),
        # client buffers (which the server's cron resizes in its own time) left out
        "memory": int(f["used_memory"]) - int(f["mem_clients_normal"]),
    }


def all_figures(nodes: Sequence[ClusterNode]) -> Dict[str, Dict[str, int]]:
    """``node_figures`` of every primary, after 1.1 s: the server's cron has visited
    every client since (it resizes their buffers and updates ``mem_clients_normal``)."""
    gc.collect()
    time.sleep(1.1)
    return {node.address: node_figures(node) for node in nodes}


def invalidations(clients: Sequence[Any]) -> int:
    return sum(int(c.stats()["invalidations"]) for c in clients)


def run_tracking(cluster: ValkeyCluster, owners: Sequence[ClusterNode], url: str,
                 n_clients: int, n_keys: int) -> Dict[str, Any]:
    """``n_clients`` cluster ``Client``s each read the same ``n_keys`` keys cached;
    every primary's figures before, after, and after one SET per key."""
    tag = secrets.token_hex(4)
    keys = [f"bench:track:{tag}:{i:06d}" for i in range(n_keys)]  # 27 bytes, as tracking_cost
    set_keys(cluster, owners, keys, TRACK_VALUE)
    groups = by_node(keys, owners)
    nodes = cluster.primaries()
    base = {node.address: node_figures(node) for node in nodes}
    clients = [valkeyaside.Client(url) for _ in range(n_clients)]
    try:
        for c in clients:  # connect to every primary before the first figures
            for group in groups.values():
                c.execute("EXISTS", group[0])
        before = all_figures(nodes)
        t0 = time.perf_counter()
        for c in clients:
            get = c.get
            for key in keys:
                if get(key, TTL) != TRACK_VALUE:
                    raise RuntimeError(f"unexpected value for {key}")
        read_s = time.perf_counter() - t0
        after = all_figures(nodes)
        got0 = invalidations(clients)
        expected = sum(after[a]["items"] - before[a]["items"] for a in after)
        set_keys(cluster, owners, keys, TRACK_VALUE + "2")  # one write per key: the pushes
        deadline = time.monotonic() + WAIT
        while invalidations(clients) < got0 + expected and time.monotonic() < deadline:
            time.sleep(0.01)
        pushes = invalidations(clients) - got0
        written = all_figures(nodes)
    finally:
        for c in clients:
            c.close()
    return {"keys": groups, "base": base, "before": before, "after": after, "written": written,
            "pushes": pushes, "expected": expected, "read_s": read_s, "reads": n_clients * n_keys}


# -- the run -----------------------------------------------------------------------------


def medians(results: Dict[str, List[float]]) -> Dict[str, float]:
    return {name: median(values) for name, values in results.items()}


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="seconds per variant per round (default 0.5)")
    ap.add_argument("--threads", type=int, default=4, help="threads of (2) (default 4)")
    ap.add_argument("--tasks", type=int, default=100, help="asyncio tasks of (3) (default 100)")
    ap.add_argument("--clients", type=int, default=10, help="clients of (4) (default 10)")
    ap.add_argument("--keys", type=int, default=3000,
                    help="keys each client of (4) caches (default 3000: ~1,000 per primary)")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    skipped: Dict[str, str] = {}
    loop = asyncio.new_event_loop()

    with ValkeyCluster(primaries=PRIMARIES, replicas=0) as cluster, running_server() as server:
        owners = owners_by_slot(cluster)
        url = seed_url(cluster)
        first = cluster.primaries()[0]
        keys = [f"bench:cluster:{i}" for i in range(GET_KEYS)]
        set_keys(cluster, owners, [*keys, HOT], VALUE)
        spread = {a: len(g) for a, g in by_node(keys, owners).items()}
        if simple_command(server, "SET", HOT, VALUE) != b"+OK":
            raise RuntimeError("cannot store the hot key")
        _fill_standalone(server, keys)

        print(environment(["valkey"]))
        print(f"cluster: {PRIMARIES} primaries, no replicas, {url} "
              f"(valkey {server_version(Server(first.host, first.port))}); "
              f"standalone: {server.url} (pid {server.pid})")
        print(f"GET keys per primary: {', '.join(f'{a} {n}' for a, n in spread.items())}")

        ours = valkeyaside.Client(url)
        alone = valkeyaside.Client(server.url)
        aours = valkeyaside.AsyncClient(url)
        aalone = valkeyaside.AsyncClient(server.url)
        peer: Any = None
        apeer: Any = None
        try:
            peer = pure_python_valkey_cluster(first.host, first.port)
        except (ImportError, RuntimeError) as exc:
            skipped[CLUSTER_PY] = f"{type(exc).__name__}: {exc}"
        if peer is not None:
            apeer = loop.run_until_complete(pure_python_valkey_async_cluster(first.host,
                                                                             first.port))
        try:
            # Warm up and check every client's values.
            for client in (ours, alone):
                for _ in range(2):
                    if client.get(HOT, TTL) != VALUE:
                        raise AssertionError("wrong hot value")
                if client.execute("GET", keys[-1]) != VALUE.encode():
                    raise AssertionError("wrong GET value")
            for aclient in (aours, aalone):
                for _ in range(2):
                    if loop.run_until_complete(aclient.get(HOT, TTL)) != VALUE:
                        raise AssertionError("wrong async hot value")
                if loop.run_until_complete(aclient.execute("GET", keys[-1])) != VALUE.encode():
                    raise AssertionError("wrong async GET value")
            if peer is not None and VALUE.encode() != peer.get(keys[-1]):
                raise AssertionError("wrong valkey-py value")
            if apeer is not None and VALUE.encode() != loop.run_until_complete(
                    apeer.get(keys[-1])):
                raise AssertionError("wrong valkey-py asyncio value")

            # (1) hits
            batches = {
                f"sync {CLUSTER_OURS}": (ours, batch_of(ours.get, HOT, TTL)),
                f"sync {STANDALONE_OURS}": (alone, batch_of(alone.get, HOT, TTL)),
                f"async {CLUSTER_OURS}": (aours, async_hit_batch(loop, aours)),
                f"async {STANDALONE_OURS}": (aalone, async_hit_batch(loop, aalone)),
            }
            hit_variants: Dict[str, Callable[[], float]] = {}
            for name, (client, batch) in batches.items():
                batch(1000)
                run = functools.partial(latency_run, batch, calibrate(batch), args.seconds)
                hit_variants[name] = checked_hits(client, run)
            hits = medians(interleaved_rounds(hit_variants, args.rounds, before_each=gc.collect))

            # (2) threads
            thread_variants: Dict[str, Callable[[], float]] = {
                CLUSTER_OURS: lambda: threaded_gets(functools.partial(ours.execute, "GET"), keys,
                                                    args.threads, args.seconds * 2),
                STANDALONE_OURS: lambda: threaded_gets(functools.partial(alone.execute, "GET"),
                                                       keys, args.threads, args.seconds * 2),
            }
            if peer is not None:
                thread_variants[CLUSTER_PY] = lambda: threaded_gets(
                    peer.get, keys, args.threads, args.seconds * 2)
            threads = medians(interleaved_rounds(thread_variants, args.rounds,
                                                 before_each=gc.collect))

            # (3) tasks
            def tasks_of(get: Callable[[str], Awaitable[Any]]) -> Callable[[], float]:
                return lambda: loop.run_until_complete(
                    task_gets(get, keys, args.tasks, args.seconds * 2))

            task_variants = {
                CLUSTER_OURS: tasks_of(functools.partial(aours.execute, "GET")),
                STANDALONE_OURS: tasks_of(functools.partial(aalone.execute, "GET")),
            }
            if apeer is not None:
                task_variants[CLUSTER_PY] = tasks_of(apeer.get)
            tasks = medians(interleaved_rounds(task_variants, args.rounds,
                                               before_each=gc.collect))
            counters = {"cluster Client": ours.stats(), "cluster AsyncClient": aours.stats()}
        finally:
            ours.close()
            alone.close()
            loop.run_until_complete(aours.aclose())
            loop.run_until_complete(aalone.aclose())
            if peer is not None:
                peer.close()
            if apeer is not None:
                loop.run_until_complete(apeer.aclose())
            loop.close()

        # (4) tracking, after a small warm-up case: a node's first tracked keys
        # allocate what later ones reuse, as in benchmarks.tracking_cost
        run_tracking(cluster, owners, url, 2, 300)
        tracking = run_tracking(cluster, owners, url, args.clients, args.keys)

    for name, stats in counters.items():
        print(f"{name} counters: hits={stats['hits']:,} misses={stats['misses']} "
              f"invalidations={stats['invalidations']}")
    report_hits(hits, args.rounds, args.seconds)
    report_rates(threads, tasks, args, skipped)
    report_tracking(tracking, args.clients, args.keys)
    print(f"\ntotal {time.monotonic() - t_start:.1f} s")


def _fill_standalone(server: Server, keys: Sequence[str]) -> None:
    """SET the GET keys on the standalone server."""
    with valkeyaside.Client(server.url, local_cache=False) as client:
        for key in keys:
            client.execute("SET", key, VALUE)


# -- reports -----------------------------------------------------------------------------


def report_hits(ns: Dict[str, float], rounds: int, seconds: float) -> None:
    rows = []
    targets = []
    for front in ("sync", "async"):
        c, s = ns[f"{front} {CLUSTER_OURS}"], ns[f"{front} {STANDALONE_OURS}"]
        rows.append([f"{front}: {'await ' if front == 'async' else ''}client.get, local entry",
                     fmt_num(c, 1), fmt_num(s, 1), ratio(c, s)])
        targets.append([f"{front} cluster hit <= 1.1x standalone hit", ratio(c, s),
                        met(c <= 1.1 * s)])
    print_table(f"(1) hit: ns per call, median of {rounds} rounds of {seconds:g} s "
                "(lower is better)", ["what", "cluster", "standalone", "cluster/standalone"],
                rows)
    print_table("targets (1)", ["target", "measured", "verdict"], targets)


def report_rates(threads: Dict[str, float], tasks: Dict[str, float], args: argparse.Namespace,
                 skipped: Dict[str, str]) -> None:
    seconds = args.seconds * 2
    rows = []
    targets = []
    for label, rates, target_name in (
        (f"{args.threads} threads, one client: execute(\"GET\", key) / get(key)", threads,
         f"{args.threads} threads >= 2x valkey-py ValkeyCluster"),
        (f"{args.tasks} asyncio tasks, one client", tasks,
         f"{args.tasks} tasks >= 2x valkey-py asyncio ValkeyCluster"),
    ):
        c, s = rates[CLUSTER_OURS], rates[STANDALONE_OURS]
        p = rates.get(CLUSTER_PY, float("nan"))
        rows.append([label, fmt_num(c, 0), fmt_num(p, 0) if CLUSTER_PY in rates else "skipped",
                     ratio(c, p), fmt_num(s, 0), ratio(c, s)])
        if CLUSTER_PY in rates:
            targets.append([target_name, ratio(c, p), met(c >= 2 * p)])
        else:
            targets.append([target_name, "skipped", skipped.get(CLUSTER_PY, "")])
    print_table(f"(2), (3) uncached GETs over {GET_KEYS:,} keys on {PRIMARIES} primaries: GET/s, "
                f"median of {args.rounds} rounds of {seconds:g} s (higher is better)",
                ["what", "valkeyaside cluster", "valkey-py cluster", "ratio",
                 "valkeyaside standalone", "cluster/standalone"], rows)
    print_table("targets (2), (3)", ["target", "measured", "verdict"], targets)


def report_tracking(t: Dict[str, Any], n_clients: int, n_keys: int) -> None:
    rows = []
    for address, after in t["after"].items():
        before, written = t["before"][address], t["written"][address]
        base = t["base"][address]
        k = len(t["keys"].get(address, []))
        model_items = n_clients * k
        model_mem = k * MODEL_FIRST_B + (model_items - k) * MODEL_FURTHER_B
        keys, items = after["keys"] - before["keys"], after["items"] - before["items"]
        mem = after["memory"] - before["memory"]
        rows.append([
            address,
            f"{k:,} / {keys:,}", f"{model_items:,} / {items:,}",
            f"{n_clients} / {after['tracking_clients']}",
            f"{n_clients} / {after['connections'] - base['connections']}",
            f"{model_mem:,} / {mem:,}", ratio(mem, model_mem),
            f"{written['keys'] - before['keys']} / {written['items'] - before['items']}",
        ])
    print_table(
        f"(4) tracking: {n_clients} cluster Clients each made a cached read of the same "
        f"{n_keys:,} keys; per primary, model / measured",
        ["primary", "tracked keys", "items", "tracking clients", "connections",
         "table memory B", "measured/model", "after 1 SET per key: keys / items"],
        rows,
    )
    print(f"model: per node, keys = the node's share, items = clients x keys, "
          f"{MODEL_FIRST_B} B for a key's first client + {MODEL_FURTHER_B} B each further "
          f"(README 'At scale'); one tracking connection per client per primary")
    print(f"cached reads: {t['reads']:,} in {t['read_s']:.2f} s "
          f"({fmt_num(t['reads'] / t['read_s'], 0)}/s); invalidations received after one SET "
          f"per key: {t['pushes']:,} (expected {t['expected']:,}, one per item)")


if __name__ == "__main__":
    main()
