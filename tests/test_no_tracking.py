"""Cache-aside without client tracking, against a real server, for both front ends.

Two ways in: a server that refuses ``CLIENT CACHING`` (here an ACL user
without ``client|tracking``; managed services and proxies do the same), and
``local_cache=False`` on a server that would track. Either way nothing is
kept locally, every ``get`` reads the server, and waiters re-read the key
with a bounded backoff instead of waiting for pushes; locks, fills,
takeovers and negative caching are those of the tracked mode.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from helpers import Background, Loader, MakeClient, command_calls, diff, wait_until, waiting
from server import RawConnection, ValkeyServer

from valkeyaside import PLACEHOLDER_PREFIX, TOMBSTONE, Client
from valkeyaside._aside import POLL_FIRST, POLL_MAX

USER, PASSWORD = "notrack", "n0track"

# -- helpers --------------------------------------------------------------------


def client_flags(client: Client) -> str:
    """The ``flags=`` of the client's own connection in CLIENT INFO."""
    info = client.execute("CLIENT", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(field.split("=", 1) for field in text.split() if "=" in field)
    return fields["flags"]


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "valkeyaside" and record.levelno == logging.WARNING]


def stampede(clients: list[Client], threads: int, key: str, load: Loader,
             gate: threading.Event) -> list[Any]:
    """``threads`` gets of one cold key, spread over ``clients``, released together;
    the gate opens once every client has a waiter parked. The values they got."""
    start = threading.Barrier(threads)

    def one(client: Client) -> Any:
        start.wait(10)
        return client.get(key, 30, load, timeout=20)

    spread = [clients[i % len(clients)] for i in range(threads)]
    calls = [Background(lambda c=client: one(c)) for client in spread]
    try:
        assert load.started.wait(10)
        for client in clients:  # the others found the lock and wait on it
            wait_until(lambda c=client: c.stats()["lock_waits"] >= 1, 10, "a parked waiter")
    finally:
        gate.set()
    return [call.result(30) for call in calls]


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def no_tracking_user(clean_server: ValkeyServer) -> dict[str, str]:
    """Credentials of a user that may do anything but ``CLIENT TRACKING``."""
    if clean_server.version >= (7, 0):
        rules = ["+@all", "-client|tracking"]
    else:  # 6.2 cannot take one subcommand away: all of CLIENT, then the rest back
        rules = ["+@all", "-client"] + [f"+client|{sub}" for sub in
                                        ("id", "info", "caching", "setname", "getname")]
    clean_server.command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", *rules)
    return {"username": USER, "password": PASSWORD}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="valkeyaside")
    return caplog


# -- a server that refuses tracking ------------------------------------------------


def test_refused_tracking_stampede_loads_once(
    make_client: MakeClient, no_tracking_user: dict[str, str], raw: RawConnection,
    logs: pytest.LogCaptureFixture,
) -> None:
    client = make_client(**no_tracking_user)
    gate = threading.Event()
    load = Loader("cold value", gate)
    values = stampede([client], 50, "cold", load, gate)
    assert values == ["cold value"] * 50
    assert load.calls == 1
    stats = client.stats()
    assert stats["loads"] == 1
    assert stats["local_cache"] is False
    assert stats["entries"] == 0 and stats["bytes"] == 0
    assert "t" not in client_flags(client)  # the server is not tracking it
    warnings = warnings_logged(logs)
    assert len(warnings) == 1, warnings
    assert "refused client-side caching" in warnings[0]
    # Nothing is kept: an outside write is seen by the very next get, no push needed.
    raw.execute("SET", "cold", "outside")
    assert client.get("cold", 30, Loader("never")) == "outside"
    raw.execute("SET", "cold", "again")
    assert client.get("cold", 30) == "again"
    raw.execute("DEL", "cold")
    assert client.get("cold", 30) is None
    # Nor is the refusal logged again: not on later reads, not after a reconnect.
    raw.execute("CLIENT", "KILL", "ID", client.execute("CLIENT", "ID"))
    wait_until(lambda: _get_or_none(client, "cold") == "back", 5, "a get after the kill")
    assert len(warnings_logged(logs)) == 1
    assert client.stats()["local_cache"] is False


