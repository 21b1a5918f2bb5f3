"""Client and AsyncClient on a real Valkey Cluster (3 primaries, 3 replicas).

Each behaviour runs against both front ends: routing by slot, invalidation
from every node, MOVED after resharding, ASK in the middle of a migration
(whose answers are never kept), a slot that moves away and back, FLUSHALL
on one node, a killed primary, a graceful failover, the holder's marker node
lost while others wait, and a stampede of 8 processes on one key.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Callable, Iterator, List, Optional

import frontends
import pytest
from cluster import ClusterNode, ValkeyCluster, migrateslots_unsupported
from helpers import Background, Loader, wait_until
from test_aside_processes import PROCESSES, THREADS, forked_child, stampede_worker

import valkeyaside
from valkeyaside._topology import Topology
from valkeyaside.cluster import key_slot
from valkeyaside.cluster._router import SlotMap, command_key
from valkeyaside.resp3 import Connection, ConnectionOptions

SPAWN = multiprocessing.get_context("spawn")


def cluster_url(cluster: ValkeyCluster, seeds: int = 3) -> str:
    primaries = cluster.primaries()[:seeds]
    return "valkey://" + ",".join(node.address for node in primaries) + "/0"


def keys_on(cluster: ValkeyCluster, node: ClusterNode, count: int, prefix: str = "k") -> List[str]:
    """``count`` keys whose slots ``node`` owns."""
    found: List[str] = []
    i = 0
    while len(found) < count:
        key = f"{prefix}:{i}"
        if cluster.key_owner(key).node_id == node.node_id:
            found.append(key)
        i += 1
    return found


def other_primary(cluster: ValkeyCluster, node: ClusterNode) -> ClusterNode:
    return next(p for p in cluster.primaries() if p.node_id != node.node_id)


def replicated(node: ClusterNode) -> None:
    """Return once ``node``'s replica has acknowledged every write so far, so a
    failover that follows loses none (a replica still resyncing after an earlier
    test restarted it can take longer than one ``WAIT``)."""
    wait_until(lambda: node.command("WAIT", 1, 1000) == 1, 30,
               f"the replica of {node.address} to acknowledge the writes")


def cached(client: Any, key: str) -> bool:
    """Whether ``client`` holds a fresh local entry for ``key``."""
    entry = client._entries.get(key)
    return entry is not None and entry.plain


@pytest.fixture
def cluster_client(valkey_cluster: ValkeyCluster, front: str) -> Iterator[Callable[..., Any]]:
    clients: List[Any] = []

    def make(cluster: Optional[ValkeyCluster] = None, **options: Any) -> Any:
        client = frontends.make(front, cluster_url(cluster or valkey_cluster), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        frontends.shutdown(client)


# -- routing -------------------------------------------------------------------------


def test_keys_live_on_their_slot_owner_and_hits_are_local(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    calls: List[str] = []

    def load(key: str) -> str:
        calls.append(key)
        return f"value of {key}"

    keys = [f"user:{i}" for i in range(60)]
    assert len({valkey_cluster.key_owner(key).node_id for key in keys}) == 3
    assert [client.get(key, 30, load) for key in keys] == [f"value of {k}" for k in keys]
    for key in keys:
        assert valkey_cluster.key_owner(key).command("GET", key) == f"value of {key}".encode()
    wait_until(lambda: all(cached(client, key) for key in keys), 10, "the fills handed over")
    hits = client.stats()["hits"]
    assert [client.get(key, 30, load) for key in keys] == [f"value of {k}" for k in keys]
    assert client.stats()["hits"] - hits == len(keys)
    assert calls == keys
    assert sorted(client.connection.primaries) == sorted(
        (node.host, node.port) for node in valkey_cluster.primaries())


def test_a_write_on_any_node_invalidates(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    keys = [keys_on(valkey_cluster, node, 1)[0] for node in valkey_cluster.primaries()]
    for key in keys:
        assert client.get(key, 30, lambda k: "old") == "old"
    for key in keys:
        valkey_cluster.key_owner(key).command("SET", key, "new")
    wait_until(lambda: not any(cached(client, key) for key in keys), 10, "the entries dropped")
    assert [client.get(key, 30) for key in keys] == ["new"] * 3


def test_get_many_spans_every_node(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    keys = [f"item:{i}" for i in range(30)]
    calls: List[List[str]] = []

    def load(missing: List[str]) -> dict:
        calls.append(missing)
        return {key: f"v{key}" for key in missing if key != "item:3"}

    assert client.get_many(keys, 30, load) == {
        key: (None if key == "item:3" else f"v{key}") for key in keys}
    assert calls == [keys]
    assert client.get_many(keys, 30, load) == {
        key: (None if key == "item:3" else f"v{key}") for key in keys}
    assert len(calls) == 1
    assert client.delete(*keys) == 30
    assert all(valkey_cluster.key_owner(key).command("EXISTS", key) == 0 for key in keys)


def test_cached_many_spans_every_node(valkey_cluster: ValkeyCluster) -> None:
    calls: List[List[int]] = []
    with valkeyaside.Client(cluster_url(valkey_cluster)) as client:

        @client.cached_many(30, key="product:{}")
        def products(ids: List[int]) -> dict:
            calls.append(ids)
            return {i: f"product {i}" for i in ids if i != 7}

        ids = list(range(30))
        keys = [products.key(i) for i in ids]
        assert len({valkey_cluster.key_owner(key).node_id for key in keys}) == 3
        expected = {i: (None if i == 7 else f"product {i}") for i in ids}
        assert products(ids) == expected
        assert calls == [ids]
        assert valkey_cluster.key_owner("product:3").command("GET", "product:3") == b"product 3"
        assert products(reversed(ids)) == dict(reversed(expected.items()))
        assert len(calls) == 1
        assert products.invalidate(ids) == 30
        assert all(valkey_cluster.key_owner(key).command("EXISTS", key) == 0 for key in keys)


def test_execute_routes_by_key(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    for i in range(20):
        assert client.execute("SET", f"plain:{i}", i) == "OK"
    for i in range(20):
        assert client.execute("GET", f"plain:{i}") == str(i).encode()
    assert client.execute("EVAL", "return redis.call('GET', KEYS[1])", 1, "plain:7") == b"7"
    assert client.execute("PING") == "PONG"
    with pytest.raises(valkeyaside.ResponseError, match="CROSSSLOT"):
        client.execute("MGET", *keys_on(valkey_cluster, valkey_cluster.primaries()[0], 2))
    with pytest.raises(ValueError, match="RESET"):
        client.execute("RESET")


def test_command_key() -> None:
    assert command_key(("GET", "a")) == "a"
    assert command_key(("PING",)) is None
    assert command_key(("EVALSHA", "abc", 1, "k", "x")) == "k"
    assert command_key(("EVAL", "return 1", 0)) is None
    assert command_key(("XREAD", "COUNT", 1, "STREAMS", "s", "0")) == "s"
    assert command_key(("MEMORY", "USAGE", "m")) == "m"
    assert command_key((b"object", b"encoding", b"o")) == "o"


def test_urls_name_the_topology() -> None:
    topology = Topology.from_url("valkey://a:7000,b:7001/0", {})
    assert topology.seeds == (("a", 7000), ("b", 7001)) and topology.cluster is None
    assert Topology.from_url("valkey://a:7000", {}).cluster is False
    assert Topology.from_url("valkey://a:7000", {"cluster": True}).cluster is True
    with pytest.raises(ValueError, match="cluster"):
        Topology.from_url("valkey://a:7000,b:7001", {"cluster": False})
    with pytest.raises(ValueError, match="host:port"):
        Topology.from_url("valkey://a:7000,b:x", {})
    secret = Topology.from_url("valkey://u:hunter2@a:7000,b:7001/0", {})
    assert secret.options.password == "hunter2" and "hunter2" not in repr(secret)


def test_several_seeds_of_one_plain_server_are_one_server(server_url: str, front: str) -> None:
    host_port = server_url.split("//")[1].split("/")[0]
    client = frontends.make(front, f"valkey://{host_port},{host_port}/0")
    try:
        assert client.get("one-server", 10, lambda k: "v") == "v"
        wait_until(lambda: cached(client, "one-server"), 10, "the fill handed over")
        assert client.get("one-server", 10) == "v"
        assert client.stats()["hits"] == 1
        assert client.connection.primaries == [client.connection.address_of(None)]
    finally:
        frontends.shutdown(client)


# -- the map changes -----------------------------------------------------------------


def test_moved_after_resharding(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    source = valkey_cluster.primaries()[0]
    key = keys_on(valkey_cluster, source, 1)[0]
    assert client.get(key, 30, lambda k: "before") == "before"
    target = other_primary(valkey_cluster, source)
    valkey_cluster.migrate_slot(key_slot(key), target)
    # The source's MIGRATE deleted it there, which invalidated it here.
    wait_until(lambda: not cached(client, key), 10, "the entry dropped")
    assert client.get(key, 30) == "before"  # MOVED, then read on the target
    target.command("SET", key, "after")
    wait_until(lambda: not cached(client, key), 10, "the entry dropped")
    assert client.get(key, 30) == "after"
    fresh = f"{{{key}}}:new"  # same slot, now the target's
    assert client.get(fresh, 30, lambda k: "loaded") == "loaded"
    assert target.command("GET", fresh) == b"loaded"


def test_ask_mid_migration_is_answered_but_never_kept(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    source = valkey_cluster.primaries()[0]
    target = other_primary(valkey_cluster, source)
    key = keys_on(valkey_cluster, source, 1, "ask")[0]
    seen: List[Any] = []

    def hook(step: str) -> None:
        if step == "migrating":  # absent keys of the slot: the source answers ASK
            seen.append(client.get(key, 30, lambda k: "loaded mid-migration"))
            seen.append(cached(client, key))
            with target.connect() as conn:  # the importing node answers after ASKING
                conn.execute("ASKING")
                seen.append(conn.execute("GET", key))

    valkey_cluster.migrate_slot(key_slot(key), target, hook)
    assert seen == ["loaded mid-migration", False, b"loaded mid-migration"]
    target.command("SET", key, "changed on the target")
    assert client.get(key, 30) == "changed on the target"


def test_a_slot_that_moves_away_and_back_never_serves_the_old_entry(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    home = valkey_cluster.primaries()[0]
    away = other_primary(valkey_cluster, home)
    key = keys_on(valkey_cluster, home, 1, "aba")[0]
    assert client.get(key, 30, lambda k: "A's value") == "A's value"
    valkey_cluster.migrate_slot(key_slot(key), away)
    away.command("SET", key, "written while on B")
    valkey_cluster.migrate_slot(key_slot(key), home)
    wait_until(lambda: not cached(client, key), 10, "the entry dropped")
    assert client.get(key, 30) == "written while on B"


@pytest.mark.skipif(migrateslots_unsupported() is not None,
                    reason=str(migrateslots_unsupported()))
def test_atomic_slot_migration(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    source = valkey_cluster.primaries()[0]
    key = keys_on(valkey_cluster, source, 1, "atomic")[0]
    assert client.get(key, 30, lambda k: "before") == "before"
    target = other_primary(valkey_cluster, source)
    slot = key_slot(key)
    valkey_cluster.migrate_slots_atomic(slot, slot, target)
    target.command("SET", key, "after")
    wait_until(lambda: not cached(client, key), 10, "the entry dropped")
    assert client.get(key, 30) == "after"


def test_flushall_on_one_node_drops_only_its_entries(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    primaries = valkey_cluster.primaries()
    by_node = {node.node_id: keys_on(valkey_cluster, node, 5, "fl") for node in primaries}
    for keys in by_node.values():
        for key in keys:
            client.get(key, 30, lambda k: "v")
    every = [key for keys in by_node.values() for key in keys]
    wait_until(lambda: all(cached(client, key) for key in every), 10, "the fills handed over")
    flushed = primaries[1]
    flushed.command("FLUSHALL")
    wait_until(lambda: not any(cached(client, key) for key in by_node[flushed.node_id]), 10,
               "the flushed node's entries dropped")
    for node in primaries:
        if node.node_id != flushed.node_id:
            assert all(cached(client, key) for key in by_node[node.node_id])


# -- faults ----------------------------------------------------------------------------


def test_killed_primary_drops_its_entries_and_service_resumes(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    primaries = valkey_cluster.primaries()
    victim = primaries[0]
    lost = keys_on(valkey_cluster, victim, 3, "kill")
    kept = keys_on(valkey_cluster, primaries[1], 3, "kill")
    for key in lost + kept:
        client.get(key, 30, lambda k: "v")
    wait_until(lambda: all(cached(client, key) for key in lost + kept), 10,
               "the fills handed over")
    replicated(victim)
    (replica,) = valkey_cluster.replicas_of(victim)
    valkey_cluster.kill(victim)
    wait_until(lambda: not any(cached(client, key) for key in lost), 10,
               "the dead node's entries dropped")
    assert all(cached(client, key) for key in kept)
    wait_until(lambda: replica.role() == "master", 30, "the replica to take over")
    wait_until(lambda: _get_or_none(client, lost[0], None) == "v", 30,
               "the promoted replica to serve the key")
    fresh = f"{{{lost[0]}}}:after"
    assert client.get(fresh, 30, lambda k: "loaded after") == "loaded after"


def _get_or_none(client: Any, key: str, loader: Any) -> Optional[str]:
    try:
        return client.get(key, 30, loader)  # type: ignore[no-any-return]
    except valkeyaside.ConnectionError:  # the key's primary is down, not yet replaced
        return None


def test_graceful_failover(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    client = cluster_client()
    old = valkey_cluster.primaries()[0]
    key = keys_on(valkey_cluster, old, 1, "fo")[0]
    assert client.get(key, 30, lambda k: "before") == "before"
    replicated(old)
    (replica,) = valkey_cluster.replicas_of(old)
    valkey_cluster.failover(replica)
    replica.command("SET", key, "after")
    wait_until(lambda: _get_or_none(client, key, None) == "after", 30,
               "the new primary's value")


def test_waiters_survive_the_loss_of_the_holders_marker_node(
    fresh_cluster: ValkeyCluster, front: str
) -> None:
    cluster = fresh_cluster
    holder = frontends.make("sync", cluster_url(cluster))
    waiter = frontends.make(front, cluster_url(cluster))
    try:
        # The holder's marker decides which node dies; the key lives elsewhere.
        marker_node = cluster.key_owner(_marker_of(holder))
        key = keys_on(cluster, other_primary(cluster, marker_node), 1, "held")[0]
        gate = threading.Event()
        loader = Loader("filled", gate)
        held = Background(lambda: holder.get(key, 30, loader))
        assert loader.started.wait(10)
        waited = Background(lambda: waiter.get(key, 30))
        wait_until(lambda: waiter.stats()["lock_waits"] >= 1, 10, "the waiter to wait")
        replicated(marker_node)
        cluster.kill(marker_node)
        wait_until(lambda: waiter.stats()["flushes"] >= 1, 10, "the waiter to lose the node")
        gate.set()
        assert held.result(30) == "filled"
        assert waited.result(30) == "filled"
        assert waiter.stats()["takeovers"] == 0
        assert loader.calls == 1
        # The holder lost its marker's node: its next lock names a new marker,
        # drawn on a node it can reach (before any replica took over).
        after = keys_on(cluster, other_primary(cluster, marker_node), 1, "after")[0]
        assert holder.get(after, 30, lambda k: "v") == "v"
        new_marker = holder._aside.locks.marker.current
        assert new_marker is not None and cluster.key_owner(new_marker).running
    finally:
        frontends.shutdown(holder)
        frontends.shutdown(waiter)


def _marker_of(client: Any) -> str:
    """The client's marker id, made now if need be."""
    client.get("{marker-probe}", 5, lambda k: "x")
    marker = client._aside.locks.marker.current
    assert marker is not None
    return str(marker)


