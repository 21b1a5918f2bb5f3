"""Client.get against a real server: filling, expiry, locks, markers, invalidation.

Every test that takes ``make_client`` or ``client`` runs against both front
ends: the threaded ``Client`` and the ``AsyncClient`` (see ``frontends``).

Every test that takes a lock runs in both lock modes: ``SET NX GET`` and the
Lua script (``use_lua_lock=True``). A raw RESP2 connection (the harness's,
not the library's) looks at what the server holds.
"""

from __future__ import annotations

import builtins
import datetime
import gc
import json
import os
import socket
import threading
import time
from typing import Any, Callable

import pytest
from helpers import Background, Loader, MakeClient, command_calls, disconnected, wait_until, waiting
from server import RawConnection, ValkeyServer, free_port

import valkeyaside
from valkeyaside import PLACEHOLDER_PREFIX, TOMBSTONE, Client, TypedClient
from valkeyaside.resp3 import _wakers

# -- helpers --------------------------------------------------------------------


# -- fixtures -------------------------------------------------------------------


# -- filling and expiring ---------------------------------------------------------


def test_fill_then_expire(client: Client, raw: RawConnection) -> None:
    for round_ in range(2):
        load = Loader(str(round_))
        started = time.monotonic()
        assert client.get("k", 0.5, load) == str(round_)
        assert load.calls == 1
        assert raw.execute("GET", "k") == str(round_).encode()
        assert 0 < raw.execute("PTTL", "k") <= 500
        assert client.get("k", 0.5) == str(round_)  # no loader needed while it lives
        assert client.get("k", 0.5) == str(round_)
        wait_until(lambda: client.get("k", 0.5) is None, 3, "the filled key expired")
        assert time.monotonic() - started >= 0.45
        assert raw.execute("EXISTS", "k") == 0
    assert client.stats()["loads"] == 2