def _get_or_none(client: Client, key: str) -> Any:
    try:
        return client.get(key, 30, Loader("back"))
    except ConnectionError:
        return None


def test_refused_tracking_stampede_over_clients(
    make_client: MakeClient, no_tracking_user: dict[str, str], raw: RawConnection,
    lua: bool, logs: pytest.LogCaptureFixture,
) -> None:
    """Five clients, ten threads each: one load; the other clients learn of the fill
    by re-reading the key (nothing pushes it to them)."""
    clients = [make_client(use_lua_lock=lua, **no_tracking_user) for _ in range(5)]
    gate = threading.Event()
    load = Loader("shared", gate)
    values = stampede(clients, 50, "hot", load, gate)
    assert values == ["shared"] * 50
    assert load.calls == 1
    assert sum(c.stats()["loads"] for c in clients) == 1
    assert all(c.stats()["local_cache"] is False for c in clients)
    assert len(warnings_logged(logs)) == len(clients)  # once per client
    assert raw.execute("GET", "hot") == b"shared"


# -- local_cache=False on a server that would track ---------------------------------


def test_forced_off_sends_no_tracking_and_reads_the_server_every_time(
    make_client: MakeClient, raw: RawConnection, logs: pytest.LogCaptureFixture
) -> None:
    raw.execute("SET", "k", "v")
    before = command_calls(raw)
    client = make_client(local_cache=False)
    assert client.stats()["local_cache"] is False  # known before any get
    for _ in range(10):
        assert client.get("k", 30) == "v"
    flags = client_flags(client)
    after = command_calls(raw)
    calls = diff(before, after)
    assert "t" not in flags  # CLIENT TRACKING was never turned on
    assert calls.get("get") == 10, calls  # every get read the server
    assert calls.get("exec") == 10, calls
    assert not [name for name in calls if name in ("client|tracking", "client|caching")], calls
    stats = client.stats()
    assert stats["hits"] == 0 and stats["misses"] == 10
    assert stats["entries"] == 0
    raw.execute("SET", "k", "w")  # no push will come: the next get reads it anyway
    assert client.get("k", 30) == "w"
    assert warnings_logged(logs) == []  # chosen, not refused: nothing to warn of


def test_forced_off_locks_and_fills(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua, local_cache=False)
    others = [make_client(use_lua_lock=lua, local_cache=False) for _ in range(2)]
    gate = threading.Event()
    seen: dict[str, Any] = {}

    def load(key: str) -> str:
        seen["placeholder"] = placeholder = raw.execute("GET", key)
        seen["marker"] = raw.execute("GET", placeholder)
        return slow(key)  # type: ignore[no-any-return]

    slow = Loader("filled", gate)
    held = Background(lambda: holder.get("k", 30, load))
    never = Loader("never")
    try:
        assert slow.started.wait(10)
        assert seen["placeholder"].startswith(PLACEHOLDER_PREFIX.encode())
        assert seen["marker"] == b""  # the holder's marker is alive
        waits = [Background(lambda c=c: c.get("k", 30, never)) for c in others]
        waits.append(Background(lambda: holder.get("k", 30, never)))  # same client
        for other in others:
            waiting(other)
        waiting(holder)
    finally:
        gate.set()
    assert held.result() == "filled"
    assert [wait.result() for wait in waits] == ["filled"] * 3
    assert slow.calls == 1 and never.calls == 0
    assert raw.execute("GET", "k") == b"filled"
    assert 29_000 < raw.execute("PTTL", "k") <= 30_000
    assert holder.stats()["loads"] == 1
    assert sum(c.stats()["loads"] for c in others) == 0


