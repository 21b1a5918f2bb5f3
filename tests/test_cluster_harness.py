"""The cluster and Sentinel harness (tests/cluster.py) does what it says.

A cluster forms (state ok on every node, 16384 slots covered, replicas
attached and replicating); a graceful failover promotes the replica; a
killed primary is replaced and comes back as a replica; a legacy migration
moves a slot, answering ASK in the middle; CLUSTER MIGRATESLOTS moves a slot
(Valkey 9); a Sentinel failover switches the primary.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from cluster import (
    MIGRATION_STEPS,
    SLOT_COUNT,
    ClusterNode,
    SentinelSetup,
    ValkeyCluster,
    migrateslots_unsupported,
)
from requires import skip_below_server
from server import RawConnection, RespError

from valkeyaside.cluster import key_slot


def _redirect(node: ClusterNode, *args: Any) -> str:
    """The error a node answers (MOVED/ASK ...), failing if it answers a value."""
    with pytest.raises(RespError) as info:
        node.command(*args)
    return str(info.value)


def _other_primary(cluster: ValkeyCluster, node: ClusterNode) -> ClusterNode:
    return next(p for p in cluster.primaries() if p.node_id != node.node_id)


def test_cluster_forms(valkey_cluster: ValkeyCluster) -> None:
    cluster = valkey_cluster
    assert len(cluster.nodes) == 6
    for node in cluster.nodes:
        info = node.command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info
        assert f"cluster_slots_assigned:{SLOT_COUNT}" in info
        assert "cluster_known_nodes:6" in info
        assert "cluster_size:3" in info
        owners = cluster.slot_map(via=node)
        assert None not in owners
        assert len(set(owners)) == 3
    primaries = cluster.primaries()
    assert [p.role() for p in primaries] == ["master"] * 3
    for primary in primaries:
        (replica,) = cluster.replicas_of(primary)
        assert replica.role() == "slave"
        fields = replica.info("replication")
        assert fields["master_link_status"] == "up"
        assert fields["master_port"] == str(primary.port)

    # A key lives on its slot's owner, reaches its replica, and the others redirect.
    key = "user:{42}:profile"
    slot = key_slot(key)
    assert cluster.keyslot(key) == slot
    owner = cluster.slot_owner(slot)
    with owner.connect() as conn:
        assert conn.execute("SET", key, "v") == "OK"
        assert conn.execute("WAIT", 1, 5000) == 1
    (replica,) = cluster.replicas_of(owner)
    with replica.connect() as conn:
        conn.execute("READONLY")
        assert conn.execute("GET", key) == b"v"
    other = _other_primary(cluster, owner)
    assert _redirect(other, "GET", key) == f"MOVED {slot} {owner.address}"


def test_graceful_failover_promotes_the_replica(fresh_cluster: ValkeyCluster) -> None:
    cluster = fresh_cluster
    key = "failover:{a}"
    primary = cluster.key_owner(key)
    (replica,) = cluster.replicas_of(primary)
    with primary.connect() as conn:
        conn.execute("SET", key, "before")
        assert conn.execute("WAIT", 1, 5000) == 1

    assert cluster.failover(replica) is primary

    assert replica.role() == "master"
    assert primary.role() == "slave"
    for node in cluster.nodes:
        assert cluster.key_owner(key) is replica
        assert cluster.slot_owner(key_slot(key), via=node) is replica
    assert cluster.replicas_of(replica) == [primary]
    assert replica.command("GET", key) == b"before"
    slot = key_slot(key)
    assert _redirect(primary, "GET", key) == f"MOVED {slot} {replica.address}"


def test_killed_primary_is_replaced_and_rejoins_as_replica(fresh_cluster: ValkeyCluster) -> None:
    cluster = fresh_cluster
    primary = cluster.primaries()[0]
    (replica,) = cluster.replicas_of(primary)
    pid = primary.server.pid

    cluster.kill(primary)
    assert not primary.running
    assert cluster.wait_failover_of(primary) is replica

    assert replica.role() == "master"
    cluster.restart(primary)  # waits until healthy: all 6 nodes, replicas attached
    assert primary.server.pid != pid
    assert primary.role() == "slave"
    assert cluster.replicas_of(replica) == [primary]


def test_legacy_migration_answers_ask_midway(valkey_cluster: ValkeyCluster) -> None:
    cluster = valkey_cluster
    keys = [f"{{mig}}:{i}" for i in range(150)]  # more than one GETKEYSINSLOT batch
    slot = key_slot(keys[0])
    source = cluster.slot_owner(slot)
    target = _other_primary(cluster, source)
    with source.connect() as conn:
        for key in keys:
            conn.send("SET", key, key)
        for _ in keys:
            assert conn.read_reply() == "OK"
    steps: List[str] = []
    ask = f"ASK {slot} {target.address}"

    def hook(step: str) -> None:
        steps.append(step)
        if step == "importing":
            assert source.command("GET", keys[0]) == keys[0].encode()
            assert _redirect(target, "GET", keys[0]) == f"MOVED {slot} {source.address}"
        elif step == "migrating":
            # Keys still at the source are served there; absent ones are asked of the target.
            assert source.command("GET", keys[0]) == keys[0].encode()
            assert _redirect(source, "GET", "{mig}:absent") == ask
        elif step == "keys_moved":
            assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
            assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys)
            assert _redirect(source, "GET", keys[0]) == ask
            # Without ASKING the target still redirects to the owner; with it, it answers.
            assert _redirect(target, "GET", keys[0]) == f"MOVED {slot} {source.address}"
            with target.connect() as conn:
                assert conn.execute("ASKING") == "OK"
                assert conn.execute("GET", keys[0]) == keys[0].encode()

    assert cluster.migrate_slot(slot, target, hook) is source

    assert steps == list(MIGRATION_STEPS)
    for node in cluster.nodes:
        assert cluster.slot_owner(slot, via=node) is target
    assert target.command("GET", keys[-1]) == keys[-1].encode()
    assert _redirect(source, "GET", keys[0]) == f"MOVED {slot} {target.address}"

    # The shared cluster gives the slot back to its first shard, empty.
    cluster.reset()
    assert cluster.slot_owner(slot) is source
    assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_migrateslots_moves_a_slot_atomically(valkey_cluster: ValkeyCluster) -> None:
    skip_below_server(9, 0, "CLUSTER MIGRATESLOTS needs Valkey 9.0", product="Valkey")
    assert migrateslots_unsupported(valkey_cluster.binary) is None
    cluster = valkey_cluster
    keys = [f"{{atomic}}:{i}" for i in range(50)]
    slot = key_slot(keys[0])
    source = cluster.slot_owner(slot)
    target = _other_primary(cluster, source)
    with source.connect() as conn:
        for key in keys:
            conn.execute("SET", key, key)

    assert cluster.migrate_slots_atomic(slot, slot, target) is source

    for node in cluster.nodes:
        assert cluster.slot_owner(slot, via=node) is target
    assert target.command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys)
    assert target.command("GET", keys[7]) == keys[7].encode()
    assert _redirect(source, "GET", keys[7]) == f"MOVED {slot} {target.address}"
    # The neighbouring slots stayed where they were.
    for neighbour in (slot - 1, slot + 1):
        assert cluster.slot_owner(neighbour) is source


def test_sentinel_setup_is_settled(sentinel_setup: SentinelSetup) -> None:
    setup = sentinel_setup
    primary, replica = setup.primary(), setup.replica()
    for sentinel in setup.sentinels:
        assert setup.primary_address(sentinel) == (primary.host, primary.port)
        assert len(sentinel.command("SENTINEL", "SENTINELS", setup.master_name)) == 2
    assert primary.command("ROLE")[0] == b"master"
    with primary.connect() as conn:
        conn.execute("SET", "k", "v")
        assert conn.execute("WAIT", 1, 5000) == 1
    assert replica.command("GET", "k") == b"v"


def test_sentinel_failover_switches_the_primary(fresh_sentinel: SentinelSetup) -> None:
    setup = fresh_sentinel
    old = setup.primary()
    assert old is setup.primary_server
    with old.connect() as conn:
        conn.execute("SET", "k", "before")
        assert conn.execute("WAIT", 1, 5000) == 1

    new = setup.failover()

    assert new is setup.replica_server
    for sentinel in setup.sentinels:
        assert setup.primary_address(sentinel) == (new.host, new.port)
    assert new.command("ROLE")[0] == b"master"
    assert new.command("GET", "k") == b"before"
    assert new.command("SET", "k", "after") == "OK"


def test_raw_connection_is_what_the_harness_speaks(valkey_cluster: ValkeyCluster) -> None:
    # The harness never goes through the library under test.
    node = valkey_cluster.nodes[0]
    with node.connect() as conn:
        assert isinstance(conn, RawConnection)
        assert conn.execute("PING") == "PONG"