def test_local_entry_expires_after_ttl(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("SET", "k", "v")  # no expiry on the server: the ttl bounds the local entry
    assert client.get("k", 0.3) == "v"
    misses = client.stats()["misses"]
    assert client.get("k", 0.3) == "v"
    assert client.stats()["misses"] == misses
    took = wait_until(
        lambda: client.get("k", 0.3) == "v" and client.stats()["misses"] > misses,
        3,
        "the local entry expired",
    )
    assert 0.2 <= took < 1.5
    assert client.get("k", 0.3) == "v"  # read again, cached again


def test_local_entry_expires_with_the_server_key(
    make_client: MakeClient, raw: RawConnection
) -> None:
    # With active expiry off the server sends no invalidation when the key's
    # time is up: only the PTTL the client read can make the local entry go.
    client = make_client()
    raw.execute("DEBUG", "SET-ACTIVE-EXPIRE", 0)
    try:
        raw.execute("SET", "k", "v", "PX", 300)
        assert client.get("k", 30) == "v"
        took = wait_until(
            lambda: client.get("k", 30) is None, 3, "the local entry expired at the key's PTTL"
        )
        assert 0.2 <= took < 1.5
    finally:
        raw.execute("DEBUG", "SET-ACTIVE-EXPIRE", 1)


def test_delete_then_refill(client: Client, raw: RawConnection) -> None:
    assert client.get("k", 30, Loader("one")) == "one"
    assert client.get("k", 30) == "one"
    assert client.get("k", 30) == "one"  # a local hit
    assert client.delete("k") == 1
    assert client.get("k", 30) is None  # at once: no sleep, no stale local entry
    assert client.get("k", 30, Loader("two")) == "two"
    assert client.get("k", 30) == "two"
    assert raw.execute("GET", "k") == b"two"
    assert client.stats()["loads"] == 2


def test_own_delete_then_immediate_get_misses(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("MSET", "a", "1", "b", "2")
    for _ in range(50):
        assert client.get("a", 30) == "1"
        assert client.get("b", 30) == "2"
        assert client.delete("a", "b", "absent") == 2
        assert client.get("a", 30) is None
        assert client.get("b", 30) is None
        raw.execute("MSET", "a", "1", "b", "2")
        client.execute("PING")  # the invalidations of the MSET have arrived
    assert client.delete() == 0


def test_delete_refuses_non_str_keys(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("SET", "k", "v")
    with pytest.raises(TypeError):
        client.delete("k", b"k")  # type: ignore[arg-type]
    assert raw.execute("EXISTS", "k") == 1


def test_override_cache_ttl(client: Client, raw: RawConnection) -> None:
    def load(key: str) -> str:
        valkeyaside.override_cache_ttl(5)
        return "short"

    assert client.get("k", 300, load) == "short"
    assert 4000 < raw.execute("PTTL", "k") <= 5000

    def load_timedelta(key: str) -> str:
        valkeyaside.override_cache_ttl(datetime.timedelta(minutes=10))
        return "long"

    assert client.get("k2", 3, load_timedelta) == "long"
    assert 590_000 < raw.execute("PTTL", "k2") <= 600_000

    def load_bad(key: str) -> str:
        valkeyaside.override_cache_ttl(0)
        return "never stored"

    with pytest.raises(ValueError):
        client.get("k3", 30, load_bad)
    assert raw.execute("EXISTS", "k3") == 0  # the lock was released


def test_override_cache_ttl_outside_a_loader() -> None:
    with pytest.raises(RuntimeError):
        valkeyaside.override_cache_ttl(5)


def test_negative_caching(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    nothing = Loader(None)
    assert client.get("k", 30, nothing) is None
    assert raw.execute("GET", "k") == TOMBSTONE
    assert 29_000 < raw.execute("PTTL", "k") <= 30_000  # no negative_ttl: the ttl
    for _ in range(3):
        assert client.get("k", 30, nothing) is None
        assert other.get("k", 30, nothing) is None
    assert client.get("k", 30) is None
    assert nothing.calls == 1
    # A value that appears replaces the tombstone.
    raw.execute("SET", "k", "now")
    client.execute("PING")
    other.execute("PING")
    assert client.get("k", 30, nothing) == "now"
    assert other.get("k", 30, nothing) == "now"
    assert nothing.calls == 1


def test_negative_ttl(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    # Long enough that the second get comes before the tombstone expires, on a
    # machine that pauses the test for a while (0.3 s once was not).
    client = make_client(use_lua_lock=lua, negative_ttl=1.0)
    nothing = Loader(None)
    assert client.get("k", 30, nothing) is None
    assert 0 < raw.execute("PTTL", "k") <= 1000
    assert client.get("k", 30, nothing) is None
    assert nothing.calls == 1
    wait_until(lambda: raw.execute("EXISTS", "k") == 0, 3, "the tombstone expired")
    assert client.get("k", 30, Loader("found")) == "found"
    assert 29_000 < raw.execute("PTTL", "k") <= 30_000  # a value keeps the ttl
    assert client.get("k", 30, nothing) == "found"


# -- markers ----------------------------------------------------------------------


def test_placeholder_names_a_live_marker(client: Client, raw: RawConnection) -> None:
    seen: dict[str, Any] = {}

    def load(key: str) -> str:
        placeholder = raw.execute("GET", key)
        seen["placeholder"] = placeholder
        seen["marker"] = raw.execute("GET", placeholder)
        seen["marker_pttl"] = raw.execute("PTTL", placeholder)
        seen["key_pttl"] = raw.execute("PTTL", key)
        return "v"

    assert client.get("k", 20, load) == "v"
    placeholder = seen["placeholder"]
    assert placeholder.startswith(PLACEHOLDER_PREFIX.encode())
    assert len(placeholder) == len(PLACEHOLDER_PREFIX) + 24
    int(placeholder[len(PLACEHOLDER_PREFIX) :], 16)
    assert seen["marker"] == b""
    assert 0 < seen["marker_pttl"] <= 10_000  # client_ttl
    assert 19_000 < seen["key_pttl"] <= 20_000  # the lock lives as long as the value would


def test_marker_is_refreshed(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    client = make_client(use_lua_lock=lua, client_ttl=1)
    seen: dict[str, Any] = {}

    def load(key: str) -> str:
        placeholder = raw.execute("GET", key)
        seen["placeholder"] = placeholder
        start = time.monotonic()
        previous = raw.execute("PTTL", placeholder)
        assert 0 < previous <= 1000
        renewals = 0
        # Hold the lock past client_ttl: the marker must outlive it, renewed.
        while time.monotonic() - start < 1.4:
            pttl = raw.execute("PTTL", placeholder)
            assert pttl > 0, "the marker expired while its client was alive"
            if pttl > previous:
                renewals += 1
            previous = pttl
            time.sleep(0.02)
        seen["renewals"] = renewals
        assert raw.execute("GET", key) == placeholder  # still ours
        return "v"

    assert client.get("k", 30, load) == "v"
    assert seen["renewals"] >= 2
    assert raw.execute("GET", "k") == b"v"
    assert raw.execute("EXISTS", seen["placeholder"]) == 1  # kept alive while the client is


def test_close_deletes_the_marker(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    client = make_client(use_lua_lock=lua)
    seen: dict[str, bytes] = {}

    def load(key: str) -> str:
        seen["placeholder"] = raw.execute("GET", key)
        return "v"

    assert client.get("k", 30, load) == "v"
    assert raw.execute("EXISTS", seen["placeholder"]) == 1
    client.close()
    assert raw.execute("EXISTS", seen["placeholder"]) == 0
    client.close()  # twice is fine
    with pytest.raises(valkeyaside.ConnectionError):
        client.get("k", 30)
    assert raw.execute("GET", "k") == b"v"


def test_lost_connection_rotates_the_marker(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua, client_ttl=1)
    ids: list[bytes] = []

    def load(key: str) -> str:
        ids.append(raw.execute("GET", key))
        return key

    assert client.get("a", 30, load) == "a"
    lost = disconnected(client)
    killed = raw.execute("CLIENT", "KILL", "ID", client.execute("CLIENT", "ID"))
    assert killed == 1
    assert lost.wait(5)
    assert client.get("b", 30, load) == "b"
    assert ids[0] != ids[1]
    assert all(i.startswith(PLACEHOLDER_PREFIX.encode()) for i in ids)
    wait_until(
        lambda: raw.execute("EXISTS", ids[0]) == 0,
        1.0,
        "the old marker was deleted within client_ttl",
    )
    assert raw.execute("EXISTS", ids[1]) == 1
    assert client.get("a", 30) == "a"  # values survive, only the marker changed


def test_connection_lost_while_loading(
    make_client: MakeClient, lua: bool, raw: RawConnection, raw2: RawConnection
) -> None:
    # The holder's connection drops mid-load: its old marker is retired, so
    # another caller of the same client takes the key over with a new marker.
    client = make_client(use_lua_lock=lua, client_ttl=1)
    client_id = client.execute("CLIENT", "ID")
    lost = disconnected(client)
    ids: dict[str, bytes] = {}
    took: dict[str, float] = {}

    def second(key: str) -> str:
        ids["second"] = raw2.execute("GET", key)
        return "2"

    def first(key: str) -> str:
        ids["first"] = raw.execute("GET", key)
        raw.execute("CLIENT", "KILL", "ID", client_id)
        killed_at = time.monotonic()
        assert lost.wait(5)
        other = Background(lambda: client.get(key, 5, second))
        assert other.result(5) == "2"
        took["takeover"] = other.finished_at - killed_at
        return "1"

    assert client.get("k", 5, first) == "1"  # its late fill is refused, the value stays
    assert ids["first"] != ids["second"]
    assert took["takeover"] < 1.0 + 0.5
    assert client.get("k", 5) == "2"
    assert raw.execute("GET", "k") == b"2"
    assert raw.execute("EXISTS", ids["first"]) == 0
    assert raw.execute("EXISTS", ids["second"]) == 1


# -- waiting for a holder ----------------------------------------------------------


def test_write_by_another_connection_wakes_a_waiter(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("from holder", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    try:
        assert slow.started.wait(10)
        never = Loader("from waiter")
        waited = Background(lambda: waiter.get("k", 30, never))
        waiting(waiter)
        raw.execute("SET", "k", "written")
        written_at = time.monotonic()
        assert waited.result(5) == "written"
        # Without the push it would sleep until the marker's refresh or expiry (5-10 s).
        assert waited.finished_at - written_at < 1.0
        assert never.calls == 0
    finally:
        gate.set()
    assert held.result() == "from holder"  # its fill was refused: the key was not its own
    assert raw.execute("GET", "k") == b"written"
    assert waiter.get("k", 30) == "written"


def test_holder_fill_wakes_waiters(make_client: MakeClient, lua: bool) -> None:
    holder = make_client(use_lua_lock=lua)
    others = [make_client(use_lua_lock=lua) for _ in range(3)]
    gate = threading.Event()
    slow = Loader("filled", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    never = Loader("never")
    try:
        assert slow.started.wait(10)
        waits = [Background(lambda c=c: c.get("k", 30, never)) for c in others]
        for other in others:
            waiting(other)
        filled_at = time.monotonic()
        gate.set()
        for wait in waits:
            assert wait.result(5) == "filled"
            assert wait.finished_at - filled_at < 1.0
    finally:
        gate.set()
    assert held.result() == "filled"
    assert never.calls == 0
    assert slow.calls == 1


def test_nested_get_of_the_same_key_times_out(client: Client, raw: RawConnection) -> None:
    inner = Loader("inner")
    took: dict[str, float] = {}

    def outer(key: str) -> str:
        start = time.monotonic()
        try:
            return client.get(key, 30, inner, timeout=0.5)  # type: ignore[return-value]
        finally:
            took["inner"] = time.monotonic() - start

    with pytest.raises(valkeyaside.TimeoutError) as info:
        client.get("k", 30, outer)
    assert isinstance(info.value, builtins.TimeoutError)
    assert 0.45 <= took["inner"] < 1.5
    assert inner.calls == 0
    assert raw.execute("EXISTS", "k") == 0  # the outer lock was released
    assert client.get("k", 30, Loader("after"), timeout=1) == "after"


@pytest.mark.parametrize(
    ("ttl", "timeout", "expected"),
    [(0.3, None, 0.3), (30, 0.3, 0.3), (0.3, 5, 0.3), (datetime.timedelta(seconds=0.3), None, 0.3)],
    ids=["ttl", "timeout", "ttl-below-timeout", "timedelta"],
)
def test_deadline_is_min_of_timeout_and_ttl(
    make_client: MakeClient, lua: bool, ttl: Any, timeout: Any, expected: float
) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("late", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    try:
        assert slow.started.wait(10)
        never = Loader("never")
        start = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError):
            waiter.get("k", ttl, never, timeout=timeout)
        took = time.monotonic() - start
        assert expected - 0.05 <= took < expected + 1.0
        assert never.calls == 0
    finally:
        gate.set()
    assert held.result() == "late"


def test_deadline_of_a_plain_read_of_a_locked_key(make_client: MakeClient, lua: bool) -> None:
    # No loader: a locked key is still waited for (someone is loading it).
    holder = make_client(use_lua_lock=lua)
    reader = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("late", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    try:
        assert slow.started.wait(10)
        start = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError):
            reader.get("k", 30, timeout=0.3)
        assert time.monotonic() - start < 1.3
        read = Background(lambda: reader.get("k", 30))
        waiting(reader, 2)
    finally:
        gate.set()
    assert held.result() == "late"
    assert read.result(5) == "late"


def test_foreign_placeholder_with_a_dead_marker_is_taken_over(
    client: Client, raw: RawConnection
) -> None:
    dead = PLACEHOLDER_PREFIX + "0123456789abcdef01234567"
    raw.execute("SET", "k", dead, "PX", 30_000)  # its marker does not exist
    start = time.monotonic()
    assert client.get("k", 30, Loader("mine"), timeout=5) == "mine"
    assert time.monotonic() - start < 1.0
    assert client.stats()["takeovers"] == 1
    assert raw.execute("GET", "k") == b"mine"


def test_foreign_marker_deleted_wakes_the_waiter(client: Client, raw: RawConnection) -> None:
    # The wire protocol of Go's valkeyaside: a placeholder naming a marker key.
    foreign = PLACEHOLDER_PREFIX + "fedcba9876543210fedcba98"
    raw.execute("SET", foreign, "", "PX", 30_000)
    raw.execute("SET", "k", foreign, "PX", 30_000)
    mine = Loader("mine")
    waited = Background(lambda: client.get("k", 30, mine))
    waiting(client)
    assert mine.calls == 0
    raw.execute("DEL", foreign)  # its holder is gone
    deleted_at = time.monotonic()
    assert waited.result(5) == "mine"
    assert waited.finished_at - deleted_at < 1.0
    assert client.stats()["takeovers"] == 1


def test_empty_and_large_values(client: Client, raw: RawConnection) -> None:
    assert client.get("empty", 30, Loader("")) == ""
    assert client.get("empty", 30, Loader("never")) == ""
    assert client.get("empty", 30) == ""
    assert raw.execute("GET", "empty") == b""
    large = "x" * (3 * 1024 * 1024 + 7)
    assert client.get("large", 30, Loader(large)) == large
    assert client.get("large", 30) == large
    assert client.get("large", 30) == large


def test_non_ascii_keys_are_invalidated(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    key = "ключ:日本:🔑 with space"
    raw.execute("SET", key.encode(), "old")
    assert client.get(key, 30) == "old"
    assert client.get(key, 30) == "old"
    raw.execute("SET", key.encode(), "new")
    client.execute("PING")
    assert client.get(key, 30) == "new"


def test_acquire_timeout_leaves_no_lock(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    # The lock command is sent, the caller gives up at its deadline, and the
    # server runs the command later. The lock it takes must not outlive the
    # call: nobody would ever fill it, yet its marker is alive, so everyone
    # else would wait for the whole ttl.
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    assert client.get("warm", 30, Loader("w")) == "w"  # marker and scripts exist
    load = Loader("late")
    raw.execute("CLIENT", "PAUSE", 10_000, "WRITE")  # reads go on, writes wait
    try:
        start = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError):
            client.get("k", 30, load, timeout=0.3)
        assert time.monotonic() - start < 1.3
    finally:
        raw.execute("CLIENT", "UNPAUSE")
    client.execute("PING")  # ordered after the late lock command on its connection
    assert load.calls == 0
    assert raw.execute("EXISTS", "k") == 0, "a lock was left behind"
    assert other.get("k", 30, Loader("other"), timeout=2) == "other"


def test_deadline_bounds_a_paused_server(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("MSET", "k", "v", "j", "w")
    assert client.get("j", 30) == "w"  # connected, and j is hot
    raw.execute("CLIENT", "PAUSE", 700, "ALL")  # ends by itself: UNPAUSE would wait too
    start = time.monotonic()
    with pytest.raises(valkeyaside.TimeoutError):
        client.get("k", 30, timeout=0.2)
    assert time.monotonic() - start < 0.6
    assert client.get("j", 30) == "w"  # a hot key needs no server
    assert client.get("k", 30) == "v"  # the late reply is matched to the right request
    assert client.get("j", 30) == "w"
    raw.execute("SET", "k", "changed")
    client.execute("PING")
    assert client.get("k", 30) == "changed"


def test_deadline_bounds_the_first_connect() -> None:
    # A listener that accepts connections and never answers the handshake.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = Client(f"valkey://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=2)
        try:
            start = time.monotonic()
            with pytest.raises(valkeyaside.TimeoutError):
                client.get("k", 30, Loader("v"), timeout=0.3)
            assert time.monotonic() - start < 1.3
        finally:
            client.close()


def test_concurrent_cold_reads_share_one_request(
    make_client: MakeClient, raw: RawConnection
) -> None:
    client = make_client()
    client.execute("PING")
    raw.execute("SET", "k", "v")
    before = command_calls(raw)
    raw.execute("CLIENT", "PAUSE", 500, "ALL")  # every read below arrives while one is pending
    reads = [Background(lambda: client.get("k", 30)) for _ in range(20)]
    assert [read.result() for read in reads] == ["v"] * 20
    after = command_calls(raw)
    assert after.get("get", 0) - before.get("get", 0) == 1
    assert client.stats()["misses"] == 1


def test_close_wakes_a_waiter(make_client: MakeClient, lua: bool) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("late", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    try:
        assert slow.started.wait(10)
        waited = Background(lambda: waiter.get("k", 30, Loader("never")))
        waiting(waiter)
        closed_at = time.monotonic()
        waiter.close()
        with pytest.raises(valkeyaside.ConnectionError):
            waited.result(5)
        assert waited.finished_at - closed_at < 1.0
    finally:
        gate.set()
    assert held.result() == "late"


def test_absent_key_is_cached_until_written(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    assert client.get("absent", 30) is None
    before = command_calls(raw)
    for _ in range(100):
        assert client.get("absent", 30) is None
    after = command_calls(raw)
    before["info"] = before.get("info", 0) + 1
    assert after == before
    raw.execute("SET", "absent", "here")
    client.execute("PING")
    assert client.get("absent", 30) == "here"


def test_timedelta_ttl_hits_are_local_and_counted(
    make_client: MakeClient, raw: RawConnection
) -> None:
    client = make_client()
    raw.execute("SET", "k", "v")
    ttl = datetime.timedelta(seconds=30)
    assert client.get("k", ttl) == "v"
    before = command_calls(raw)
    hits = client.stats()["hits"]
    for _ in range(100):
        assert client.get("k", ttl) == "v"
    after = command_calls(raw)
    before["info"] = before.get("info", 0) + 1
    assert after == before
    assert client.stats()["hits"] == hits + 100


def test_waiter_whose_connection_drops_keeps_waiting(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("filled", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    mine = Loader("never")
    try:
        assert slow.started.wait(10)
        waited = Background(lambda: waiter.get("k", 30, mine))
        waiting(waiter)
        lost = disconnected(waiter)
        raw.execute("CLIENT", "KILL", "ID", waiter.execute("CLIENT", "ID"))
        assert lost.wait(5)
        waiting(waiter, 2)  # woken by the loss, parked again on a new connection
        filled_at = time.monotonic()
        gate.set()
        assert waited.result(5) == "filled"
        assert waited.finished_at - filled_at < 1.0
    finally:
        gate.set()
    assert held.result() == "filled"
    assert mine.calls == 0


def test_execute_reset_keeps_the_cache_coherent(
    make_client: MakeClient, raw: RawConnection
) -> None:
    client = make_client()
    raw.execute("SET", "k", "v")
    assert client.get("k", 30) == "v"
    assert client.get("k", 30) == "v"
    client.execute("RESET")
    assert client.get("k", 30) == "v"  # read again, tracked again
    raw.execute("SET", "k", "w")
    client.execute("PING")
    assert client.get("k", 30) == "w"


# -- stampedes ------------------------------------------------------------------------


def _hammer(
    client: Client, key: str, load: Loader, start: threading.Barrier, errors: list[BaseException]
) -> None:
    try:
        start.wait(10)
        for _ in range(1000):
            value = client.get(key, 10, load)
            if value != "1":
                raise AssertionError(f"got {value!r}")
    except BaseException as exc:
        errors.append(exc)


def test_ten_clients_one_cold_key_one_load(make_client: MakeClient, lua: bool) -> None:
    clients = [make_client(use_lua_lock=lua) for _ in range(10)]
    for round_ in range(3):
        key = f"cold-{round_}"
        load = Loader("1")
        start = threading.Barrier(len(clients))
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_hammer, args=(c, key, load, start, errors)) for c in clients
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert load.calls == 1
    assert sum(c.stats()["loads"] for c in clients) == 3


@pytest.mark.requires_server(7, 0, reason="SET NX GET needs 7.0")
def test_lock_modes_share_the_protocol(make_client: MakeClient) -> None:
    # Lua-lock and SET-NX-GET clients lock the same keys the same way.
    clients = [make_client(use_lua_lock=i % 2 == 1) for _ in range(3) for i in range(2)]
    load = Loader("1")
    start = threading.Barrier(len(clients))
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_hammer, args=(c, "mixed", load, start, errors)) for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert load.calls == 1


def test_one_client_many_threads_one_load(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua)
    gate = threading.Event()
    load = Loader("1", gate)
    calls = [Background(lambda: client.get("k", 10, load)) for _ in range(30)]
    assert load.started.wait(10)
    gate.set()
    assert [call.result() for call in calls] == ["1"] * 30
    assert load.calls == 1
    assert raw.execute("GET", "k") == b"1"


# -- coherence ------------------------------------------------------------------------


def test_flushdb_on_another_db_flushes_the_local_cache(
    make_client: MakeClient, raw: RawConnection
) -> None:
    client = make_client()
    other_db = make_client(db=1)
    raw.execute("SET", "k", "v")
    assert client.get("k", 30) == "v"
    assert client.get("k", 30) == "v"
    before = client.stats()
    assert before["entries"] == 1
    other_db.execute("SET", "x", "1")
    assert other_db.execute("FLUSHDB") == "OK"
    client.execute("PING")  # the push precedes this reply on the connection
    after = client.stats()
    assert after["flushes"] == before["flushes"] + 1
    assert after["entries"] == 0
    assert client.get("k", 30) == "v"  # db 0 kept it; read from the server again
    assert client.stats()["misses"] == before["misses"] + 1


def test_flushall_wakes_waiters_and_drops_everything(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    raw.execute("SET", "other", "x")
    assert waiter.get("other", 30) == "x"
    gate = threading.Event()
    slow = Loader("holder's", gate)
    held = Background(lambda: holder.get("k", 30, slow))
    try:
        assert slow.started.wait(10)
        mine = Loader("waiter's")
        waited = Background(lambda: waiter.get("k", 30, mine))
        waiting(waiter)
        raw.execute("FLUSHALL")
        assert waited.result(5) == "waiter's"  # the placeholder is gone: it loads
        waiter.execute("PING")
        assert waiter.get("other", 30) is None
    finally:
        gate.set()
    assert held.result() == "holder's"
    assert raw.execute("GET", "k") == b"waiter's"


def test_small_tracking_table_never_serves_stale(
    make_client: MakeClient, raw: RawConnection
) -> None:
    client = make_client()
    keys = [f"key:{i}" for i in range(60)]
    _, original = raw.execute("CONFIG", "GET", "tracking-table-max-keys")
    raw.execute("CONFIG", "SET", "tracking-table-max-keys", 10)
    try:
        for round_ in range(5):
            raw.execute("MSET", *[part for key in keys for part in (key, f"{key}={round_}")])
            client.execute("PING")  # after this reply, every invalidation has arrived
            for _ in range(2):
                for key in keys:
                    assert client.get(key, 30) == f"{key}={round_}"
            # Change every other key one by one, reading in between.
            for i, key in enumerate(keys[::2]):
                raw.execute("SET", key, f"{key}={round_}+")
                client.execute("PING")
                assert client.get(key, 30) == f"{key}={round_}+"
                neighbour = keys[2 * i + 1]
                assert client.get(neighbour, 30) == f"{neighbour}={round_}"
        assert client.stats()["invalidations"] > 0
    finally:
        raw.execute("CONFIG", "SET", "tracking-table-max-keys", original)


def test_server_restart_serves_no_old_value(
    make_client: MakeClient, lua: bool, fresh_server: ValkeyServer
) -> None:
    client = make_client(fresh_server.url, use_lua_lock=lua)
    fresh_server.command("SET", "k", "before")
    assert client.get("k", 30) == "before"
    assert client.get("loaded", 30, Loader("before")) == "before"
    assert client.get("loaded", 30) == "before"
    assert client.get("k", 30) == "before"
    lost = disconnected(client)
    fresh_server.restart()  # nothing is persisted
    assert lost.wait(5)
    assert client.stats()["entries"] == 0
    assert client.get("k", 30) is None
    assert client.get("loaded", 30, Loader("after")) == "after"
    fresh_server.command("SET", "k", "after")
    client.execute("PING")
    assert client.get("k", 30) == "after"


def test_server_killed_then_back(make_client: MakeClient, fresh_server: ValkeyServer) -> None:
    client = make_client(fresh_server.url, connect_timeout=1)
    fresh_server.command("SET", "k", "before")
    assert client.get("k", 30) == "before"
    lost = disconnected(client)
    fresh_server.kill()
    assert lost.wait(5)
    with pytest.raises(valkeyaside.ConnectionError):
        client.get("k", 30)
    fresh_server.start()
    value = client.get("k", 30, Loader("after"))  # reconnects, after its backoff
    assert value == "after"


def test_hot_key_sends_no_command(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("SET", "hot", "v")
    assert client.get("hot", 30) == "v"
    hits = client.stats()["hits"]
    before = command_calls(raw)
    for _ in range(1000):
        assert client.get("hot", 30) == "v"
    after = command_calls(raw)
    assert after.get("get") == before.get("get")
    before["info"] = before.get("info", 0) + 1  # the first INFO counts in the second
    assert after == before
    assert client.stats()["hits"] == hits + 1000


def test_filled_key_hot_after_one_read(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua)
    assert client.get("k", 30, Loader("v")) == "v"
    assert client.get("k", 30, Loader("v")) == "v"
    before = command_calls(raw)
    for _ in range(200):
        assert client.get("k", 30, Loader("never")) == "v"
    after = command_calls(raw)
    before["info"] = before.get("info", 0) + 1
    assert {k: v for k, v in after.items() if k != "set"} == {
        k: v
        for k, v in before.items()
        if k != "set"  # a marker refresh may land here
    }


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"k", 1, None, ["k"]], ids=["bytes", "int", "none", "list"])
def test_key_must_be_str(make_client: MakeClient, raw: RawConnection, key: Any) -> None:
    client = make_client()
    load = Loader("v")
    with pytest.raises(TypeError):
        client.get(key, 30, load)
    assert load.calls == 0
    assert raw.execute("DBSIZE") == 0


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (0.0, ValueError),
        (-0.5, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (datetime.timedelta(0), ValueError),
        (datetime.timedelta(seconds=-1), ValueError),
        ("10", TypeError),
        (None, TypeError),
        (True, TypeError),
        (b"1", TypeError),
    ],
    ids=[
        "0",
        "-1",
        "0.0",
        "-0.5",
        "nan",
        "inf",
        "timedelta-0",
        "timedelta-neg",
        "str",
        "None",
        "True",
        "bytes",
    ],
)
def test_ttl_must_be_positive_seconds(
    make_client: MakeClient, raw: RawConnection, ttl: Any, error: type[Exception]
) -> None:
    client = make_client()
    raw.execute("SET", "hot", "v")
    assert client.get("hot", 30) == "v"
    assert client.get("hot", 30) == "v"
    load = Loader("v")
    with pytest.raises(error):
        client.get("cold", ttl, load)
    with pytest.raises(error):
        client.get("hot", ttl)  # a local hit checks it too
    if ttl is not None:  # timeout=None means no timeout
        with pytest.raises(error):
            client.get("cold", 30, load, timeout=ttl)
    assert load.calls == 0
    assert raw.execute("DBSIZE") == 1


class _Key(str):
    pass


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("returned", call())
    except (TypeError, ValueError) as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize(
    "args",
    [
        (_Key("k"), 30, {}),
        ("k", float("inf"), {}),
        ("k", 30, {"timeout": 0}),
        ("k", 30, {"timeout": -1}),
        ("k", 30, {"timeout": "1"}),
    ],
    ids=["str-subclass-key", "ttl-inf", "timeout-0", "timeout-negative", "timeout-str"],
)
def test_validation_does_not_depend_on_the_local_cache(
    make_client: MakeClient, raw: RawConnection, args: tuple[Any, Any, dict[str, Any]]
) -> None:
    key, ttl, options = args
    raw.execute("SET", "k", "v")
    client = make_client()
    cold = _outcome(lambda: client.get(key, ttl, **options))
    assert client.get("k", 30) == "v"
    assert client.get("k", 30) == "v"  # now a local hit
    hot = _outcome(lambda: client.get(key, ttl, **options))
    assert hot == cold


def test_fn_must_be_callable(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    with pytest.raises(TypeError):
        client.get("k", 30, "not callable")  # type: ignore[arg-type]
    assert raw.execute("DBSIZE") == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1, TypeError),
        (1.5, TypeError),
        (["v"], TypeError),
        (bytearray(b"v"), TypeError),
        (PLACEHOLDER_PREFIX + "0" * 24, ValueError),
        (PLACEHOLDER_PREFIX.encode(), ValueError),
        (TOMBSTONE, ValueError),
    ],
    ids=["int", "float", "list", "bytearray", "placeholder-str", "placeholder-bytes", "tombstone"],
)
def test_bad_loader_value_is_refused_and_the_lock_released(
    client: Client, raw: RawConnection, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client.get("k", 30, Loader(value))
    assert raw.execute("EXISTS", "k") == 0
    start = time.monotonic()
    assert client.get("k", 30, Loader("good"), timeout=2) == "good"
    assert time.monotonic() - start < 1.0


def test_loader_exception_reaches_the_caller_and_releases(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    boom = KeyError("boom")

    def fail(key: str) -> str:
        raise boom

    with pytest.raises(KeyError) as info:
        client.get("k", 30, fail)
    assert info.value is boom
    assert raw.execute("EXISTS", "k") == 0
    for reader in (other, client):
        start = time.monotonic()
        assert reader.get("k", 30, Loader("next"), timeout=2) == "next"
        assert time.monotonic() - start < 1.0
        reader.delete("k")


def test_loader_exception_wakes_waiters(make_client: MakeClient, lua: bool) -> None:
    holder = make_client(use_lua_lock=lua)
    waiter = make_client(use_lua_lock=lua)
    gate = threading.Event()
    boom = ValueError("boom")

    def fail(key: str) -> str:
        failing.started.set()
        assert gate.wait(10)
        raise boom

    failing = Loader()
    held = Background(lambda: holder.get("k", 30, fail))
    try:
        assert failing.started.wait(10)
        mine = Loader("waiter's")
        waited = Background(lambda: waiter.get("k", 30, mine))
        waiting(waiter)
        released_at = time.monotonic()
        gate.set()
        assert waited.result(5) == "waiter's"
        assert waited.finished_at - released_at < 1.0
    finally:
        gate.set()
    with pytest.raises(ValueError) as info:
        held.result()
    assert info.value is boom


def test_wrongtype_is_a_response_error(client: Client, raw: RawConnection) -> None:
    raw.execute("LPUSH", "list", "x")
    load = Loader("v")
    for fn in (None, load):
        with pytest.raises(valkeyaside.ResponseError) as info:
            client.get("list", 30, fn)
        assert info.value.code == "WRONGTYPE"
        assert str(info.value).startswith("WRONGTYPE")
    assert load.calls == 0
    assert raw.execute("TYPE", "list") == "list"
    raw.execute("DEL", "list")
    assert client.get("list", 30, load) == "v"


def test_execute_errors_and_refusals(make_client: MakeClient) -> None:
    client = make_client()
    with pytest.raises(valkeyaside.ResponseError):
        client.execute("NOSUCHCOMMAND")
    for refused in (("SELECT", 1), ("MULTI",), ("CLIENT", "TRACKING", "OFF"), ("subscribe", "c")):
        with pytest.raises(ValueError):
            client.execute(*refused)
    assert client.execute("PING") == "PONG"


def test_closed_port_is_a_connection_error_quickly() -> None:
    client = Client(f"valkey://127.0.0.1:{free_port()}")
    try:
        for fn in (None, Loader("v")):
            start = time.monotonic()
            with pytest.raises(valkeyaside.ConnectionError) as info:
                client.get("k", 30, fn)
            assert time.monotonic() - start < 2.0
            assert isinstance(info.value, builtins.ConnectionError)
            assert isinstance(info.value, valkeyaside.ValkeyError)
    finally:
        client.close()


# -- typed values, encodings, counters --------------------------------------------------


def test_typed_client_json(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    typed: TypedClient[Any] = TypedClient(make_client(use_lua_lock=lua), json.dumps, json.loads)
    document = {"name": "valkey", "tags": ["cache", "aside"], "n": 3, "ok": True}
    load = Loader(document)
    assert typed.get("doc", 30, load) == document
    assert json.loads(raw.execute("GET", "doc")) == document
    assert typed.get("doc", 30, load) == document
    assert typed.get("doc", 30) == document
    assert load.calls == 1
    assert typed.get("missing", 30) is None
    assert typed.get("none", 30, Loader(None)) is None
    assert raw.execute("GET", "none") == TOMBSTONE
    assert typed.delete("doc") == 1
    assert typed.get("doc", 30) is None


def test_encoding_none_returns_bytes(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client(encoding=None)
    binary = bytes(range(256))
    assert client.get("bin", 30, Loader(binary)) == binary
    assert client.get("bin", 30) == binary
    assert client.get("bin", 30) == binary  # a hit
    assert raw.execute("GET", "bin") == binary
    assert client.get("text", 30, Loader("héllo")) == "héllo".encode()
    raw.execute("SET", "raw", "héllo".encode())
    assert client.get("raw", 30) == "héllo".encode()


def test_invalidations_count_keys(make_client: MakeClient, raw: RawConnection) -> None:
    """The counter counts the keys the server invalidated, also when their pushes
    arrive together (the exchange hands a run of them on as one)."""
    client = make_client()
    keys = [f"inv:{i}" for i in range(50)]
    for key in keys:
        assert client.get(key, 30, Loader("v")) == "v"
    assert client.execute("PING") == "PONG"  # every read behind a fill is in
    before = client.stats()["invalidations"]
    for key in keys:  # 50 separate writes, their pushes sent close together
        raw.send("DEL", key)
    assert [raw.read_reply() for _ in keys] == [1] * len(keys)
    assert client.execute("PING") == "PONG"  # every push was applied before this reply
    assert client.stats()["invalidations"] == before + len(keys)
    assert client.stats()["entries"] == 0


def test_other_encoding(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client(encoding="latin-1")
    assert client.get("k", 30, Loader("é")) == "é"
    assert raw.execute("GET", "k") == b"\xe9"
    with pytest.raises(LookupError):
        Client("valkey://127.0.0.1:1", encoding="no-such-codec")


def test_stats_counters(make_client: MakeClient, lua: bool, raw: RawConnection) -> None:
    client = make_client(use_lua_lock=lua)
    names = (
        "hits",
        "misses",
        "loads",
        "lock_waits",
        "takeovers",
        "invalidations",
        "flushes",
        "evictions",
        "entries",
        "bytes",
    )
    assert {name: client.stats()[name] for name in names} == dict.fromkeys(names, 0)
    assert client.get("k", 30, Loader("v")) == "v"
    stats = client.stats()
    assert (stats["misses"], stats["loads"], stats["hits"]) == (1, 1, 0)
    assert client.execute("PING") == "PONG"  # the read sent behind the fill came back first
    assert client.get("k", 30) == "v"  # the fill's value was kept locally: hits
    assert client.get("k", 30) == "v"
    assert client.get("k", 30) == "v"
    stats = client.stats()
    assert (stats["misses"], stats["loads"], stats["hits"]) == (1, 1, 3)
    assert stats["entries"] == 1
    assert stats["bytes"] > 0
    invalidations = stats["invalidations"]
    raw.execute("SET", "k", "w")
    client.execute("PING")
    stats = client.stats()
    assert stats["invalidations"] == invalidations + 1
    assert stats["entries"] == 0
    assert stats["bytes"] == 0
    assert client.get("k", 30) == "w"
    assert client.stats()["misses"] == 2


def test_the_fill_hands_its_value_over(make_client: MakeClient, lua: bool,
                                       raw: RawConnection) -> None:
    """After a miss and fill, the next get makes no round trip (commandstats)."""
    client = make_client(use_lua_lock=lua)
    assert client.get("k", 30, Loader("v")) == "v"
    assert client.execute("PING") == "PONG"  # the read behind the fill is answered
    before = command_calls(raw)
    for _ in range(3):
        assert client.get("k", 30) == "v"
    after = command_calls(raw)
    after["info"] -= 1  # our own look
    assert after == before, "a get after the fill went to the server"
    raw.execute("SET", "k", "w")  # still tracked: an outside write is seen
    assert client.execute("PING") == "PONG"
    assert client.get("k", 30) == "w"


def test_cache_max_bytes_evicts(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client(cache_max_bytes=4096)
    keys = [f"k{i}" for i in range(100)]
    raw.execute("MSET", *[part for key in keys for part in (key, key * 10)])
    for key in keys:
        assert client.get(key, 30) == key * 10
    stats = client.stats()
    assert stats["evictions"] > 0
    assert stats["bytes"] <= 4096
    for key in keys:  # evicted ones are read again, never wrong
        assert client.get(key, 30) == key * 10


def test_db_option_and_url_db(make_client: MakeClient, server_url: str, raw: RawConnection) -> None:
    on_two = make_client(f"{server_url}/2")
    by_option = make_client(db=2)
    assert on_two.get("k", 30, Loader("two")) == "two"
    assert by_option.get("k", 30) == "two"
    raw.execute("SELECT", 2)
    assert raw.execute("GET", "k") == b"two"
    raw.execute("SET", "k", "changed")
    by_option.execute("PING")
    on_two.execute("PING")
    assert by_option.get("k", 30) == "changed"
    assert on_two.get("k", 30) == "changed"
    raw.execute("SELECT", 0)
    assert raw.execute("EXISTS", "k") == 0


def test_unix_socket(
    make_client: MakeClient, valkey_server: ValkeyServer, raw: RawConnection
) -> None:
    client = make_client(valkey_server.unix_url, use_lua_lock=True)
    assert client.get("k", 30, Loader("v")) == "v"
    assert client.get("k", 30) == "v"
    raw.execute("SET", "k", "w")
    client.execute("PING")
    assert client.get("k", 30) == "w"


def test_context_manager_closes(server_url: str, raw: RawConnection) -> None:
    markers: list[bytes] = []

    def load(key: str) -> str:
        markers.append(raw.execute("GET", key))
        return "v"

    with Client(server_url) as client:
        assert client.get("k", 30, load) == "v"
        assert raw.execute("EXISTS", markers[0]) == 1
    assert raw.execute("EXISTS", markers[0]) == 0
    with pytest.raises(valkeyaside.ConnectionError):
        client.execute("PING")


# -- callers of one client on one key -----------------------------------------------


def test_callers_of_one_client_follow_the_first_and_go_on_when_it_fails(
    make_client: MakeClient, raw: RawConnection
) -> None:
    # 20 callers miss a key that a 21st is loading: they follow it. Its loader
    # raises: the exception is its own; the followers go on, one loads, all get
    # that value, and each sees the value a follower would have read.
    client = make_client()
    gate = threading.Event()

    def failing(key: str) -> str:
        assert gate.wait(10)
        raise LookupError("the database said no")

    second = Loader("second")
    first = Background(lambda: client.get("k", 30, failing))
    wait_until(lambda: raw.execute("GET", "k") is not None, 10, "the first to lock")
    followers = [Background(lambda: client.get("k", 30, second)) for _ in range(20)]
    waiting(client, 20)
    gate.set()
    with pytest.raises(LookupError):
        first.result(10)
    assert [f.result(10) for f in followers] == ["second"] * 20
    assert second.calls == 1
    assert raw.execute("GET", "k") == b"second"


def test_threads_that_follow_a_get_leave_no_descriptor_behind(make_client: MakeClient) -> None:
    # The threads that follow one get sleep on one pipe, which the last of them
    # (or the get that lands) closes: loaded or failed, nothing stays open.
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts this process's descriptors in /proc")
    client = make_client()
    assert client.get("warm", 30, Loader("w")) == "w"
    before = _open_descriptors()
    for round_, outcome in enumerate(["v", LookupError("no"), "v"]):
        gate = threading.Event()
        key = f"followed:{round_}"

        def load(_key: str, outcome: Any = outcome, gate: threading.Event = gate) -> str:
            assert gate.wait(10)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome  # type: ignore[no-any-return]

        first = Background(lambda key=key, load=load: client.get(key, 30, load))
        wait_until(lambda key=key: client._flights._by_key.get((key, False)) is not None,
                   10, "the first get under way")
        followers = [Background(lambda key=key: client.get(key, 30, Loader("second")))
                     for _ in range(10)]
        waiting(client, 10 * (round_ + 1))
        gate.set()
        if isinstance(outcome, Exception):
            with pytest.raises(LookupError):
                first.result(10)
            assert [f.result(10) for f in followers] == ["second"] * 10
        else:
            assert [first.result(10)] + [f.result(10) for f in followers] == ["v"] * 11
    wait_until(lambda: _open_descriptors() <= before, 10,
               f"descriptors back to {before} (now {_open_descriptors()})")


def _open_descriptors() -> int:
    """Open descriptors, less the pipes of live threads' wakers (a thread makes
    its own the first time it sleeps, and keeps it while it lives: the marker's
    keeper, say, whenever it first sleeps)."""
    gc.collect()  # a finished thread's waker goes with it; a failed call's traceback may hold it
    wakers = [waker for waker in list(_wakers._wakers) if waker._read_fd >= 0]
    return len(os.listdir("/proc/self/fd")) - 2 * len(wakers)


def test_a_caller_with_less_time_does_not_follow(make_client: MakeClient) -> None:
    client = make_client()
    gate = threading.Event()
    slow = Loader("slow", gate)
    first = Background(lambda: client.get("t", 30, slow))
    assert slow.started.wait(10)
    began = time.monotonic()
    with pytest.raises(valkeyaside.TimeoutError):
        client.get("t", 30, slow, timeout=0.2)
    assert 0.2 <= time.monotonic() - began < 0.8
    gate.set()
    assert first.result(10) == "slow"