def test_eight_processes_one_cluster_key_one_load(
    valkey_cluster: ValkeyCluster, children: List[Any]
) -> None:
    url = cluster_url(valkey_cluster)
    start = SPAWN.Barrier(PROCESSES)
    out = SPAWN.Queue()
    for _ in range(PROCESSES):
        process = SPAWN.Process(target=stampede_worker,
                                args=(url, "{cold}:key", "{cold}:loads", False, start, out))
        process.start()
        children.append(process)
    reports = [out.get(timeout=60) for _ in range(PROCESSES)]
    for process in children:
        process.join(15)
        assert process.exitcode == 0
    assert [report for report in reports if report[0] != "done"] == []
    values = [value for report in reports for value in report[1]]
    assert values == ["value of {cold}:key"] * (PROCESSES * THREADS)
    assert sum(report[2] for report in reports) == 1
    assert valkey_cluster.key_owner("{cold}:loads").command("GET", "{cold}:loads") == b"1"


@pytest.mark.skipif(migrateslots_unsupported() is not None,
                    reason="numbered databases in cluster mode need Valkey 9")
def test_a_numbered_database(front: str) -> None:
    with ValkeyCluster(primaries=3, replicas=0,
                       extra_args=["--cluster-databases", "16"]) as cluster:
        url = "valkey://" + ",".join(node.address for node in cluster.primaries()) + "/3"
        client = frontends.make(front, url)
        try:
            keys = [f"db3:{i}" for i in range(12)]
            assert [client.get(key, 30, lambda k: k.upper()) for key in keys] == [
                key.upper() for key in keys]
            for key in keys:
                with cluster.key_owner(key).connect() as conn:
                    assert conn.execute("GET", key) is None  # not in db 0
                    conn.execute("SELECT", 3)
                    assert conn.execute("GET", key) == key.upper().encode()
        finally:
            frontends.shutdown(client)


