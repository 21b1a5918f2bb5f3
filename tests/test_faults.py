"""Faults on the wire and on the server, against the whole get algorithm.

Every scenario checks the same three things: no stale value is returned,
no lock is left behind (once the fault clears and the gets settle, the key
holds a value or nothing, never a ``valkeyid:`` placeholder, as a direct
server connection sees it), and no call runs past its bound.

The network faults come from :class:`faultproxy.FaultProxy` between the
client and a real server. ``FAULT_REPEAT=20 pytest tests/test_faults.py``
runs the whole matrix 20 times.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import threading
import time
from typing import Any, Callable, Iterator, Optional

import frontends
import pytest
from faultproxy import FaultProxy, ProxyConnection
from helpers import wait_until
from server import RawConnection, ValkeyServer

import valkeyaside
from valkeyaside import Client
from valkeyaside.lock import ACQUIRE, DELETE_IF_HOLDER, SET_IF_HOLDER, SET_IF_HOLDER_MANY
from valkeyaside.resp3 import _stream

REPEAT = max(1, int(os.environ.get("FAULT_REPEAT", "1")))
PLACEHOLDER = valkeyaside.PLACEHOLDER_PREFIX.encode()
KEY = "fault:key"
TTL = 30.0  # long enough that a stale local entry would still be served
CLIENT_TTL = 1.0  # markers die fast, so takeovers happen within the test
SLACK = 3.0  # added to every time bound: the test machine may be slow and shared
GET_TIMEOUT = 5.0  # of each get under load
LOCK_MODES = [pytest.param(False, id="setnxget"), pytest.param(True, id="lualock")]

#: SET key marker NX GET PX ttl, as the client writes it.
SET_NX_GET = re.compile(
    rb"\$3\r\nSET\r\n\$\d+\r\n[^\r]*\r\n\$\d+\r\nvalkeyid:[0-9a-f]+\r\n\$2\r\nNX\r\n"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if REPEAT > 1 and "fault_round" in metafunc.fixturenames:
        metafunc.parametrize("fault_round", range(REPEAT), ids=lambda n: f"round{n}")


@pytest.fixture(autouse=True)
def fault_round() -> int:
    """Which repetition of the matrix this is (``FAULT_REPEAT`` sets how many)."""
    return 0


def lock_pattern(use_lua_lock: bool) -> re.Pattern[bytes]:
    """The bytes of the lock attempt: SET NX GET, or EVALSHA of the acquire script."""
    if use_lua_lock:
        return re.compile(re.escape(ACQUIRE.sha.encode()))
    return SET_NX_GET


FILL_PATTERN = re.compile(re.escape(SET_IF_HOLDER.sha.encode()))
#: The fills of a get_many: SET ... IFEQ (Valkey 8.1+), else the many-key script.
BATCH_FILL_PATTERN = re.compile(rb"IFEQ|" + re.escape(SET_IF_HOLDER_MANY.sha.encode()))


# -- test utilities ------------------------------------------------------------


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """The block (which may raise what a ``pytest.raises`` inside expects) ends in time."""
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s, bound {seconds:.2f} s"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition with no event to await (a server-side expiry, a counter)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


class Loader:
    """A loader that counts its calls and returns a new value each time."""

    def __init__(self, prefix: str, block: Optional[threading.Event] = None,
                 block_for: float = 10.0, fail: bool = False) -> None:
        self.prefix = prefix
        self.block = block
        self.block_for = block_for
        self.fail = fail
        self.calls = 0
        self.values: list[str] = []
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> str:
        with self._lock:
            self.calls += 1
            value = f"{self.prefix}:{key}:{self.calls}"
            self.values.append(value)
        self.entered.set()
        if self.block is not None:
            self.block.wait(self.block_for)
        if self.fail:
            raise LookupError(f"{self.prefix} failed to load {key}")
        return value


class Worker(threading.Thread):
    """Runs one call on its own thread and keeps its result or exception."""

    def __init__(self, target: Callable[[], Any], name: str = "fault-worker") -> None:
        super().__init__(name=name, daemon=True)
        self._call = target
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float) -> Any:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


class Rig:
    """A server, optionally a proxy in front of it, and the clients of one test."""

    def __init__(self, server: ValkeyServer, proxy: Optional[FaultProxy], front: str) -> None:
        self.server = server
        self.front = front  # the front end its clients are of: "sync" or "async"
        self._proxy = proxy
        self._clients: list[Client] = []
        self._admin: Optional[RawConnection] = None
        self.preload_scripts()

    @property
    def proxy(self) -> FaultProxy:
        assert self._proxy is not None
        return self._proxy

    def preload_scripts(self) -> None:
        """So the lock scripts go out as EVALSHA (what the patterns aim at)."""
        for script in (ACQUIRE, SET_IF_HOLDER, DELETE_IF_HOLDER):
            self.server.command("SCRIPT", "LOAD", script.source)

    def client(self, *, direct: bool = False, **options: Any) -> Client:
        options.setdefault("socket_timeout", 2.0)
        options.setdefault("client_ttl", CLIENT_TTL)
        url = self.server.url if direct or self._proxy is None else self.proxy.url
        client: Client = frontends.make(self.front, url, **options)
        self._clients.append(client)
        return client

    @property
    def admin(self) -> RawConnection:
        """A direct connection to the server, for the test's own reads and writes."""
        if self._admin is None:
            self._admin = self.server.connect()
        return self._admin

    def raw(self, key: str) -> Optional[bytes]:
        value: Optional[bytes] = self.admin.execute("GET", key)
        return value

    def assert_no_placeholder(self, keys: list[str]) -> None:
        for key in keys:
            value = self.raw(key)
            assert value is None or not value.startswith(PLACEHOLDER), (
                f"{key} still holds the placeholder {value!r}"
            )

    def settle(self, client: Client, keys: list[str], loader: Callable[[str], str]) -> None:
        """Let every key get a value (taking over dead holders), within bounds."""
        for key in keys:
            with within(CLIENT_TTL + 2 * SLACK):
                value = client.get(key, TTL, loader, timeout=CLIENT_TTL + SLACK)
            assert value is not None and not value.startswith(valkeyaside.PLACEHOLDER_PREFIX)
        self.assert_no_placeholder(keys)

    def assert_coherent(self, client: Client, keys: list[str]) -> None:
        """With no write in flight, ``get`` answers what the server holds.

        The PING goes after every write the test made: on the client's
        connection, the invalidations of those writes come before its reply.
        """
        assert client.execute("PING") == "PONG"
        for key in keys:
            raw = self.raw(key)
            expected = None if raw is None or raw == valkeyaside.TOMBSTONE else raw.decode()
            with within(SLACK):
                got = client.get(key, TTL, timeout=SLACK)
            assert got == expected, f"stale read of {key}: got {got!r}, server has {raw!r}"

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.clear()
        try:
            for client in self._clients:
                with within(2 * SLACK):
                    frontends.shutdown(client)
        finally:
            if self._admin is not None:
                self._admin.close()
            if self._proxy is not None:
                self._proxy.close()
                assert self._proxy.threads_alive() == 0, "the proxy left threads running"


