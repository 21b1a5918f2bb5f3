"""Sentinel: the primary found through the sentinels, and followed across
failovers, for both front ends, against a real setup (``tests/cluster.py``:
1 primary, 1 replica, 3 sentinels); the shared logic (``sentinel._core``)
without I/O.

The tests that fail over take seconds each (Sentinel's own pace) and are
marked slow.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from typing import Any, Callable, Optional

import frontends
import pytest
from cluster import SentinelSetup
from helpers import Loader, wait_until
from server import HARNESS_USER, RawConnection

from valkeyaside import ConnectionError, TimeoutError
from valkeyaside._topology import Topology
from valkeyaside.resp3 import Push
from valkeyaside.sentinel import _core
from valkeyaside.sentinel._core import PrimarySearch, Sentinels, Watch

MakeSentinelClient = Callable[..., Any]
# Service is back this long after the sentinels have switched, at the most
# (it takes well under a second here).
SERVICE_BACK = 15.0


def sentinel_url(setup: SentinelSetup, master: str = "mymaster",
                 order: Optional[list[int]] = None) -> str:
    sentinels = [setup.sentinels[i] for i in (order or range(len(setup.sentinels)))]
    hosts = ",".join(f"{s.host}:{s.port}" for s in sentinels)
    return f"valkey+sentinel://{hosts}/{master}/0"


@pytest.fixture
def make(front: str, request: pytest.FixtureRequest) -> MakeSentinelClient:
    """Makes clients of the front end under test; each is closed at the end."""

    def make(url: Optional[str] = None, **options: Any) -> Any:
        client = frontends.make(front, url, **options)
        request.addfinalizer(lambda: frontends.shutdown(client))
        return client

    return make


def moved(client: Any) -> tuple[threading.Event, list[BaseException]]:
    """An event set once ``client``'s link is dropped, and the causes."""
    causes: list[BaseException] = []
    lost = threading.Event()

    def handler(cause: BaseException) -> None:
        causes.append(cause)
        lost.set()

    client.connection.add_disconnect_handler(handler)
    return lost, causes


# -- reaching the primary ------------------------------------------------------


@pytest.mark.parametrize("form", ["url", "keywords"])
def test_reaches_the_primary_and_caches(sentinel_setup: SentinelSetup,
                                        make: MakeSentinelClient, form: str) -> None:
    if form == "url":
        client = make(sentinel_url(sentinel_setup))
    else:
        client = make(sentinel_master="mymaster",
                      sentinels=[(s.host, s.port) for s in sentinel_setup.sentinels])
    primary = sentinel_setup.primary()
    loader = Loader("v1")
    assert client.get("k", 60, loader) == "v1"
    assert client.get("k", 60, loader) == "v1"
    assert loader.calls == 1
    assert client.connection.primary == (primary.host, primary.port)
    assert f"primary={primary.host}:{primary.port}" in repr(client.connection)
    hits = client.stats()["hits"]
    before = primary.command("INFO", "commandstats")
    assert client.get("k", 60, loader) == "v1"
    assert client.stats()["hits"] == hits + 1
    assert primary.command("INFO", "commandstats") .count(b"cmdstat_get:") == \
        before.count(b"cmdstat_get:")
    assert primary.command("GET", "k") == b"v1"  # written on the primary
    primary.command("SET", "k", "v2")  # invalidates the local entry
    wait_until(lambda: client.get("k", 60, loader) == "v2", 10, "the invalidation")
    assert loader.calls == 1


def test_unknown_master_name_is_a_clear_error(sentinel_setup: SentinelSetup,
                                              make: MakeSentinelClient) -> None:
    client = make(sentinel_url(sentinel_setup, master="nosuchmaster"))
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no sentinel knows a primary named 'nosuchmaster'"):
        client.get("k", 60, Loader())
    assert time.monotonic() - started < 2  # at once, not after connect_timeout


