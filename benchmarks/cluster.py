"""Valkey Cluster: the cluster client against the standalone one and valkey-py's cluster clients.

A real cluster of 3 primaries without replicas (``tests/cluster.py``'s
``ValkeyCluster``) and one standalone valkey-server (``benchmarks._server``),
on loopback, in one run; variants interleaved round by round, medians of
rounds, ratios between figures of the same run:

(1) hit: ``client.get(key, ttl)`` of a local entry, a cluster ``Client``
    against a ``Client`` of the standalone server (ns per call, median
    batch, as ``benchmarks.hit`` times it), and ``await client.get`` of
    an ``AsyncClient`` the same way. The ratio judged is the median ratio of
    paired batches (a cluster batch and a standalone one, milliseconds
    apart), which a shared machine's swings disturb far less than the ratio
    of runs half a second apart (also shown). Every run is checked to be
    hits only (the client's ``misses`` do not move).
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
import math
import os
import random
import secrets
import sys
import time
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
from benchmarks.hit import Batch, batch_of, calibrate, latency_run, paired_batches
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
ONE_THREAD = "cluster, 1 thread"


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


def async_hit_batch(loop: asyncio.AbstractEventLoop, client: Any) -> Batch:
    """A batch runner (``n -> ns``) of awaited hits, each batch one ``run_until_complete``."""
    return lambda n: loop.run_until_complete(_async_hits(client.get, n))


# -- (2) threads -------------------------------------------------------------------------


def threaded_gets(get: Callable[[str], Any], keys: Sequence[str], threads: int,
                  seconds: float) -> Tuple[float, float]:
    """``threads`` threads each GET ``STEP`` keys from a random place, over and over:
    (total GETs per second, this process's CPU microseconds per GET)."""
    last = len(keys) - STEP

    def step() -> int:
        start = random.randrange(last)
        for key in keys[start:start + STEP]:
            get(key)
        return STEP

    cpu0, t0 = time.process_time(), time.perf_counter()
    rate = threaded_rate(step, threads, seconds)
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    return rate, cpu / (rate * elapsed) * 1e6


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
            c.connection.call_each_primary("PING")
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


PARTS = ("hits", "threads", "tasks", "tracking")


class Clients:
    """The clients of parts (1)-(3): ours on the cluster and on the standalone
    server (threaded and asyncio), and valkey-py's cluster clients when usable."""

    def __init__(self, url: str, server: Server, first: ClusterNode,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ours = valkeyaside.Client(url)
        self.alone = valkeyaside.Client(server.url)
        self.aours = valkeyaside.AsyncClient(url)
        self.aalone = valkeyaside.AsyncClient(server.url)
        self.peer: Any = None
        self.apeer: Any = None
        self.skipped = ""
        try:
            self.peer = pure_python_valkey_cluster(first.host, first.port)
            self.apeer = loop.run_until_complete(
                pure_python_valkey_async_cluster(first.host, first.port))
        except (ImportError, RuntimeError) as exc:
            self.skipped = f"{type(exc).__name__}: {exc} (pip install -e '.[bench]')"

    def check(self, key: str) -> None:
        """Warm every client up; check the values they read."""
        run, want = self.loop.run_until_complete, VALUE.encode()
        got: Dict[str, Any] = {}
        for name, client in (("cluster", self.ours), ("standalone", self.alone)):
            got[f"{name} hit"] = [client.get(HOT, TTL) for _ in range(2)][-1]
            got[f"{name} GET"] = client.execute("GET", key)
        for name, aclient in (("async cluster", self.aours), ("async standalone", self.aalone)):
            got[f"{name} hit"] = [run(aclient.get(HOT, TTL)) for _ in range(2)][-1]
            got[f"{name} GET"] = run(aclient.execute("GET", key))
        if self.peer is not None:
            got["valkey-py GET"] = self.peer.get(key)
            got["valkey-py asyncio GET"] = run(self.apeer.get(key))
        wrong = {name: value for name, value in got.items()
                 if value != (VALUE if name.endswith("hit") else want)}
        if wrong:
            raise AssertionError(f"wrong values: {wrong!r:.300}")

    def close(self) -> None:
        run = self.loop.run_until_complete
        self.ours.close()
        self.alone.close()
        run(self.aours.aclose())
        run(self.aalone.aclose())
        if self.peer is not None:
            self.peer.close()
        if self.apeer is not None:
            run(self.apeer.aclose())


def measure_hits(c: Clients, rounds: int, seconds: float) -> Dict[str, Tuple[float, float]]:
    """Part (1), per front end: (ns per hit, cluster/standalone ratio) of each variant.

    The ns are the median of each variant's runs (``benchmarks.hit``'s timing,
    variants interleaved round by round); the ratio is the median over the
    rounds of the median ratio of paired batches (``paired_batches``).
    """
    fronts = {
        "sync": ((c.ours, batch_of(c.ours.get, HOT, TTL)),
                 (c.alone, batch_of(c.alone.get, HOT, TTL))),
        "async": ((c.aours, async_hit_batch(c.loop, c.aours)),
                  (c.aalone, async_hit_batch(c.loop, c.aalone))),
    }
    variants: Dict[str, Callable[[], float]] = {}
    for front, pair in fronts.items():
        for (client, batch), where in zip(pair, (CLUSTER_OURS, STANDALONE_OURS)):
            batch(1000)
            run = functools.partial(latency_run, batch, calibrate(batch), seconds)
            variants[f"{front} {where}"] = checked_hits(client, run)
        (cluster_client, cluster), (alone_client, alone) = pair
        sizes = (calibrate(cluster), calibrate(alone))
        flips = iter([False, True] * rounds)  # which goes first in a round's first pair

        def pairs(cluster: Batch = cluster, alone: Batch = alone,
                  sizes: Tuple[int, int] = sizes, flips: Iterator[bool] = flips) -> float:
            return median(paired_batches(cluster, alone, sizes, seconds, next(flips)))

        variants[f"{front} pairs"] = checked_hits(cluster_client,
                                                  checked_hits(alone_client, pairs))
    found = medians(interleaved_rounds(variants, rounds, before_each=gc.collect))
    return {f"{front} {where}": (found[f"{front} {where}"], found[f"{front} pairs"])
            for front in fronts for where in (CLUSTER_OURS, STANDALONE_OURS)}


def measure_threads(c: Clients, keys: Sequence[str], threads: int, rounds: int,
                    seconds: float) -> Dict[str, Tuple[float, float]]:
    """Part (2): (GET/s, CPU us per GET) per variant; the cluster client with one
    thread too, for its scaling."""
    ours = functools.partial(c.ours.execute, "GET")
    alone = functools.partial(c.alone.execute, "GET")
    variants: Dict[str, Callable[[], Tuple[float, float]]] = {
        CLUSTER_OURS: lambda: threaded_gets(ours, keys, threads, seconds),
        STANDALONE_OURS: lambda: threaded_gets(alone, keys, threads, seconds),
        ONE_THREAD: lambda: threaded_gets(ours, keys, 1, seconds),
    }
    if c.peer is not None:
        variants[CLUSTER_PY] = lambda: threaded_gets(c.peer.get, keys, threads, seconds)
    for get in (ours, alone, c.peer.get if c.peer is not None else ours):
        threaded_gets(get, keys, threads, 0.1)  # warm-up: pools fill, connections open
    results = interleaved_rounds(variants, rounds, before_each=gc.collect)
    return {name: (median([r for r, _ in runs]), median([u for _, u in runs]))
            for name, runs in results.items()}


def measure_tasks(c: Clients, keys: Sequence[str], tasks: int, rounds: int,
                  seconds: float) -> Dict[str, Tuple[float, float]]:
    """Part (3): (GET/s, NaN) per variant."""

    def tasks_of(get: Callable[[str], Awaitable[Any]]) -> Callable[[], float]:
        return lambda: c.loop.run_until_complete(task_gets(get, keys, tasks, seconds))

    variants = {
        CLUSTER_OURS: tasks_of(functools.partial(c.aours.execute, "GET")),
        STANDALONE_OURS: tasks_of(functools.partial(c.aalone.execute, "GET")),
    }
    if c.apeer is not None:
        variants[CLUSTER_PY] = tasks_of(c.apeer.get)
    warm = [c.aours.execute, c.aalone.execute] + ([c.apeer.execute_command]
                                                  if c.apeer is not None else [])
    for execute in warm:  # warm-up: valkey-py opens a connection per task
        c.loop.run_until_complete(task_gets(functools.partial(execute, "GET"), keys, tasks, 0.1))
    return {name: (rate, math.nan) for name, rate in
            medians(interleaved_rounds(variants, rounds, before_each=gc.collect)).items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="seconds per hit variant per round; GET runs last twice as long "
                         "(default 0.5)")
    ap.add_argument("--threads", type=int, default=4, help="threads of (2) (default 4)")
    ap.add_argument("--tasks", type=int, default=100, help="asyncio tasks of (3) (default 100)")
    ap.add_argument("--clients", type=int, default=10, help="clients of (4) (default 10)")
    ap.add_argument("--keys", type=int, default=3000,
                    help="keys each client of (4) caches (default 3000: ~1,000 per primary)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS),
                    help="run only these parts")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    loop = asyncio.new_event_loop()
    hits: Dict[str, Tuple[float, float]] = {}
    rates: Dict[str, Dict[str, Tuple[float, float]]] = {}
    counters: Dict[str, Dict[str, Any]] = {}
    tracking: Optional[Dict[str, Any]] = None
    skipped = ""

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

        if {"hits", "threads", "tasks"} & set(args.only):
            clients = Clients(url, server, first, loop)
            skipped = clients.skipped
            try:
                clients.check(keys[-1])
                if "hits" in args.only:
                    hits = measure_hits(clients, args.rounds, args.seconds)
                if "threads" in args.only:
                    rates["threads"] = measure_threads(clients, keys, args.threads, args.rounds,
                                                       args.seconds * 2)
                if "tasks" in args.only:
                    rates["tasks"] = measure_tasks(clients, keys, args.tasks, args.rounds,
                                                   args.seconds * 2)
                counters = {"cluster Client": clients.ours.stats(),
                            "cluster AsyncClient": clients.aours.stats()}
            finally:
                clients.close()
        loop.close()

        if "tracking" in args.only:
            # A small warm-up case first: a node's first tracked keys allocate
            # what later ones reuse (as in benchmarks.tracking_cost).
            run_tracking(cluster, owners, url, 2, 300)
            tracking = run_tracking(cluster, owners, url, args.clients, args.keys)

    for name, stats in counters.items():
        print(f"{name} counters: hits={stats['hits']:,} misses={stats['misses']} "
              f"invalidations={stats['invalidations']}")
    if skipped:
        print(f"{CLUSTER_PY}: skipped, {skipped}")
    if hits:
        report_hits(hits, args.rounds, args.seconds)
    if rates:
        report_rates(rates, args, skipped)
    if tracking is not None:
        report_tracking(tracking, args.clients, args.keys)
    print(f"\ntotal {time.monotonic() - t_start:.1f} s")


def _fill_standalone(server: Server, keys: Sequence[str]) -> None:
    """SET the GET keys on the standalone server."""
    with valkeyaside.Client(server.url, local_cache=False) as client:
        for key in keys:
            client.execute("SET", key, VALUE)


# -- reports -----------------------------------------------------------------------------


def report_hits(ns: Dict[str, Tuple[float, float]], rounds: int, seconds: float) -> None:
    rows = []
    targets = []
    for front in ("sync", "async"):
        (c, paired), (s, _) = ns[f"{front} {CLUSTER_OURS}"], ns[f"{front} {STANDALONE_OURS}"]
        rows.append([f"{front}: {'await ' if front == 'async' else ''}client.get, local entry",
                     fmt_num(c, 1), fmt_num(s, 1), ratio(c, s), f"{paired:.2f}x"])
        targets.append([f"{front} cluster hit <= 1.1x standalone hit (paired batches)",
                        f"{paired:.2f}x", met(paired <= 1.1)])
    print_table(f"(1) hit: ns per call, median of {rounds} rounds of {seconds:g} s "
                "(lower is better)",
                ["what", "cluster", "standalone", "ratio of runs", "ratio of paired batches"],
                rows)
    print_table("targets (1)", ["target", "measured", "verdict"], targets)


def report_rates(rates: Dict[str, Dict[str, Tuple[float, float]]], args: argparse.Namespace,
                 skipped: str) -> None:
    seconds = args.seconds * 2
    labels = {"threads": f"(2) {args.threads} threads, one client",
              "tasks": f"(3) {args.tasks} asyncio tasks, one client"}
    goals = {"threads": f"{args.threads} threads >= 2x valkey-py ValkeyCluster",
             "tasks": f"{args.tasks} tasks >= 2x valkey-py asyncio ValkeyCluster"}
    rows = []
    targets = []
    for part, found in rates.items():
        c, s = found[CLUSTER_OURS][0], found[STANDALONE_OURS][0]
        p = found[CLUSTER_PY][0] if CLUSTER_PY in found else math.nan
        rows.append([labels[part], fmt_num(c, 0),
                     fmt_num(p, 0) if CLUSTER_PY in found else "skipped",
                     ratio(c, p), fmt_num(s, 0), ratio(c, s)])
        if part == "threads":
            cpu, cpu_alone = found[CLUSTER_OURS][1], found[STANDALONE_OURS][1]
            cpu_py = found[CLUSTER_PY][1] if CLUSTER_PY in found else math.nan
            rows.append([f"    process CPU us per GET ({args.threads} threads)", fmt_num(cpu, 1),
                         fmt_num(cpu_py, 1), ratio(cpu, cpu_py), fmt_num(cpu_alone, 1),
                         ratio(cpu, cpu_alone)])
            one = found[ONE_THREAD][0]
            rows.append([f"    cluster client, 1 thread: GET/s ({args.threads} threads / 1)",
                         fmt_num(one, 0), "", "", "", ratio(c, one)])
        if CLUSTER_PY in found:
            targets.append([goals[part], ratio(c, p), met(c >= 2 * p)])
        else:
            targets.append([goals[part], "skipped", skipped])
    print_table(f"uncached GETs over {GET_KEYS:,} keys on {PRIMARIES} primaries: GET/s, "
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