@pytest.fixture
def rig(clean_server: ValkeyServer, front: str) -> Iterator[Rig]:
    proxy = FaultProxy(clean_server.port)
    try:
        rig = Rig(clean_server, proxy, front)
    except BaseException:
        proxy.close()
        raise
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def fresh_rig(fresh_server: ValkeyServer, front: str) -> Iterator[Rig]:
    rig = Rig(fresh_server, None, front)
    try:
        yield rig
    finally:
        rig.close()


def connect_through(rig: Rig, client: Client) -> ProxyConnection:
    """Make ``client`` connect now; return its proxied connection."""
    before = rig.proxy.accepted
    assert client.execute("PING") == "PONG"
    assert rig.proxy.accepted == before + 1
    return rig.proxy.connections[-1]


# -- the proxy itself ------------------------------------------------------------


def _raw_exchange(sock: socket.socket, payload: bytes, expect: int) -> bytes:
    """Send, then read up to ``expect`` bytes or until the connection ends."""
    sock.sendall(payload)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while len(data) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_proxy_splits_resets_mid_frame_and_fires_on_patterns(clean_server: ValkeyServer) -> None:
    with FaultProxy(clean_server.port) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            proxy.split_writes(1)
            assert _raw_exchange(sock, b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n", 11) == (
                b"$5\r\nhello\r\n")
            (conn,) = proxy.connections
            assert conn.writes["s2c"] == 11  # one byte per write
            proxy.split_writes(0)
            conn.reset(after_bytes=4)
            data = _raw_exchange(sock, b"*2\r\n$4\r\nECHO\r\n$5\r\nworld\r\n", 11)
            assert data == b"$5\r\n"  # cut mid-frame, then RST
            assert conn.wait_closed(5) and conn.was_reset
            with pytest.raises(OSError):
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if not sock.recv(64):
                    raise ConnectionResetError("closed")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            trigger = proxy.on_pattern("fault:second", "reset")
            assert _raw_exchange(
                sock, b"*3\r\n$3\r\nSET\r\n$11\r\nfault:first\r\n$1\r\n1\r\n", 5
            ) == b"+OK\r\n"
            assert not trigger.fired.is_set()
            assert _raw_exchange(
                sock, b"*3\r\n$3\r\nSET\r\n$12\r\nfault:second\r\n$1\r\n1\r\n", 5
            ) == b""
            assert trigger.wait(5) and trigger.hits == 1
        # The second command was cut before its key: the server never ran it.
        assert clean_server.command("EXISTS", "fault:first", "fault:second") == 1
    assert proxy.threads_alive() == 0