def test_no_sentinel_answers(make: MakeSentinelClient) -> None:
    client = make("valkey+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster", connect_timeout=0.5)
    started = time.monotonic()
    # The limit named is what was left of connect_timeout when the search began.
    with pytest.raises(ConnectionError,
                       match=re.escape("no primary named 'mymaster' found through the "
                                       "sentinels 127.0.0.1:1, 127.0.0.1:2 within ")
                       + r"0\.(5|4\d*) s"):
        client.get("k", 60, Loader())
    assert time.monotonic() - started < 3


def test_credentials_apply_where_they_belong(sentinel_setup: SentinelSetup,
                                             make: MakeSentinelClient) -> None:
    """The URL's user is the data nodes'; sentinel_username/password the sentinels'."""
    primary = sentinel_setup.primary()
    data_user, data_password = "datauser", "data-s3cret"
    sentinel_user, sentinel_password = "sentineluser", "sentinel-s3cret"
    primary.command("ACL", "SETUSER", data_user, "on", f">{data_password}", "~*", "&*", "+@all")
    for sentinel in sentinel_setup.sentinels:
        sentinel.command("ACL", "SETUSER", sentinel_user, "on", f">{sentinel_password}",
                         "&*", "+@all")
    hosts = ",".join(f"{s.host}:{s.port}" for s in sentinel_setup.sentinels)
    url = f"valkey+sentinel://{data_user}:{data_password}@{hosts}/mymaster"
    try:
        client = make(url, sentinel_username=sentinel_user, sentinel_password=sentinel_password)
        assert client.get("k", 60, Loader("v")) == "v"
        assert client.execute("ACL", "WHOAMI") == b"datauser"
        wait_until(lambda: client.connection.watching is not None, 10, "the subscription")
        for text in (repr(client), repr(client.connection)):
            assert data_password not in text and sentinel_password not in text

        # The sentinels' password is theirs: a wrong one fails there, and is not shown.
        wrong = make(url, sentinel_username=sentinel_user, sentinel_password="wrong-pass",
                     connect_timeout=0.5)
        with pytest.raises(ConnectionError, match=r"handshake with .* refused") as refused:
            wrong.get("k", 60, Loader())
        assert "wrong-pass" not in str(refused.value) and data_password not in str(refused.value)
        # ... and the data nodes' is theirs: the sentinels do not know that user.
        crossed = make(url, sentinel_username=data_user, sentinel_password=data_password,
                       connect_timeout=0.5)
        with pytest.raises(ConnectionError, match="refused"):
            crossed.get("k", 60, Loader())
        for each in (client, wrong, crossed):
            frontends.shutdown(each)  # before their users go
    finally:
        primary.command("ACL", "DELUSER", data_user)
        for sentinel in sentinel_setup.sentinels:
            sentinel.command("ACL", "DELUSER", sentinel_user)


def test_topology_keeps_the_credentials_apart() -> None:
    topology = Topology.from_url(
        "valkey+sentinel://u:pw@s1:26379,s2/mymaster/3",
        {"sentinel_username": "su", "sentinel_password": "spw", "socket_timeout": 2.0})
    assert (topology.options.username, topology.options.password) == ("u", "pw")
    assert topology.options.db == 3
    assert topology.sentinel_options is not None
    assert (topology.sentinel_options.username, topology.sentinel_options.password) == \
        ("su", "spw")
    assert topology.sentinel_options.socket_timeout == 2.0
    assert topology.sentinels == (("s1", 26379), ("s2", 26379))
    assert topology.sentinel_master == "mymaster"


def test_close_stops_the_watcher(sentinel_setup: SentinelSetup, make: MakeSentinelClient,
                                 front: str) -> None:
    client = make(sentinel_url(sentinel_setup))
    client.get("k", 60, Loader())
    watcher = client.connection._watcher
    wait_until(lambda: client.connection.watching is not None, 10, "the subscription")
    client.close()
    if front == "async":
        assert watcher.done()
    else:
        assert not watcher.is_alive()
    assert client.connection.watching is None


# -- following failovers ---------------------------------------------------------------
# Each on a setup of its own: starting one takes a few seconds, while the
# shared one would take some 20 s to settle again after a failover.


