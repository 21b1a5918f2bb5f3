"""Dead links: a server that goes silent is left, and one that is merely busy is not.

Silence comes from a real server stopped with SIGSTOP, or from the fault
proxy dropping every byte both ways (a blackhole: the TCP connection stays
up, as it does across a partition or in front of a frozen VM). For each,
the tests measure the time from the silence to the last local hit (at most
3 s with default settings), check that calls fail rather than hang, and
that the client recovers by itself once the server answers again.

The clients come from the ``make_client`` fixture, of the kind the
``front`` fixture names: the threaded ``Client`` (its reader thread is the
health timer) and the ``AsyncClient`` (a loop timer), through
``frontends.AsyncFront``, so every test runs over both.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Optional

import frontends
import pytest
from faultproxy import FaultProxy
from server import ValkeyServer

import valkeyaside
from valkeyaside.resp3 import ConnectionOptions
from valkeyaside.resp3._health import PING_TIMEOUT, Action, HealthPolicy

KEY = "deadlink:key"
TTL = 60.0  # far longer than any test: only a dead link may drop the entry
SLACK = 2.0  # added to time bounds: the test machine may be slow and shared
HITS_STOP_WITHIN = 3.0  # the promise: local hits stop this soon after the server goes silent
RECOVERS_WITHIN = 1.0  # ... and the client reconnects this soon after it answers again
SAMPLE = 0.01  # how often the hit loop reads the key (a sampling period, not a wait)

Failure = (valkeyaside.TimeoutError, valkeyaside.ConnectionError)
MakeClient = Callable[..., valkeyaside.Client]


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def make_client(front: str) -> Iterator[MakeClient]:
    """``make_client(url, **options)``: a client of the ``front`` kind, closed after the test."""
    clients: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        options.setdefault("client_ttl", 30.0)  # the marker outlives every silence here
        client = frontends.make(front, url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        frontends.shutdown(client)


@pytest.fixture
def proxy(clean_server: ValkeyServer) -> Iterator[FaultProxy]:
    with FaultProxy(clean_server.port) as proxy:
        yield proxy


class Stopped:
    """SIGSTOP a server; SIGCONT it on ``resume()`` or, at the latest, on exit."""

    def __init__(self, server: ValkeyServer) -> None:
        pid = server.pid
        assert pid is not None
        self.pid = pid
        self.stopped = False

    def __enter__(self) -> Stopped:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        return self

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
            self.stopped = False

    def __exit__(self, *exc_info: object) -> None:
        self.resume()


def lost_event(client: valkeyaside.Client) -> threading.Event:
    lost = threading.Event()
    client.connection.add_disconnect_handler(lambda _cause: lost.set())
    return lost


def cache_one(client: valkeyaside.Client) -> str:
    """Load KEY through the client and check that the next read is a local hit."""
    value = client.get(KEY, TTL, lambda key: f"value-of-{key}", timeout=SLACK)
    assert value == f"value-of-{KEY}"
    assert client.get(KEY, TTL, timeout=SLACK) == value  # the fill's invalidation made this a read
    hits = client.stats()["hits"]
    assert client.get(KEY, TTL, timeout=SLACK) == value
    assert client.stats()["hits"] == hits + 1, "the second read was not a local hit"
    return value


def last_local_hit(client: valkeyaside.Client, value: str, silent_at: float) -> float:
    """Read KEY until it stops being a local hit; return the seconds from the
    silence to the last hit. The read that follows must fail, within its timeout."""
    last = silent_at
    while True:
        hits = client.stats()["hits"]
        started = time.monotonic()
        try:
            got = client.get(KEY, TTL, timeout=0.5)
        except Failure:
            assert time.monotonic() - started < 0.5 + SLACK, "a failing read outlasted its timeout"
            return last - silent_at
        assert got == value
        assert client.stats()["hits"] == hits + 1, "a silent server answered a read"
        last = time.monotonic()
        assert last - silent_at < HITS_STOP_WITHIN + 5 * SLACK, "local hits are never stopped"
        time.sleep(SAMPLE)


def recovery(client: valkeyaside.Client, value: str, answering_at: float) -> float:
    """Seconds from the server answering again to the first read that works."""
    while True:
        try:
            got = client.get(KEY, TTL, lambda key: f"value-of-{key}", timeout=2 * RECOVERS_WITHIN)
        except Failure:
            assert time.monotonic() - answering_at < RECOVERS_WITHIN + 2 * SLACK, "never recovered"
            continue  # each attempt is bounded by its timeout, and backs off inside the client
        assert got == value
        return time.monotonic() - answering_at


class Call(threading.Thread):
    """A call on its own thread: its outcome and when it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.error: Optional[BaseException] = None
        self.ended = 0.0

    def run(self) -> None:
        try:
            self._call()
        except BaseException as exc:
            self.error = exc
        self.ended = time.monotonic()