def test_proxy_stall_resume_delay(clean_server: ValkeyServer) -> None:
    with FaultProxy(clean_server.port) as proxy, socket.create_connection(
        ("127.0.0.1", proxy.port), timeout=5
    ) as sock:
        proxy.stall("s2c")
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(64)
        sock.settimeout(5)
        proxy.resume()
        assert sock.recv(64) == b"+PONG\r\n"
        proxy.delay(0.3)
        start = time.monotonic()
        assert _raw_exchange(sock, b"*1\r\n$4\r\nPING\r\n", 7) == b"+PONG\r\n"
        assert time.monotonic() - start >= 0.5  # held once each way
        proxy.delay(0)
        (conn,) = proxy.connections
        proxy.drop("c2s")
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        wait_for(lambda: conn.dropped["c2s"] == 14, 5, "the proxy to drop the PING")
        proxy.resume()
        assert _raw_exchange(sock, b"*1\r\n$4\r\nPING\r\n", 7) == b"+PONG\r\n"
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(64)  # the dropped PING was never answered


# -- resets aimed at each step of get ---------------------------------------------


@pytest.mark.parametrize("cut", ["before", "after", "mid-reply"])
def test_reset_during_cached_read(rig: Rig, cut: str) -> None:
    rig.admin.execute("SET", KEY, "v1")
    client = rig.client()
    loader = Loader("load")
    if cut == "mid-reply":
        # Armed before the read goes out: its reply is cut after "+OK\r\n+OK".
        trigger = rig.proxy.on_pattern(
            "CACHING", lambda conn: conn.reset(after_bytes=9, direction="s2c"))
    else:
        trigger = rig.proxy.on_pattern("CACHING", "reset", when=cut)
    with within(SLACK), pytest.raises(valkeyaside.ConnectionError):
        client.get(KEY, TTL, loader, timeout=SLACK)
    assert trigger.hits == 1
    assert loader.calls == 0
    rig.admin.execute("SET", KEY, "v2")  # written while the client was cut off
    with within(SLACK):
        assert client.get(KEY, TTL, loader, timeout=SLACK) == "v2"
    rig.admin.execute("SET", KEY, "v3")  # tracking works on the new connection
    rig.assert_coherent(client, [KEY])
    assert loader.calls == 0
    rig.assert_no_placeholder([KEY])


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_reset_during_lock_attempt(rig: Rig, use_lua_lock: bool, when: str) -> None:
    # A marker that lives long enough to tell "taken over at once" from "taken
    # over when the refresher deletes the retired marker" (client_ttl / 2 = 3 s).
    client_ttl = 6.0
    client = rig.client(use_lua_lock=use_lua_lock, client_ttl=client_ttl)
    other = rig.client(direct=True, use_lua_lock=use_lua_lock, client_ttl=client_ttl)
    loader = Loader("load")
    trigger = rig.proxy.on_pattern(lock_pattern(use_lua_lock), "reset", when=when)
    with within(SLACK), pytest.raises(valkeyaside.ConnectionError):
        client.get(KEY, TTL, loader, timeout=SLACK)
    assert trigger.hits == 1
    assert loader.calls == 0
    # The client cannot know whether its lock attempt ran (with when="after"
    # the server ran it). Another client's get must not wait on it: the key is
    # free, or its placeholder names a marker already gone, within a few
    # round trips, not only once the retired marker is deleted or expires.
    other_loader = Loader("other")
    started = time.monotonic()
    value = other.get(KEY, TTL, other_loader, timeout=client_ttl + SLACK)
    waited = time.monotonic() - started
    assert other_loader.calls == 1 and value == other_loader.values[0]
    assert rig.raw(KEY) == value.encode()
    with within(SLACK):
        assert client.get(KEY, TTL, loader, timeout=SLACK) == value
    assert loader.calls == 0
    rig.assert_coherent(client, [KEY])
    assert waited < 2.0, (
        f"another client waited {waited:.2f} s on the lock left by the interrupted attempt"
    )


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_reset_during_fill(rig: Rig, use_lua_lock: bool, when: str) -> None:
    client = rig.client(use_lua_lock=use_lua_lock)
    loader = Loader("load")
    trigger = rig.proxy.on_pattern(FILL_PATTERN, "reset", when=when)
    with within(SLACK), pytest.raises(valkeyaside.ConnectionError):
        client.get(KEY, TTL, loader, timeout=SLACK)
    assert trigger.hits == 1
    assert loader.calls == 1
    # The lock is gone already: released on the new connection, or filled.
    raw = rig.raw(KEY)
    if when == "before":
        assert raw is None, f"the fill never ran, so the lock should be released: {raw!r}"
    else:
        assert raw in (None, loader.values[0].encode())
    with within(SLACK):
        value = client.get(KEY, TTL, loader, timeout=SLACK)
    assert value == loader.values[-1]
    assert rig.raw(KEY) == value.encode()
    rig.assert_coherent(client, [KEY])