@pytest.mark.slow
def test_failover_under_load(fresh_sentinel: SentinelSetup, make: MakeSentinelClient) -> None:
    """Readers and writers run through a failover: they fail only with connection
    errors and only for a while; afterwards every one of them is served, and a
    value written on the new primary is read (not an entry from the old one)."""
    client = make(sentinel_url(fresh_sentinel), connect_timeout=2.0, socket_timeout=2.0)
    old = fresh_sentinel.primary()
    stop = threading.Event()
    switched_at: list[float] = []
    served: dict[int, float] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            try:
                if index % 2:
                    client.execute("SET", f"w{index}", count)
                else:
                    client.get(f"r{index % 4}", 60, Loader(f"loaded{index}"))
            except (ConnectionError, TimeoutError) as exc:
                errors.append(exc)
                stop.wait(0.01)
            else:
                served[index] = time.monotonic()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(6)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(served) == len(workers), 10, "every worker served")
        new = fresh_sentinel.failover()
        switched_at.append(time.monotonic())
        wait_until(lambda: all(at > switched_at[0] for at in served.values()), SERVICE_BACK,
                   "every worker served by the new primary")
        # Written on both nodes while the old one still takes writes: only the
        # new primary's value may be read.
        with contextlib.suppress(Exception):  # already turned into a replica: READONLY
            old.command("SET", "probe", "old")
        new.command("SET", "probe", "new")
        wait_until(lambda: client.get("probe", 60, Loader("unused")) == "new", 10,
                   "the new primary's value")
        assert client.connection.primary == (new.host, new.port)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    for error in errors:
        assert isinstance(error, (ConnectionError, TimeoutError)), error
    assert all(not worker.is_alive() for worker in workers)


@pytest.mark.slow
def test_the_watcher_moves_to_the_next_sentinel(fresh_sentinel: SentinelSetup,
                                                make: MakeSentinelClient) -> None:
    """Its subscription killed, the watcher subscribes on the next sentinel,
    and follows the next switch from there: no request is running, and the
    first call after the switch reads the new primary (the old entry is gone),
    without an error."""
    client = make(sentinel_url(fresh_sentinel))
    assert client.get("k", 60, Loader("before")) == "before"
    wait_until(lambda: client.connection.watching is not None, 10, "the subscription")
    first = client.connection.watching
    sentinel = next(s for s in fresh_sentinel.sentinels if (s.host, s.port) == first)
    sentinel.command("CLIENT", "KILL", "TYPE", "pubsub")
    wait_until(lambda: client.connection.watching not in (None, first), 10,
               "a subscription on another sentinel")
    lost, causes = moved(client)
    new = fresh_sentinel.failover()
    assert lost.wait(10), "the link to the old primary was not dropped"
    assert "moved" in str(causes[0])
    new.command("SET", "k", "after")
    assert client.get("k", 60, Loader("unused")) == "after"
    assert client.connection.primary == (new.host, new.port)


@pytest.mark.slow
def test_a_switch_missed_while_unsubscribed_is_caught_up(
        fresh_sentinel: SentinelSetup, make: MakeSentinelClient) -> None:
    """The watched sentinel freezes (SIGSTOP) while another one fails over: the
    watcher gives it up, subscribes on the next one, asks the primary's address
    again, and drops the link to the old primary."""
    s0, s1, s2 = fresh_sentinel.sentinels
    client = make(sentinel_url(fresh_sentinel, order=[1, 0, 2]))  # s1 is watched
    client.get("k", 60, Loader())
    wait_until(lambda: client.connection.watching == (s1.host, s1.port), 10,
               "the subscription on the first sentinel named")
    lost, causes = moved(client)
    old = fresh_sentinel.primary()
    assert s1.pid is not None
    os.kill(s1.pid, signal.SIGSTOP)
    try:
        with RawConnection(s2.host, s2.port, timeout=30, username=HARNESS_USER,
                           password=s2.admin_password) as sub:
            sub.execute("SUBSCRIBE", "+switch-master")
            s0.command("SENTINEL", "FAILOVER", "mymaster")
            while True:
                message = sub.read_reply()
                if message[0] == b"message" and message[1] == b"+switch-master":
                    break
        assert lost.wait(20), "the missed switch was not caught up"
        assert "moved" in str(causes[0])
        assert client.connection.watching != (s1.host, s1.port)
        client.get("k", 60, Loader())
        assert client.connection.primary != (old.host, old.port)
    finally:
        os.kill(s1.pid, signal.SIGCONT)