# --------------------------------------------------------------------------- silence


@pytest.mark.parametrize("blackhole", ["held", "dropped"])
def test_blackhole_both_ways(proxy: FaultProxy, make_client: MakeClient, blackhole: str) -> None:
    # held: the bytes wait in the proxy and flow on when it ends, as TCP
    # retransmits across a healed partition. dropped: they are lost for good,
    # so a handshake begun during the blackhole waits out connect_timeout
    # (shortened here) before the next attempt.
    connect_timeout = 5.0 if blackhole == "held" else 1.0
    client = make_client(proxy.url, connect_timeout=connect_timeout)
    value = cache_one(client)
    lost = lost_event(client)
    if blackhole == "held":
        proxy.stall("both")
    else:
        proxy.drop("both")
    silent_at = time.monotonic()
    in_flight = Call(lambda: client.execute("ECHO", "into-the-void"))
    in_flight.start()
    after = last_local_hit(client, value, silent_at)
    assert lost.is_set(), "local hits stopped, but not because the link was closed"
    assert after <= HITS_STOP_WITHIN, f"local hits served {after:.2f} s into the silence"
    in_flight.join(HITS_STOP_WITHIN + SLACK)
    assert not in_flight.is_alive(), "a call in flight hangs on the silent link"
    assert isinstance(in_flight.error, valkeyaside.ConnectionError)
    assert in_flight.ended - silent_at <= HITS_STOP_WITHIN + SLACK
    proxy.clear()
    took = recovery(client, value, time.monotonic())
    bound = RECOVERS_WITHIN if blackhole == "held" else RECOVERS_WITHIN + connect_timeout
    assert took <= bound + SLACK, f"recovered {took:.2f} s after the blackhole ended"
    print(f"blackhole ({blackhole}): last local hit {after:.2f} s into the silence, "
          f"call in flight failed at {in_flight.ended - silent_at:.2f} s, recovered {took:.2f} s")
    assert client.connection.connected
    assert proxy.accepted >= 2


def test_sigstop_then_sigcont(fresh_server: ValkeyServer, make_client: MakeClient) -> None:
    client = make_client(fresh_server.url)
    value = cache_one(client)
    lost = lost_event(client)
    with Stopped(fresh_server) as stopped:
        silent_at = time.monotonic()
        in_flight = Call(lambda: client.execute("ECHO", "to-a-stopped-server"))
        in_flight.start()
        after = last_local_hit(client, value, silent_at)
        assert lost.is_set(), "local hits stopped, but not because the link was closed"
        assert after <= HITS_STOP_WITHIN, f"local hits served {after:.2f} s into the silence"
        in_flight.join(HITS_STOP_WITHIN + SLACK)
        assert not in_flight.is_alive(), "a call in flight hangs on the stopped server"
        assert isinstance(in_flight.error, valkeyaside.ConnectionError)
        stopped.resume()
        answering_at = time.monotonic()
    took = recovery(client, value, answering_at)
    assert took <= RECOVERS_WITHIN + SLACK, f"recovered {took:.2f} s after SIGCONT"
    print(f"SIGSTOP: last local hit {after:.2f} s into the silence, call in flight failed at "
          f"{in_flight.ended - silent_at:.2f} s, recovered {took:.2f} s after SIGCONT")
    assert client.execute("PING") == "PONG"