@pytest.mark.parametrize("when", ["before", "after"])
def test_reset_during_a_batch_fill(rig: Rig, when: str) -> None:
    """The fills of a ``get_many`` (and the read written with them, which would
    hand the values over) are cut off: ConnectionError, no lock left behind,
    nothing kept locally that the server does not hold, and the next call
    loads only what is missing."""
    client = rig.client()
    keys = ["batch:a", "batch:b", "batch:c"]
    calls: list[list[str]] = []

    def load(missing: list[str]) -> dict[str, str]:
        calls.append(sorted(missing))
        return {key: f"v{len(calls)}:{key}" for key in missing}

    trigger = rig.proxy.on_pattern(BATCH_FILL_PATTERN, "reset", when=when)
    with within(SLACK), pytest.raises(valkeyaside.ConnectionError):
        client.get_many(keys, TTL, load, timeout=SLACK)
    assert trigger.hits == 1
    assert calls == [keys]
    raws = [rig.raw(key) for key in keys]
    if when == "before":
        assert raws == [None] * 3, f"the fills never ran, so the locks should be released: {raws}"
    else:
        assert all(raw in (None, f"v1:{key}".encode()) for raw, key in zip(raws, keys)), raws
    with within(SLACK):
        values = client.get_many(keys, TTL, load, timeout=SLACK)
    assert values == {key: rig.raw(key).decode() for key in keys}  # type: ignore[union-attr]
    assert calls[1:] == ([[key for key, raw in zip(keys, raws) if raw is None]]
                         if None in raws else [])
    rig.assert_coherent(client, keys)


@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_holder_reset_while_loading_waiter_takes_over(rig: Rig, use_lua_lock: bool) -> None:
    holder = rig.client(use_lua_lock=use_lua_lock)
    waiter = rig.client(direct=True, use_lua_lock=use_lua_lock)
    holder_link = connect_through(rig, holder)
    gate = threading.Event()
    slow = Loader("holder", block=gate)
    holding = Worker(lambda: holder.get(KEY, TTL, slow, timeout=20), "holder")
    holding.start()
    assert slow.entered.wait(SLACK)
    placeholder = rig.raw(KEY)
    assert placeholder is not None and placeholder.startswith(PLACEHOLDER)
    holder_link.reset()
    fast = Loader("waiter")
    with within(CLIENT_TTL + 2 * SLACK):
        taken = waiter.get(KEY, TTL, fast, timeout=CLIENT_TTL + 2 * SLACK)
    assert taken == fast.values[0] and fast.calls == 1
    assert waiter.stats()["takeovers"] >= 1
    gate.set()
    late = holding.outcome(SLACK)
    # The holder answers with what its own loader made, but its fill is refused.
    assert late in (slow.values[0], taken)
    assert rig.raw(KEY) == taken.encode(), "the late fill overwrote the newer value"
    rig.assert_coherent(holder, [KEY])
    rig.assert_coherent(waiter, [KEY])