def test_forced_off_takes_over_a_dead_holder(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua, local_cache=False)
    # A placeholder whose marker key is missing: taken over at once.
    raw.execute("SET", "gone", PLACEHOLDER_PREFIX + "0123456789abcdef01234567", "PX", 30_000)
    assert client.get("gone", 30, Loader("mine"), timeout=5) == "mine"
    assert client.stats()["takeovers"] == 1
    # A placeholder whose marker expires while we wait: taken over once it has.
    dead = PLACEHOLDER_PREFIX + "fedcba9876543210fedcba98"
    raw.execute("SET", dead, "", "PX", 400)
    raw.execute("SET", "k", dead, "PX", 30_000)
    mine = Loader("mine too")
    waited = Background(lambda: client.get("k", 30, mine, timeout=10))
    waiting(client)
    assert mine.calls == 0
    wait_until(lambda: raw.execute("EXISTS", dead) == 0, 5, "the marker expired")
    expired_at = time.monotonic()
    assert waited.result(10) == "mine too"
    assert waited.finished_at - expired_at < 1.0
    assert mine.calls == 1
    assert client.stats()["takeovers"] == 2
    assert raw.execute("GET", "k") == b"mine too"


def test_forced_off_negative_caching(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua, local_cache=False)
    other = make_client(use_lua_lock=lua, local_cache=False)
    nothing = Loader(None)
    assert client.get("k", 30, nothing) is None
    assert raw.execute("GET", "k") == TOMBSTONE
    assert 29_000 < raw.execute("PTTL", "k") <= 30_000
    for _ in range(3):
        assert client.get("k", 30, nothing) is None
        assert other.get("k", 30, nothing) is None
    assert client.get("k", 30) is None
    assert nothing.calls == 1
    raw.execute("SET", "k", "now")  # a value replaces the tombstone, seen at once
    assert client.get("k", 30, nothing) == "now"
    assert other.get("k", 30, nothing) == "now"
    assert nothing.calls == 1


def test_forced_off_negative_ttl(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client(local_cache=False, negative_ttl=0.3)
    nothing = Loader(None)
    assert client.get("k", 30, nothing) is None
    assert 0 < raw.execute("PTTL", "k") <= 300
    wait_until(lambda: raw.execute("EXISTS", "k") == 0, 3, "the tombstone expired")
    assert client.get("k", 30, Loader("found")) == "found"
    assert nothing.calls == 1


# -- waiters poll, with a bounded backoff ------------------------------------------------


def test_waiters_poll_with_a_bounded_backoff(
    make_client: MakeClient, lua: bool, raw: RawConnection, server_url: str
) -> None:
    """A waiter on another client's lock re-reads the key, backing off from POLL_FIRST
    to POLL_MAX: not a busy loop, and back soon after the fill however long it waited."""
    assert (POLL_FIRST, POLL_MAX) == (0.005, 0.1)  # the bounds the README promises
    holder = Client(server_url, use_lua_lock=lua)  # tracked: it makes no difference
    waiter = make_client(use_lua_lock=lua, local_cache=False)
    gate = threading.Event()
    slow = Loader("filled", gate)
    try:
        held = Background(lambda: holder.get("k", 30, slow))
        assert slow.started.wait(10)
        started = time.monotonic()
        waited = Background(lambda: waiter.get("k", 30, Loader("never")))
        # Ten waits: 5+10+20+40+80+100+100+100+100 ms of pauses between them. A busy
        # loop gets there at once; a backoff without a bound takes 2.5 s, then 2.6 s more.
        waiting(waiter, 10)
        ten_waits = time.monotonic() - started
        assert ten_waits > 0.3, f"ten waits in {ten_waits:.3f} s: no backoff"
        gate.set()
        opened_at = time.monotonic()
        assert waited.result(10) == "filled"
        assert held.result() == "filled"
        back_after = waited.finished_at - opened_at
        assert back_after < 1.0, f"the waiter came back {back_after:.3f} s after the fill"
        assert slow.calls == 1
        assert waiter.stats()["loads"] == 0
    finally:
        gate.set()
        holder.close()