def test_cluster_client_used_across_fork(
    valkey_cluster: ValkeyCluster, children: List[Any]
) -> None:
    context = multiprocessing.get_context("fork")
    with valkeyaside.Client(cluster_url(valkey_cluster)) as client:
        owner = valkey_cluster.key_owner("shared")
        owner.command("SET", "shared", "before fork")
        assert client.get("shared", 30) == "before fork"
        # A socket of this thread's own for uncached reads (resp3._direct): the
        # child must make its own, while the parent keeps reading over this one.
        assert client.execute("GET", "shared") == b"before fork"
        changed = context.Event()
        out = context.Queue()
        child = context.Process(target=forked_child, args=(client, changed, out))
        child.start()
        children.append(child)
        reads: List[Any] = []
        stop = threading.Event()

        def read_on() -> None:
            while not stop.is_set():
                reads.append(client.execute("GET", "shared"))

        reader = Background(read_on)
        owner.command("SET", "shared", "after fork")  # the child gets no invalidation for it
        changed.set()
        report = out.get(timeout=20)
        child.join(10)
        stop.set()
        reader.result()
        assert reads and set(reads) <= {b"before fork", b"after fork"}, reads[:10]
        assert "error" not in report, report
        assert report["shared"] == "after fork"
        assert report["loaded"] == "from the child"
        assert report["reads"] == [b"the child's"] * 200
        assert child.exitcode == 0
        assert client.get("shared", 30) == "after fork"
        assert client.get("child-key", 30) == "from the child"