@pytest.mark.parametrize("front", ["sync"])  # the threaded transport's reader race
def test_reconnect_racing_the_lost_links_cleanup_does_not_serve_stale(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller may reconnect while the reader of the lost link is still in
    ``die()`` (descheduled between marking the link dead and running the
    disconnect handlers). The entries cached under the lost link's tracking
    must still be dropped: no invalidation will ever come for them."""
    client = rig.client()
    rig.admin.execute("SET", KEY, "v1")
    assert client.get(KEY, TTL) == "v1"  # cached, tracked on the first connection
    first_reader = f"valkeyaside-reader-{client.connection.generation}"
    in_close = threading.Event()
    proceed = threading.Event()
    plain_close = _stream._PlainStream.close

    def descheduled_close(self: Any) -> None:
        # The lost link's reader thread pauses here, as a busy scheduler may pause it.
        if threading.current_thread().name == first_reader:
            in_close.set()
            proceed.wait(2 * SLACK)
        plain_close(self)

    monkeypatch.setattr(_stream._PlainStream, "close", descheduled_close)
    rig.proxy.reset()
    assert in_close.wait(SLACK), "the reader did not see the reset"
    # Another thread reconnects meanwhile: the client may let it through or
    # hold it until the teardown is done; either way what follows is coherent.
    pings: list[object] = []
    pinger = threading.Thread(target=lambda: pings.append(client.execute("PING")))
    pinger.start()
    pinger.join(0.5)  # returns at once when the reconnect is let through
    proceed.set()
    pinger.join(SLACK)
    assert pings == ["PONG"]
    for thread in threading.enumerate():
        if thread.name == first_reader:
            thread.join(SLACK)
            assert not thread.is_alive()
    rig.admin.execute("SET", KEY, "v2")
    rig.assert_coherent(client, [KEY])


# -- stalls and delays --------------------------------------------------------------


@pytest.mark.parametrize("fault", ["stall-c2s", "stall-s2c", "stall-both", "delay"])
def test_stall_past_socket_timeout_ends_the_link_then_recovers(rig: Rig, fault: str) -> None:
    # A reply overdue past socket_timeout with nothing read meanwhile: the link
    # is dead (test_deadlink measures the bounds). Calls fail, none hangs, the
    # cache is dropped, and once the fault clears the client reconnects.
    socket_timeout = 0.5
    # The calls after the first connect again, into the fault: connect_timeout bounds them.
    client = rig.client(socket_timeout=socket_timeout, connect_timeout=socket_timeout)
    rig.admin.execute("SET", KEY, "v1")
    connect_through(rig, client)
    lost = threading.Event()
    client.connection.add_disconnect_handler(lambda _exc: lost.set())
    if fault == "delay":
        rig.proxy.delay(socket_timeout * 3)
    else:
        rig.proxy.stall(fault.split("-")[1])
    failures = (valkeyaside.TimeoutError, valkeyaside.ConnectionError)
    with within(socket_timeout + SLACK), pytest.raises(failures):
        client.get(KEY, TTL, timeout=10)
    assert lost.wait(socket_timeout + SLACK), "the overdue link was not closed"
    with within(socket_timeout + SLACK), pytest.raises(failures):
        client.execute("ECHO", "lost-1")
    with within(socket_timeout + SLACK), pytest.raises(failures):
        client.delete("fault:other")
    rig.proxy.clear()

    def echoes(tag: int) -> None:
        for i in range(25):
            payload = f"echo-{tag}-{i}"
            assert client.execute("ECHO", payload) == payload.encode()

    with within(2 * SLACK):  # the first call may wait out the reconnect backoff
        assert client.execute("ECHO", "back") == b"back"
    workers = [Worker(lambda tag=tag: echoes(tag), f"echo-{tag}") for tag in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.outcome(2 * SLACK)
    assert client.get(KEY, TTL, timeout=SLACK) == "v1"
    rig.admin.execute("SET", KEY, "v2")
    rig.assert_coherent(client, [KEY])
    assert rig.proxy.accepted >= 2, "the dead link was replaced"


def test_write_to_a_server_that_stopped_reading_fails_within_socket_timeout(rig: Rig) -> None:
    # The kernel bounds each send (SO_SNDTIMEO): a blocked writer gives up,
    # the connection is dropped (a partial write leaves the stream unusable),
    # and the next call connects afresh.
    socket_timeout = 0.5
    client = rig.client(socket_timeout=socket_timeout)
    connect_through(rig, client)
    rig.proxy.stall("c2s")
    big = b"x" * (64 * 1024 * 1024)  # far more than the socket buffers hold
    with within(socket_timeout + SLACK), pytest.raises(
        valkeyaside.ConnectionError, match=r"write stalled for over 0\.5 s"
    ):
        client.execute("SET", "fault:big", big)
    rig.proxy.clear()
    assert client.execute("ECHO", "after") == b"after"
    assert rig.proxy.accepted == 2, "a new connection replaced the one with the broken write"
    assert rig.admin.execute("EXISTS", "fault:big") == 0


@pytest.mark.parametrize("fresh", [True, False], ids=["first-connect", "reconnect"])
def test_get_deadline_bounds_a_stalled_connect(rig: Rig, fresh: bool) -> None:
    """The server accepts the TCP connection but the handshake gets no answer:
    a get with a short timeout ends at its deadline, not at connect_timeout."""
    client = rig.client(connect_timeout=5.0)
    lost = threading.Event()
    client.connection.add_disconnect_handler(lambda _exc: lost.set())
    if not fresh:
        connect_through(rig, client)
    rig.proxy.stall()
    if not fresh:
        rig.proxy.reset()  # the next call must connect again, into the stall
        assert lost.wait(SLACK)
    loader = Loader("load")
    started = time.monotonic()
    with pytest.raises((valkeyaside.TimeoutError, valkeyaside.ConnectionError)):
        client.get(KEY, TTL, loader, timeout=0.5)
    elapsed = time.monotonic() - started
    rig.proxy.clear()
    assert loader.calls == 0
    assert elapsed < 0.5 + 1.5, f"get(timeout=0.5) took {elapsed:.2f} s (connect_timeout is 5)"
    with within(SLACK):
        assert client.get(KEY, TTL, loader, timeout=SLACK) == loader.values[0]
    rig.assert_no_placeholder([KEY])


@pytest.mark.parametrize("stage", ["lock-c2s", "lock-s2c", "fill-c2s", "fill-s2c"])
@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_stall_during_lock_or_fill_leaves_no_lock(rig: Rig, use_lua_lock: bool,
                                                  stage: str) -> None:
    socket_timeout = 0.5
    # The link may be closed as overdue; the release then connects again,
    # into the stall: connect_timeout bounds that.
    client = rig.client(use_lua_lock=use_lua_lock, socket_timeout=socket_timeout,
                        connect_timeout=socket_timeout)
    step, direction = stage.split("-")
    pattern = lock_pattern(use_lua_lock) if step == "lock" else FILL_PATTERN
    # c2s: the command waits in the proxy; s2c: it ran, its reply waits.
    trigger = rig.proxy.on_pattern(pattern, "stall-both",
                                   when="before" if direction == "c2s" else "after")
    loader = Loader("load")
    # The get times out, or the link is closed as overdue first: either way it fails.
    with within(3 * socket_timeout + SLACK), pytest.raises(
        (valkeyaside.TimeoutError, valkeyaside.ConnectionError)
    ):
        client.get(KEY, TTL, loader, timeout=10)
    assert trigger.hits == 1
    assert loader.calls == (0 if step == "lock" else 1)
    rig.proxy.resume()
    # One round trip after the fault cleared. The stalled link may yet be closed
    # as overdue (its silence began with the stall) just as the PING is queued
    # on it, which then fails as any call in flight does: the next call goes
    # over a new link.
    try:
        assert client.execute("PING") == "PONG"
    except valkeyaside.ConnectionError:
        assert client.execute("PING") == "PONG"
    # The lock (which may run only now, as the proxy lets it through) is
    # released: its release was queued behind it and ran before the PING's
    # reply, unless the link was closed as overdue first; then the marker's
    # keeper releases it over a new connection, retrying each second meanwhile.
    wait_until(lambda: not (rig.raw(KEY) or b"").startswith(PLACEHOLDER), SLACK,
               "the lock released")
    other = rig.client(direct=True, use_lua_lock=use_lua_lock)
    with within(SLACK):
        value = other.get(KEY, TTL, Loader("other"), timeout=SLACK)
    assert rig.raw(KEY) == value.encode()
    rig.assert_coherent(client, [KEY])


# -- long loaders, short deadlines ------------------------------------------------


@pytest.mark.parametrize("marker", ["refreshed", "expired"])
@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_marker_expiring_during_long_loader(rig: Rig, use_lua_lock: bool, marker: str) -> None:
    holder = rig.client(use_lua_lock=use_lua_lock, socket_timeout=5.0)
    waiter = rig.client(direct=True, use_lua_lock=use_lua_lock)
    connect_through(rig, holder)
    gate = threading.Event()
    slow = Loader("holder", block=gate, block_for=1.6 * CLIENT_TTL)  # past client_ttl
    holding = Worker(lambda: holder.get(KEY, TTL, slow, timeout=20), "holder")
    holding.start()
    assert slow.entered.wait(SLACK)
    placeholder = rig.raw(KEY)
    assert placeholder is not None and placeholder.startswith(PLACEHOLDER)
    if marker == "expired":
        # The holder's refresher can no longer reach the server; its marker expires.
        rig.proxy.stall("c2s")
        wait_for(lambda: rig.admin.execute("EXISTS", placeholder) == 0, CLIENT_TTL + SLACK,
                 "the holder's marker to expire")
    second = Loader("waiter")
    with within(2 * CLIENT_TTL + 2 * SLACK):
        seen = waiter.get(KEY, TTL, second, timeout=2 * CLIENT_TTL + 2 * SLACK)
    if marker == "expired":
        assert second.calls == 1 and seen == second.values[0]
        rig.proxy.resume()
    gate.set()
    loaded = holding.outcome(2 * SLACK)
    assert loaded == slow.values[0]
    for value in (seen, loaded):
        assert not value.startswith(valkeyaside.PLACEHOLDER_PREFIX)
    assert seen in (slow.values[0], *second.values)
    stored = rig.raw(KEY)
    assert stored == seen.encode(), f"stored {stored!r}, the waiter saw {seen!r}"
    rig.assert_coherent(holder, [KEY])
    rig.assert_coherent(waiter, [KEY])


@pytest.mark.parametrize("holder_ends", ["fills", "raises"])
@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_waiter_deadline_then_holder_finishes(rig: Rig, use_lua_lock: bool,
                                              holder_ends: str) -> None:
    holder = rig.client(use_lua_lock=use_lua_lock)
    waiter = rig.client(direct=True, use_lua_lock=use_lua_lock)
    gate = threading.Event()
    slow = Loader("holder", block=gate, fail=holder_ends == "raises")
    holding = Worker(lambda: holder.get(KEY, TTL, slow, timeout=20), "holder")
    holding.start()
    assert slow.entered.wait(SLACK)
    impatient = Loader("impatient")
    with within(0.3 + SLACK), pytest.raises(valkeyaside.TimeoutError):
        waiter.get(KEY, TTL, impatient, timeout=0.3)
    assert impatient.calls == 0
    raw = rig.raw(KEY)
    assert raw is not None and raw.startswith(PLACEHOLDER)  # the holder still holds it
    gate.set()
    if holder_ends == "fills":
        assert holding.outcome(SLACK) == slow.values[0]
        assert rig.raw(KEY) == slow.values[0].encode()
    else:
        with pytest.raises(LookupError):
            holding.outcome(SLACK)
        assert rig.raw(KEY) is None, "the failed loader's lock was not released"
    later = Loader("later")
    with within(SLACK):
        value = waiter.get(KEY, TTL, later, timeout=SLACK)
    assert value == (slow.values[0] if holder_ends == "fills" else later.values[0])
    rig.assert_coherent(holder, [KEY])
    rig.assert_coherent(waiter, [KEY])


def test_holder_deadline_shorter_than_its_loader(rig: Rig) -> None:
    """A loader cannot be interrupted: the get ends when it does, with its value stored."""
    client = rig.client()
    slow = Loader("slow", block=threading.Event(), block_for=0.6)
    with within(0.6 + SLACK):
        value = client.get(KEY, TTL, slow, timeout=0.2)
    assert value == slow.values[0]
    assert rig.raw(KEY) == value.encode()


# -- load under faults ------------------------------------------------------------------


def _epoch_of(value: str) -> int:
    return int(value.rsplit("@", 1)[1])


@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_server_restart_under_load(fresh_rig: Rig, use_lua_lock: bool) -> None:
    server = fresh_rig.server
    clients = [fresh_rig.client(use_lua_lock=use_lua_lock) for _ in range(2)]
    lost = [threading.Event() for _ in clients]
    for client, event in zip(clients, lost):
        client.connection.add_disconnect_handler(lambda _exc, event=event: event.set())
    keys = [f"restart:{i}" for i in range(12)]
    epoch = [0]  # the server's life the loaders tag their values with
    fence = [0]  # every client has seen the server of this epoch go (caches flushed)

    def loader(key: str) -> str:
        return f"{key}@{epoch[0]}"

    stop = threading.Event()
    stale: list[str] = []
    slow: list[str] = []
    successes = [0, 0, 0]
    unexpected: list[BaseException] = []

    def work(n: int) -> None:
        client = clients[n % len(clients)]
        rnd = random.Random(n)
        while not stop.is_set():
            key = rnd.choice(keys)
            started_after = fence[0]
            started = time.monotonic()
            try:
                value = client.get(key, TTL, loader, timeout=GET_TIMEOUT)
            except (valkeyaside.ConnectionError, valkeyaside.TimeoutError):
                continue
            except BaseException as exc:
                unexpected.append(exc)
                return
            finally:
                elapsed = time.monotonic() - started
                if elapsed > GET_TIMEOUT + SLACK:
                    slow.append(f"get({key!r}) took {elapsed:.2f} s")
            if value is None or _epoch_of(value) < started_after:
                stale.append(f"{value!r} from a get started after epoch {started_after}")
            successes[started_after] += 1

    workers = [Worker(lambda n=n: work(n), f"load-{n}") for n in range(8)]
    for worker in workers:
        worker.start()
    try:
        for restart in (1, 2):
            wait_for(lambda done=restart - 1: successes[done] >= 20, 10, "gets to succeed")
            wait_for(lambda: all(client.connection.connected for client in clients), 10,
                     "every client to be connected")
            for event in lost:
                event.clear()
            server.stop()
            epoch[0] = restart
            for event in lost:
                assert event.wait(SLACK), "a client did not notice the server going away"
            fence[0] = restart
            server.start()
        wait_for(lambda: successes[2] >= 20, 10, "gets to succeed after the restarts")
    finally:
        stop.set()
        for worker in workers:
            worker.outcome(2 * SLACK)
    assert not unexpected, unexpected[:3]
    assert not stale, stale[:5]
    assert not slow, slow[:5]
    fresh_rig.settle(clients[0], keys, loader)
    for key in keys:
        value = fresh_rig.raw(key)
        assert value is not None and _epoch_of(value.decode()) == 2
    for client in clients:
        fresh_rig.assert_coherent(client, keys)


def _random_sets(
    admin: RawConnection, keys: list[str], pause: float
) -> Callable[[random.Random], None]:
    """A writer for ``_run_load``: SET one of ``keys`` to a fresh value, then pause."""

    def write(rnd: random.Random) -> None:
        admin.execute("SET", rnd.choice(keys), f"writer:{rnd.random()}")
        time.sleep(pause)

    return write


def _run_load(
    rig: Rig,
    clients: list[Client],
    keys: list[str],
    seconds: float,
    disturb: Callable[[random.Random], None],
    *,
    threads: int = 4,
    client_writes: bool = False,
) -> dict[str, int]:
    """Gets (and, if asked, deletes and writes) from several threads while ``disturb`` runs.

    Each returned value must come from a loader or a writer, never be a
    placeholder; only connection and timeout errors are tolerated.
    """
    stop = threading.Event()
    counts = {"gets": 0, "errors": 0, "disturbances": 0}
    bad: list[str] = []
    slow: list[str] = []
    unexpected: list[BaseException] = []
    counter = iter(range(10**9))
    loader_prefix = "load:"

    def loader(key: str) -> str:
        return f"{loader_prefix}{key}:{next(counter)}"

    def work(n: int) -> None:
        client = clients[n % len(clients)]
        rnd = random.Random(n * 7919)
        while not stop.is_set():
            key = rnd.choice(keys)
            roll = rnd.random()
            started = time.monotonic()
            try:
                if client_writes and roll < 0.1:
                    client.delete(key)
                elif client_writes and roll < 0.2:
                    client.execute("SET", key, f"client:{key}:{next(counter)}", "PX", 60000)
                else:
                    value = client.get(key, TTL, loader, timeout=GET_TIMEOUT)
                    counts["gets"] += 1
                    if value is None or not value.startswith(("load:", "client:", "writer:")):
                        bad.append(f"{key}: {value!r}")
            except (valkeyaside.ConnectionError, valkeyaside.TimeoutError):
                counts["errors"] += 1
            except BaseException as exc:
                unexpected.append(exc)
                return
            finally:
                elapsed = time.monotonic() - started
                if elapsed > GET_TIMEOUT + SLACK:
                    slow.append(f"{key}: a call took {elapsed:.2f} s")

    def disturber() -> None:
        rnd = random.Random(os.getpid())
        while not stop.is_set():
            disturb(rnd)
            counts["disturbances"] += 1

    workers = [Worker(lambda n=n: work(n), f"load-{n}") for n in range(threads)]
    workers.append(Worker(disturber, "disturber"))
    for worker in workers:
        worker.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        for worker in workers:
            worker.outcome(2 * SLACK)
    assert not unexpected, unexpected[:3]
    assert not bad, bad[:5]
    assert not slow, slow[:5]
    assert counts["gets"] > 0 and counts["disturbances"] > 0, counts
    rig.settle(clients[0], keys, loader)
    for client in clients:
        rig.assert_coherent(client, keys)
    return counts


@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_flushall_storm_under_load(rig: Rig, use_lua_lock: bool) -> None:
    clients = [rig.client(direct=True, use_lua_lock=use_lua_lock) for _ in range(2)]
    keys = [f"storm:{i}" for i in range(10)]
    admin = rig.server.connect()

    def storm(rnd: random.Random) -> None:
        for _ in range(5):
            admin.execute("SET", rnd.choice(keys), f"writer:{rnd.random()}")
        admin.execute("FLUSHALL")
        time.sleep(0.01)  # pacing: a storm, not a busy loop on two cores

    try:
        _run_load(rig, clients, keys, 2.0, storm)
    finally:
        admin.close()
    assert all(client.stats()["flushes"] > 0 for client in clients)


@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_tracking_table_overflow_under_load(rig: Rig, use_lua_lock: bool) -> None:
    original = rig.admin.execute("CONFIG", "GET", "tracking-table-max-keys")[1]
    rig.admin.execute("CONFIG", "SET", "tracking-table-max-keys", "8")
    try:
        clients = [rig.client(direct=True, use_lua_lock=use_lua_lock) for _ in range(2)]
        keys = [f"overflow:{i}" for i in range(40)]
        admin = rig.server.connect()
        try:
            _run_load(rig, clients, keys, 2.0, _random_sets(admin, keys, 0.002))
        finally:
            admin.close()
        assert sum(client.stats()["invalidations"] for client in clients) > 0
    finally:
        rig.admin.execute("CONFIG", "SET", "tracking-table-max-keys", original)
    assert rig.admin.execute("CONFIG", "GET", "tracking-table-max-keys")[1] == original


def _client_ids(admin: RawConnection, prefix: str) -> list[int]:
    listing = admin.execute("CLIENT", "LIST").decode()
    ids = []
    for line in listing.splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
        if fields.get("name", "").startswith(prefix):
            ids.append(int(fields["id"]))
    return ids


@pytest.mark.parametrize("use_lua_lock", LOCK_MODES)
def test_client_kill_at_random_moments(rig: Rig, use_lua_lock: bool) -> None:
    clients = [
        rig.client(direct=True, use_lua_lock=use_lua_lock, client_name=f"fault-kill-{n}")
        for n in range(2)
    ]
    keys = [f"kill:{i}" for i in range(12)]
    admin = rig.server.connect()
    kills = [0]
    handled = [0 for _ in clients]
    for n, client in enumerate(clients):
        client.connection.add_disconnect_handler(
            lambda _exc, n=n: handled.__setitem__(n, handled[n] + 1))

    def kill_and_write(rnd: random.Random) -> None:
        admin.execute("SET", rnd.choice(keys), f"writer:{rnd.random()}", "PX", 60000)
        if rnd.random() < 0.5:
            ids = _client_ids(admin, "fault-kill-")
            if ids:
                with contextlib.suppress(Exception):  # it may have gone already
                    kills[0] += admin.execute("CLIENT", "KILL", "ID", rnd.choice(ids))
        time.sleep(rnd.uniform(0.005, 0.05))

    try:
        counts = _run_load(rig, clients, keys, 3.0, kill_and_write, client_writes=True)
    finally:
        admin.close()
    assert kills[0] > 0, counts
    # Every lost connection ran the disconnect handlers (which drop the local
    # cache): the current connection is alive, all the earlier ones were lost.
    for n, client in enumerate(clients):
        assert client.connection.connected
        lost = client.connection.generation - 1
        assert handled[n] == lost, (
            f"client {n}: {lost} connections lost, disconnect handlers ran {handled[n]} times"
        )


def test_byte_by_byte_replies_under_load(rig: Rig) -> None:
    rig.proxy.split_writes(1)  # every reply and push byte in its own write
    clients = [rig.client(), rig.client()]
    keys = [f"split:{i}" for i in range(8)]
    admin = rig.server.connect()
    try:
        _run_load(rig, clients, keys, 1.5, _random_sets(admin, keys, 0.01), threads=2,
                  client_writes=True)
    finally:
        admin.close()