# -- the shared logic, without I/O ----------------------------------------------------------


def test_switch_messages() -> None:
    message = Push([b"message", b"+switch-master", b"mymaster 10.0.0.1 6379 10.0.0.2 6380"])
    assert _core.switch_address(message, "mymaster") == ("10.0.0.2", 6380)
    assert _core.switch_address(message, "other") is None
    assert _core.switch_address(Push([b"subscribe", b"+switch-master", 1]), "mymaster") is None
    assert _core.switch_address(Push([b"message", b"+switch-master", b"mymaster x"]),
                                "mymaster") is None


def test_master_address_replies() -> None:
    sentinel = ("s", 26379)
    assert _core.master_address([b"10.0.0.2", b"6380"], "m", sentinel) == ("10.0.0.2", 6380)
    assert _core.master_address(None, "m", sentinel) is None
    with pytest.raises(Exception, match="named the primary 'm'"):
        _core.master_address([b"10.0.0.2"], "m", sentinel)


def test_sentinels_order() -> None:
    sentinels = Sentinels((("a", 1), ("b", 2), ("c", 3)))
    sentinels.prefer(("b", 2))
    assert sentinels.order == (("b", 2), ("a", 1), ("c", 3))
    assert sentinels.after(("c", 3)) == ("b", 2)
    assert sentinels.after(None) == ("b", 2)


def test_search_steps() -> None:
    sentinels = Sentinels((("a", 1), ("b", 2)))
    search = PrimarySearch("m", sentinels, 5.0)
    step = search.next()
    assert (step.sentinel, step.primary, step.pause) == (("a", 1), None, 0.0)
    search.failed(OSError("refused"))
    assert search.next().sentinel == ("b", 2)
    search.heard([b"10.0.0.9", b"7000"])
    step = search.next()
    assert step.primary == ("10.0.0.9", 7000)
    assert search.found() == ("10.0.0.9", 7000)
    assert sentinels.order[0] == ("b", 2)  # asked first next time

    unknown = PrimarySearch("m", sentinels, 5.0)
    for _ in range(2):
        unknown.next()
        unknown.heard(None)
    with pytest.raises(ConnectionError, match="no sentinel knows a primary named 'm'"):
        unknown.next()

    hopeless = PrimarySearch("m", Sentinels((("a", 1),)), 0.01)
    hopeless.next()
    hopeless.failed(OSError("refused"))
    with pytest.raises(ConnectionError, match=r"a:1: refused"):
        hopeless.next()


def _reply_bytes(*frames: bytes) -> bytes:
    return b"".join(frames)


def test_watch_reports_the_address_asked_on_subscribing_and_each_switch() -> None:
    watch = Watch("m", Sentinels((("a", 1), ("b", 2))), Topology.from_url(
        "valkey+sentinel://a:1,b:2/m", {}).sentinel_options)  # type: ignore[arg-type]
    chat = watch.begin()
    assert b"SUBSCRIBE" in chat.payload and b"GET-MASTER-ADDR-BY-NAME" in chat.payload
    hello = b"%1\r\n$5\r\nproto\r\n:3\r\n"
    subscribed = b">3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
    answer = b"*2\r\n$8\r\n10.0.0.1\r\n$4\r\n6379\r\n"
    data = _reply_bytes(hello, subscribed, answer)
    learnt = []
    for i in range(len(data)):  # byte by byte
        learnt += watch.feed(data[i:i + 1])
    assert learnt == [("10.0.0.1", 6379)]
    assert watch.subscribed
    switch = b"mymaster 10.0.0.1 6379 10.0.0.2 6380".replace(b"mymaster", b"m")
    message = b">3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n" % (
        len(switch), switch)
    assert watch.feed(message + b"+PONG\r\n") == [("10.0.0.2", 6380)]
    watch.lost(OSError("gone"), closed=True)
    assert not watch.subscribed and watch.pause() > 0
    assert watch.begin().sentinel == ("b", 2)  # the next one