def test_the_slot_map_reads_alike_from_shards_and_slots(valkey_cluster: ValkeyCluster) -> None:
    node = valkey_cluster.primaries()[0]
    connection = Connection(ConnectionOptions(host=node.host, port=node.port))
    try:
        asked = (node.host, node.port)
        shards = SlotMap.from_shards(connection.call("CLUSTER", "SHARDS"), asked, tls=False)
        slots = SlotMap.from_slots(connection.call("CLUSTER", "SLOTS"), asked)
    finally:
        connection.close()
    assert shards.owners == slots.owners
    assert None not in shards.owners
    expected = valkey_cluster.slot_map()
    by_id = {p.node_id: (p.host, p.port) for p in valkey_cluster.primaries()}
    assert shards.owners == [by_id[owner] for owner in expected]


def test_tryagain_mid_migration_is_retried_until_the_slot_settles(
    valkey_cluster: ValkeyCluster, cluster_client: Callable[..., Any]
) -> None:
    # Two keys of one slot, one of them already moved: the source answers a
    # command on both with TRYAGAIN, which is retried (with backoff) until the
    # migration ends and MOVED leads to the target, which has both.
    client = cluster_client()
    source = valkey_cluster.primaries()[0]
    target = other_primary(valkey_cluster, source)
    first, second = [f"{{{keys_on(valkey_cluster, source, 1, 'try')[0]}}}:{i}" for i in (1, 2)]
    source.command("SET", first, "one")
    source.command("SET", second, "two")
    calls: List[Any] = []

    def hook(step: str) -> None:
        if step == "migrating":
            source.command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", first)
            calls.append(Background(lambda: client.execute("MGET", first, second)))
            wait_until(lambda: client.connection.redirections.get("TRYAGAIN", 0) >= 1, 10,
                       "a TRYAGAIN")

    valkey_cluster.migrate_slot(key_slot(first), target, hook)
    assert calls[0].result(10) == [b"one", b"two"]
    redirections = client.connection.redirections  # then ASK (keys moved) or MOVED (done)
    assert redirections.get("ASK", 0) + redirections.get("MOVED", 0) >= 1, redirections