def test_an_overdue_reply_ends_the_link_without_health_checks(
    proxy: FaultProxy, make_client: MakeClient
) -> None:
    # With the PINGs off, the one rule left: a reply overdue past socket_timeout
    # with nothing read meanwhile. Every later call used to wait behind it.
    client = make_client(proxy.url, socket_timeout=0.5, health_check_interval=None)
    value = cache_one(client)
    lost = lost_event(client)
    proxy.stall("s2c")
    silent_at = time.monotonic()
    with pytest.raises(Failure):
        client.execute("ECHO", "unanswered")
    assert lost.wait(0.5 + SLACK)
    assert time.monotonic() - silent_at <= 0.5 + SLACK
    with pytest.raises(KeyError):
        _local_entry(client, KEY)
    proxy.clear()
    assert recovery(client, value, time.monotonic()) <= RECOVERS_WITHIN + SLACK
    assert client.connection.generation == 2


def _local_entry(client: valkeyaside.Client, key: str) -> Any:
    """The client's local entry for ``key`` (KeyError if it has none)."""
    return client._entries[key]


def test_an_idle_silent_link_is_pinged_and_closed(
    proxy: FaultProxy, make_client: MakeClient
) -> None:
    # No request waits: only the health check can notice.
    client = make_client(proxy.url, socket_timeout=30, health_check_interval=0.3)
    cache_one(client)
    lost = lost_event(client)
    proxy.drop("both")
    silent_at = time.monotonic()
    assert lost.wait(0.3 + PING_TIMEOUT + SLACK)
    took = time.monotonic() - silent_at
    assert took >= 0.3 + PING_TIMEOUT - 0.05, f"closed after {took:.2f} s: before its PING bound"
    with pytest.raises(KeyError):
        _local_entry(client, KEY)
    proxy.clear()


def test_no_health_check_keeps_an_idle_silent_link(
    proxy: FaultProxy, make_client: MakeClient
) -> None:
    client = make_client(proxy.url, socket_timeout=0.3, health_check_interval=None)
    cache_one(client)
    lost = lost_event(client)
    proxy.drop("both")
    # Nothing waits and nothing PINGs: nothing can tell (the old behaviour, by request).
    assert not lost.wait(1.0)
    assert _local_entry(client, KEY) is not None
    proxy.clear()


def test_a_refused_connect_is_never_reported_lost(
    fresh_server: ValkeyServer, make_client: MakeClient
) -> None:
    # A connect attempt that fails makes no link: nothing may report it lost
    # later, when it would flush the cache and retire the marker of the link
    # made since (the asyncio link's health timer once outlived such attempts).
    interval = 0.5
    client = make_client(fresh_server.url, health_check_interval=interval)
    cache_one(client)
    fresh_server.kill()
    with pytest.raises(valkeyaside.ConnectionError):
        client.execute("PING")  # refused: nothing listens
    refused_at = time.monotonic()
    fresh_server.start()
    value = cache_one(client)
    lost = lost_event(client)
    marker = client._aside.locks.marker.current
    # A link would have been judged dead by now (an event that never comes: the wait is the test).
    assert not lost.wait(max(0.0, refused_at + interval + PING_TIMEOUT + 0.5 - time.monotonic()))
    assert _local_entry(client, KEY) is not None
    assert client._aside.locks.marker.current == marker is not None
    assert client.get(KEY, TTL, timeout=SLACK) == value


# --------------------------------------------------------------------------- no false deaths


@pytest.mark.parametrize("interval", [1.0, 0.05], ids=["default", "pinged-during-the-sleep"])
def test_debug_sleep_200ms_costs_no_link(
    valkey_server: ValkeyServer, server_url: str, make_client: MakeClient, interval: float
) -> None:
    if not valkey_server.debug_command:
        pytest.skip("the server does not allow DEBUG")
    client = make_client(server_url, health_check_interval=interval)
    value = cache_one(client)
    lost = lost_event(client)
    generation = client.connection.generation
    for _ in range(3):
        # The link reads nothing for 200 ms while a reply is due (and, with
        # the short interval, while its PING waits behind the sleep).
        started = time.monotonic()
        assert client.execute("DEBUG", "SLEEP", "0.2") == "OK"
        assert time.monotonic() - started >= 0.2
        assert client.get(KEY, TTL, timeout=SLACK) == value
    assert not lost.is_set()
    assert client.connection.generation == generation
    _local_entry(client, KEY)


