"""Uncached read-only commands of a threaded cluster ``Client`` over sockets of
the calling thread's own (``valkeyaside.resp3._direct``), on a real cluster.

The server's ``CLIENT LIST`` shows which socket answered: the shared link has
tracking on (flag ``t``), a direct socket has not; ``cmd`` is the last command
each one ran.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
from cluster import ClusterNode, ValkeyCluster
from helpers import wait_until
from test_cluster_client import cluster_url, keys_on, other_primary

import valkeyaside
from valkeyaside.cluster import key_slot
from valkeyaside.resp3 import ConnectionOptions

NAME = "direct-test"


def connections(node: ClusterNode, name: str = NAME) -> List[Dict[str, str]]:
    """``CLIENT LIST`` of ``node``, the connections named ``name``."""
    listing = node.command("CLIENT", "LIST").decode()
    rows = [dict(field.split("=", 1) for field in line.split(" ") if "=" in field)
            for line in listing.splitlines()]
    return [row for row in rows if row.get("name") == name]


def direct(node: ClusterNode) -> List[Dict[str, str]]:
    return [row for row in connections(node) if "t" not in row["flags"]]


def tracked(node: ClusterNode) -> List[Dict[str, str]]:
    return [row for row in connections(node) if "t" in row["flags"]]


@pytest.fixture
def client(valkey_cluster: ValkeyCluster) -> Iterator[valkeyaside.Client]:
    with valkeyaside.Client(cluster_url(valkey_cluster), client_name=NAME) as made:
        yield made


def test_a_read_is_answered_over_a_socket_of_its_own(
    valkey_cluster: ValkeyCluster, client: valkeyaside.Client
) -> None:
    node = valkey_cluster.primaries()[0]
    key = keys_on(valkey_cluster, node, 1, "direct")[0]
    assert client.execute("SET", key, "v") == "OK"
    assert client.execute("GET", key) == b"v"
    assert client.execute("HGETALL", f"{{{key}}}:absent") == {}
    assert [row["cmd"] for row in tracked(node)] == ["set"]
    assert [row["cmd"] for row in direct(node)] == ["hgetall"]
    # An error reply that is not a redirection is the caller's, from either path.
    with pytest.raises(valkeyaside.ResponseError, match="WRONGTYPE"):
        client.execute("HGET", key, "field")


def test_writes_and_other_commands_keep_to_the_tracked_link(
    valkey_cluster: ValkeyCluster, client: valkeyaside.Client
) -> None:
    node = valkey_cluster.primaries()[1]
    key = keys_on(valkey_cluster, node, 1, "direct")[0]
    assert client.execute("SET", key, "1") == "OK"
    assert client.execute("INCR", key) == 2
    assert client.execute("GETEX", key, "PX", 60000) == b"2"  # reads, but writes a TTL
    assert direct(node) == []
    assert [row["cmd"] for row in tracked(node)] == ["getex"]


def test_none_when_turned_off(valkey_cluster: ValkeyCluster) -> None:
    url = cluster_url(valkey_cluster) + "?direct_connections=0"
    with valkeyaside.Client(url, client_name=NAME) as client:
        node = valkey_cluster.primaries()[2]
        key = keys_on(valkey_cluster, node, 1, "direct")[0]
        assert client.execute("GET", key) is None
        assert direct(node) == []
        assert [row["cmd"] for row in tracked(node)] == ["get"]


def test_a_thread_never_waits_for_a_socket_and_the_bound_holds(
    valkey_cluster: ValkeyCluster
) -> None:
    keys = [f"direct:bound:{i}" for i in range(300)]
    for key in keys:
        valkey_cluster.key_owner(key).command("SET", key, key)
    wrong: List[Any] = []

    def reader(client: valkeyaside.Client) -> None:
        for key in keys:
            got = client.execute("GET", key)
            if got != key.encode():
                wrong.append((key, got))

    with valkeyaside.Client(cluster_url(valkey_cluster), client_name=NAME,
                            direct_connections=1) as client:
        threads = [threading.Thread(target=reader, args=(client,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        assert wrong == []
        for node in valkey_cluster.primaries():
            assert len(direct(node)) == 1, node
            assert len(tracked(node)) == 1, node


def test_a_socket_the_server_closed_is_replaced_and_the_read_answered(
    valkey_cluster: ValkeyCluster, client: valkeyaside.Client
) -> None:
    node = valkey_cluster.primaries()[0]
    key = keys_on(valkey_cluster, node, 1, "direct")[0]
    assert client.execute("SET", key, "v") == "OK"  # connects the tracked link first
    assert client.execute("GET", key) == b"v"
    [first] = direct(node)
    assert node.command("CLIENT", "KILL", "ID", first["id"]) == 1
    wait_until(lambda: direct(node) == [], 10, "the direct socket closed")
    assert client.execute("GET", key) == b"v"  # over the tracked link, once
    assert client.execute("GET", key) == b"v"
    [second] = direct(node)
    assert second["id"] != first["id"]
    assert client.execute("STRLEN", key) == 1


@pytest.mark.parametrize("options, pause_ms, error, match, bound", [
    # socket_timeout first: the reply is overdue
    ({"socket_timeout": 0.5}, 3000, valkeyaside.TimeoutError, "within 0.5 s", 2.5),
    # the health check first (0.2 s + 1 s; socket_timeout 10 s): the server is dead
    ({"health_check_interval": 0.2}, 5000, valkeyaside.ConnectionError,
     r"sent nothing for 1\.2 s", 4),
])
def test_a_silent_server_is_reported_as_the_tracked_link_reports_it(
    valkey_cluster: ValkeyCluster, options: Dict[str, float], pause_ms: int,
    error: type, match: str, bound: float
) -> None:
    node = valkey_cluster.primaries()[1]
    key = keys_on(valkey_cluster, node, 1, "direct")[0]
    node.command("SET", key, "v")
    with valkeyaside.Client(cluster_url(valkey_cluster), client_name=NAME,
                            **options) as client:
        assert client.execute("GET", key) == b"v"  # connects the tracked link
        assert client.execute("GET", key) == b"v"
        node.command("CLIENT", "PAUSE", pause_ms, "ALL")
        try:
            start = time.monotonic()
            with pytest.raises(error, match=match):
                client.execute("GET", key)
            assert time.monotonic() - start < bound  # well before the pause ends
        finally:
            node.command("CLIENT", "UNPAUSE")
        assert client.execute("GET", key) == b"v"


def test_moved_and_ask_on_a_direct_socket_are_followed_by_the_tracked_link(
    valkey_cluster: ValkeyCluster, client: valkeyaside.Client
) -> None:
    source = valkey_cluster.primaries()[0]
    target = other_primary(valkey_cluster, source)
    key = keys_on(valkey_cluster, source, 1, "direct")[0]
    absent = f"{{{key}}}:absent"
    source.command("SET", key, "moved with its slot")
    assert client.execute("GET", key) == b"moved with its slot"
    seen: List[Any] = []

    def hook(step: str) -> None:
        if step == "migrating":  # an absent key of the slot: the source answers ASK
            seen.append(client.execute("GET", absent))
            seen.append(client.connection.redirections.get("ASK", 0))

    valkey_cluster.migrate_slot(key_slot(key), target, hook)
    assert seen == [None, 1]
    assert client.execute("GET", key) == b"moved with its slot"  # MOVED, then the target
    assert client.connection.redirections.get("MOVED", 0) >= 1
    assert client.execute("GET", key) == b"moved with its slot"
    assert [row["cmd"] for row in direct(target)] == ["get"]


def test_closing_the_client_closes_its_direct_sockets(valkey_cluster: ValkeyCluster) -> None:
    client = valkeyaside.Client(cluster_url(valkey_cluster), client_name=NAME)
    for node in valkey_cluster.primaries():
        key = keys_on(valkey_cluster, node, 1, "direct")[0]
        for _ in range(2):  # the first connects the node's tracked link
            assert client.execute("EXISTS", key) == 0
        assert len(direct(node)) == 1
    client.close()
    wait_until(lambda: all(connections(node) == [] for node in valkey_cluster.primaries()),
               10, "every socket of the client closed")


def test_the_option() -> None:
    assert ConnectionOptions().direct_connections == 8
    assert ConnectionOptions.from_url("valkey://h?direct_connections=2").direct_connections == 2
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="direct_connections"):
            ConnectionOptions(direct_connections=bad)  # type: ignore[arg-type]