def test_a_busy_link_is_never_pinged(valkey_server: ValkeyServer, server_url: str,
                                     make_client: MakeClient) -> None:
    # Replies flowing faster than the interval: no PING is ever sent.
    client = make_client(server_url, health_check_interval=0.2)
    before = _pings(valkey_server)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        client.execute("ECHO", "busy")
    assert _pings(valkey_server) == before
    # Idle past the interval (an event that never comes: the wait is the test).
    assert not lost_event(client).wait(0.5)
    assert _pings(valkey_server) > before


def _pings(server: ValkeyServer) -> int:
    stats = bytes(server.command("INFO", "commandstats")).decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_ping:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


# --------------------------------------------------------------------------- options


def test_health_check_interval_option() -> None:
    assert ConnectionOptions().health_check_interval == 1.0
    url = "valkey://h:1/0?health_check_interval=0.25"
    assert ConnectionOptions.from_url(url).health_check_interval == 0.25
    for off in ("none", "0"):
        url = f"valkey://h:1/0?health_check_interval={off}"
        assert ConnectionOptions.from_url(url).health_check_interval is None
    url = "valkey://h:1/0"
    assert ConnectionOptions.from_url(url, health_check_interval=None).health_check_interval is None
    for bad in (-1, "1", True):
        with pytest.raises(ValueError, match="health_check_interval"):
            ConnectionOptions(health_check_interval=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the policy, alone


def test_policy_idle_link() -> None:
    policy = HealthPolicy(socket_timeout=10.0, health_check_interval=1.0)
    assert policy.tick == 1.0 and policy.ping_bound == PING_TIMEOUT == 1.0
    verdict = policy.check(now=100.4, last_read=100.0)
    assert (verdict.action, verdict.next_check) == (Action.NOTHING, 101.0)
    verdict = policy.check(now=101.0, last_read=100.0)
    assert (verdict.action, verdict.next_check) == (Action.PING, 102.0)
    # The PING is out: any byte read restarts its clock; nothing read for its bound is death.
    assert policy.check(101.5, 100.0, busy_since=101.0, ping_sent=101.0).next_check == 102.0
    assert policy.check(101.9, 101.8, busy_since=101.0, ping_sent=101.0).next_check == 102.8
    dead = policy.check(102.0, 100.0, busy_since=101.0, ping_sent=101.0)
    assert dead.action is Action.DEAD and "PING" in dead.reason and dead.next_check is None


def test_policy_overdue_reply() -> None:
    policy = HealthPolicy(socket_timeout=0.5, health_check_interval=None)
    assert policy.tick == 0.5
    assert policy.check(100.0, 99.0).next_check is None  # nothing waits, nothing to check
    verdict = policy.check(100.4, 99.0, busy_since=100.0)
    assert (verdict.action, verdict.next_check) == (Action.NOTHING, 100.5)
    # Bytes read after the request was sent restart the clock (the server is alive).
    assert policy.check(100.6, 100.3, busy_since=100.0).action is Action.NOTHING
    dead = policy.check(100.5, 99.0, busy_since=100.0)
    assert dead.action is Action.DEAD and "socket_timeout" in dead.reason


def test_policy_bounds() -> None:
    # A short socket_timeout bounds the PING too; the shortest rule sets the tick.
    policy = HealthPolicy(socket_timeout=0.3, health_check_interval=5.0)
    assert policy.ping_bound == 0.3 and policy.tick == 0.3
    assert policy.check(100.0, 94.0, ping_sent=99.8).action is Action.NOTHING
    assert policy.check(100.2, 94.0, ping_sent=99.8).action is Action.DEAD
    off = HealthPolicy(socket_timeout=None, health_check_interval=None)
    assert not off.active and off.tick is None
    assert off.check(1e9, 0.0, busy_since=0.0).action is Action.NOTHING
    pings_only = HealthPolicy(socket_timeout=None, health_check_interval=2.0)
    assert pings_only.tick == 1.0  # the PING bound
    assert pings_only.check(1e9, 0.0, busy_since=0.0).action is Action.PING


def test_policy_busy_server_is_not_dead() -> None:
    # A request that takes long while other replies keep arriving is no death.
    policy = HealthPolicy(socket_timeout=1.0, health_check_interval=1.0)
    for now in (100.5, 101.0, 105.0, 200.0):
        last_read = now - 0.5
        verdict = policy.check(now, last_read, busy_since=90.0, ping_sent=None)
        assert verdict.action is Action.NOTHING
