"""get_many and @client.cached against a real server.

Every get_many test runs against both front ends (``front``: the threaded
``Client`` and the ``AsyncClient`` behind ``frontends.AsyncFront``), and in
both lock modes where a lock is taken. The decorator is tested on ``Client``
and, with a real ``async def``, on ``AsyncClient`` under ``asyncio.run``.
The race of many processes is in test_batch_processes.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Iterable, Iterator, Optional

import pytest
from helpers import Background, Loader, MakeClient, command_calls, diff, waiting
from requires import skip_below_server, too_old
from server import RawConnection

import valkeyaside
from valkeyaside import PLACEHOLDER_PREFIX, TOMBSTONE, AsyncClient, Client

_PLACEHOLDER = PLACEHOLDER_PREFIX.encode()
DEAD = PLACEHOLDER_PREFIX + "0123456789abcdef01234567"  # names no marker key


# -- helpers ----------------------------------------------------------------------


#: How INFO commandstats names CLIENT CACHING: as a subcommand from 7.0, under CLIENT before.
CACHING = "client|caching" if too_old(7, 0) is None else "client"


class ManyLoader:
    """A get_many loader that records each call's keys; with a gate, it holds its
    locks until the gate opens. ``values`` overrides what it returns per key,
    ``omit`` leaves keys out; otherwise each key gets ``prefix + key``."""

    def __init__(self, prefix: str = "v:", *, gate: Optional[threading.Event] = None,
                 values: Optional[dict[str, Any]] = None, omit: Iterable[str] = (),
                 result: Any = None, error: Optional[BaseException] = None) -> None:
        self.prefix = prefix
        self.gate = gate
        self.values = values or {}
        self.omit = set(omit)
        self.result = result
        self.error = error
        self.calls: list[list[str]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, missing: list[str]) -> Any:
        with self._lock:
            self.calls.append(list(missing))
        self.started.set()
        if self.gate is not None and not self.gate.wait(20):
            raise AssertionError("the gate of the loader was never opened")
        if self.error is not None:
            raise self.error
        if self.result is not None:
            return self.result
        return {key: self.values.get(key, self.prefix + key)
                for key in missing if key not in self.omit}

    @property
    def keys(self) -> list[str]:
        return [key for call in self.calls for key in call]


def placeholders(raw: RawConnection, keys: Iterable[str]) -> dict[str, bytes]:
    """The keys among ``keys`` whose value on the server is a lock."""
    held = {}
    for key in keys:
        value = raw.execute("GET", key)
        if isinstance(value, bytes) and value.startswith(_PLACEHOLDER):
            held[key] = value
    return held


# -- fixtures -----------------------------------------------------------------------


# -- hot, cold, mixed ---------------------------------------------------------------------


def test_fills_are_encoded_as_encode_command_would() -> None:
    from valkeyaside.lock._locks import _fill_payloads
    from valkeyaside.lock._scripts import SET_IF_HOLDER
    from valkeyaside.resp3 import encode_command

    fills = [("k", b"v", 60000), ("caf\u00e9:\u20ac", b"\x00\r\n$1\r\n", 7), ("", b"", 60000),
             ("k" * 300, b"x" * 70000, 1)]
    marker = PLACEHOLDER_PREFIX + "0123456789abcdef01234567"
    assert _fill_payloads(fills, marker) == [
        encode_command("EVALSHA", SET_IF_HOLDER.sha, 1, key, marker, value, ttl_ms)
        for key, value, ttl_ms in fills]


def test_many_key_fills_are_encoded_as_encode_command_would() -> None:
    from valkeyaside.lock._locks import _fill_many_payload
    from valkeyaside.lock._scripts import SET_IF_HOLDER_MANY
    from valkeyaside.resp3 import encode_command

    fills = [("k", b"v", 60000), ("caf\u00e9:\u20ac", b"\x00\r\n$1\r\n", 7), ("", b"", 60000),
             ("k" * 300, b"x" * 70000, 1)]
    marker = PLACEHOLDER_PREFIX + "0123456789abcdef01234567"
    for some in (fills[:1], fills):
        assert _fill_many_payload(some, marker) == encode_command(
            "EVALSHA", SET_IF_HOLDER_MANY.sha, len(some), *(key for key, _, _ in some), marker,
            *(arg for _, value, ttl_ms in some for arg in (value, ttl_ms)))


def test_shared_reads_are_encoded_as_encode_command_would() -> None:
    from valkeyaside.cache._tracking import CachedRead, SharedRead
    from valkeyaside.resp3 import encode_command

    keys = ["k", "caf\u00e9:\u20ac", "", "k\r\n$1\r\n" * 40]
    for some in (keys[:2], keys):
        reads = [CachedRead(key, 1.0, lambda _request: None) for key in some]
        for tracked in (True, False):
            commands = [*([("CLIENT", "CACHING", "YES")] if tracked else []), ("MULTI",),
                        *(("PTTL", key) for key in some), ("MGET", *some), ("EXEC",)]
            shared = SharedRead(reads, tracked, lambda *_args: [])
            assert shared.payload == b"".join(encode_command(*c) for c in commands)
            assert shared.expected == len(commands)


def test_all_hot_sends_no_command(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    keys = [f"hot{i}" for i in range(20)]
    raw.execute("MSET", *(part for key in keys for part in (key, f"value of {key}")))
    expected = {key: f"value of {key}" for key in keys}
    assert client.get_many(keys, 30) == expected
    hits = client.stats()["hits"]
    never = ManyLoader()
    before = command_calls(raw)
    for _ in range(50):
        assert client.get_many(keys, 30, never) == expected
    assert client.get_many(reversed(keys), 30) == dict(reversed(expected.items()))  # an iterable
    assert client.get_many(tuple(keys[:3]), 30, never, timeout=5) == {  # not the fast path
        key: expected[key] for key in keys[:3]
    }
    after = command_calls(raw)
    assert diff(before, after) == {}
    assert never.calls == []
    assert client.stats()["hits"] == hits + 50 * 20 + 20 + 3


#: Whether the server fills many keys with ``SET ... IFEQ`` (Valkey 8.1+).
IFEQ = too_old(8, 1, product="Valkey") is None


def locks_and_fills(n: int, lua: bool) -> Counter[str]:
    """The commands (as commandstats counts them: a script's too) that lock and
    fill ``n`` cold keys of one ``get_many``.

    Locks: a Lua script call per key (its GET and SET), or a SET NX GET per
    key, several keys as one transaction. Fills: one key, the set-if-holder
    script (its GET and SET); several, a SET IFEQ each on Valkey 8.1+, else
    one call of the many-key script (a GET and SET per key).
    """
    if lua:
        locks = Counter({"evalsha": n, "get": n, "set": n})
    else:
        locks = Counter({"set": n, **({"multi": 1, "exec": 1} if n > 1 else {})})
    by_ifeq = n > 1 and IFEQ
    return locks + Counter({"set": n} if by_ifeq else {"evalsha": 1, "get": n, "set": n})


def read_of(n: int) -> Counter[str]:
    """The commands of one cached read of ``n`` keys: ``CLIENT CACHING``, ``MULTI``,
    a ``PTTL`` per key, one ``MGET`` of them all (one key: ``GET``), ``EXEC``."""
    return Counter({CACHING: 1, "multi": 1, "pttl": n, "get" if n == 1 else "mget": 1,
                    "exec": 1})


def read_behind_fills(n: int) -> Counter[str]:
    """The commands of the tracked read that hands ``n`` filled keys over: on
    Valkey 8.1+, several keys' fills and one ``EXISTS`` of them are one
    transaction (the fills are in ``locks_and_fills``); else a cached read."""
    if n > 1 and IFEQ:
        return Counter({CACHING: 1, "multi": 1, "exists": 1, "exec": 1})
    return read_of(n)


@pytest.mark.parametrize("size", [1, 20])
def test_all_cold_one_load_and_one_command_of_each_kind_per_key(
    make_client: MakeClient, lua: bool, raw: RawConnection, size: int
) -> None:
    client = make_client(use_lua_lock=lua, client_ttl=60)  # no marker refresh in the count
    assert client.get("warm", 30, Loader("w")) == "w"  # the marker and the scripts exist
    client.execute("PING")
    keys = [f"cold{i:02d}" for i in reversed(range(size))]
    load = ManyLoader()
    before = command_calls(raw)
    values = client.get_many(keys, 30, load)
    assert client.execute("PING") == "PONG"  # every request of the call has been answered
    after = command_calls(raw)
    assert list(values.items()) == [(key, f"v:{key}") for key in keys]  # in the order given
    assert len(load.calls) == 1
    assert sorted(load.calls[0]) == sorted(keys)
    n = size
    # The reads of all keys are one transaction, and so is the read behind the
    # fills that hands the values over. Per key, a lock and a fill: see
    # ``locks_and_fills``.
    reads = read_of(n) + read_behind_fills(n)
    expected = reads + locks_and_fills(n, lua) + Counter({"ping": 1})
    assert diff(before, after) == expected, diff(before, after)
    for key in keys:
        assert raw.execute("GET", key) == f"v:{key}".encode()
        assert 29_000 < raw.execute("PTTL", key) <= 30_000
    assert client.stats()["loads"] == 2  # warm, then the one of get_many
    # The fill handed the values over: the next call is answered locally.
    before = command_calls(raw)
    assert client.get_many(keys, 30, load) == values
    assert diff(before, command_calls(raw)) == {}
    assert len(load.calls) == 1


def test_many_locks_go_in_transactions_of_at_most_lock_chunk(
    make_client: MakeClient, raw: RawConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four keys to lock, two locks a transaction: two transactions, in the one
    write of the locks; each key locked, loaded by the one call and filled."""
    skip_below_server(7, 0, "SET NX GET needs 7.0")
    monkeypatch.setattr("valkeyaside.lock._locks.LOCK_CHUNK", 2)
    client = make_client(use_lua_lock=False, client_ttl=60)
    assert client.get("warm", 30, Loader("w")) == "w"
    client.execute("PING")
    keys = [f"chunked{i}" for i in range(5)]
    raw.execute("SET", "chunked3", "there")  # found by the read: not locked
    load = ManyLoader()
    before = command_calls(raw)
    values = client.get_many(keys, 30, load)
    client.execute("PING")
    after = command_calls(raw)
    assert values == {**{key: f"v:{key}" for key in keys}, "chunked3": "there"}
    assert load.calls == [["chunked0", "chunked1", "chunked2", "chunked4"]]
    calls = diff(before, after)
    assert (calls["multi"], calls["exec"], calls["set"]) == (2 + 2, 2 + 2, 4 + 4), calls
    assert [raw.execute("GET", key) for key in keys] == [
        b"v:chunked0", b"v:chunked1", b"v:chunked2", b"there", b"v:chunked4"]


def test_mixed_hot_on_the_server_and_cold(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua, client_ttl=60)
    assert client.get("warm", 30, Loader("w")) == "w"
    raw.execute("SET", "hot", "h")
    raw.execute("SET", "server", "s")
    assert client.get("hot", 30) == "h"  # kept locally
    client.execute("PING")
    load = ManyLoader()
    before = command_calls(raw)
    values = client.get_many(["server", "cold", "hot", "cold2"], 30, load)
    client.execute("PING")
    after = command_calls(raw)
    assert list(values.items()) == [("server", "s"), ("cold", "v:cold"), ("hot", "h"),
                                    ("cold2", "v:cold2")]
    assert len(load.calls) == 1 and sorted(load.calls[0]) == ["cold", "cold2"]
    # One transaction reads server, cold and cold2, one reads behind the two
    # fills; none reads hot. Locks and fills of cold and cold2.
    reads = read_of(3) + read_behind_fills(2)
    expected = reads + locks_and_fills(2, lua) + Counter({"ping": 1})
    assert diff(before, after) == expected, diff(before, after)
    assert raw.execute("GET", "server") == b"s"
    assert raw.execute("PTTL", "server") == -1  # a value found is not written
    assert raw.execute("GET", "cold2") == b"v:cold2"


def test_without_a_loader_nothing_is_locked(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("SET", "here", "1")
    assert client.get_many(["absent", "here"], 30) == {"absent": None, "here": "1"}
    assert raw.execute("EXISTS", "absent") == 0
    assert client.stats()["loads"] == 0
    raw.execute("SET", "absent", "2")  # the absent key was tracked: the write is seen
    client.execute("PING")
    assert client.get_many(["absent", "here"], 30) == {"absent": "2", "here": "1"}


def test_a_key_of_another_type_is_refused_as_get_refuses_it(
    make_client: MakeClient, raw: RawConnection
) -> None:
    """The shared read's MGET answers nil for a list; PTTL says the key exists,
    so it is read again by itself, and GET's WRONGTYPE is the answer."""
    client = make_client()
    raw.execute("SET", "string", "s")
    raw.execute("RPUSH", "list", "x")
    raw.execute("RPUSH", "expiring list", "x")
    raw.execute("PEXPIRE", "expiring list", 60_000)
    load = ManyLoader()
    for bad in ("list", "expiring list"):
        for fn in (None, load):
            before = command_calls(raw)
            with pytest.raises(valkeyaside.ResponseError) as info:
                client.get_many(["string", bad, "absent"], 30, fn)
            assert info.value.code == "WRONGTYPE"
            assert diff(before, command_calls(raw))["get"] == 1  # the one read again
    assert load.calls == []
    assert raw.execute("TYPE", "list") == "list"
    assert client.get_many(["string", "absent"], 30) == {"string": "s", "absent": None}


def test_duplicates(client: Client, raw: RawConnection) -> None:
    load = ManyLoader()
    values = client.get_many(["b", "a", "b", "c", "a", "b"], 30, load)
    assert list(values.items()) == [("b", "v:b"), ("a", "v:a"), ("c", "v:c")]
    assert len(load.calls) == 1
    assert sorted(load.calls[0]) == ["a", "b", "c"]  # each key once
    # All hot now (the local path): one entry per key, in the order of first appearance.
    again = client.get_many(["c", "a", "c", "c", "b"], 30, load)
    assert list(again.items()) == [("c", "v:c"), ("a", "v:a"), ("b", "v:b")]
    # Partly hot, partly cold (the full path).
    mixed = client.get_many(["d", "a", "d", "e", "a"], 30, load)
    assert list(mixed.items()) == [("d", "v:d"), ("a", "v:a"), ("e", "v:e")]
    assert len(load.calls) == 2 and sorted(load.calls[1]) == ["d", "e"]
    assert client.get_many([], 30, load) == {}
    assert len(load.calls) == 2


# -- refused before anything is sent --------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [["a", b"b"], ["a", 1], ["a", None], ["hot", b"hot"], ["hot", ["x"]], "hot", b"hot", None, 5],
    ids=["bytes", "int", "none", "hot-then-bytes", "hot-then-list", "lone-str", "lone-bytes",
         "none-keys", "not-iterable"],
)
def test_non_str_keys_are_refused_before_anything_is_sent(
    make_client: MakeClient, raw: RawConnection, keys: Any
) -> None:
    client = make_client()
    raw.execute("SET", "hot", "h")
    assert client.get("hot", 30) == "h"  # connected, and "hot" is kept locally
    load = ManyLoader()
    before = command_calls(raw)
    with pytest.raises(TypeError):
        client.get_many(keys, 30, load)
    assert diff(before, command_calls(raw)) == {}
    assert load.calls == []
    assert raw.execute("DBSIZE") == 1


def test_bad_ttl_timeout_and_fn_are_refused(make_client: MakeClient, raw: RawConnection) -> None:
    client = make_client()
    raw.execute("SET", "hot", "h")
    assert client.get("hot", 30) == "h"
    before = command_calls(raw)
    for ttl in (0, -1, float("inf"), "30", None):
        with pytest.raises((TypeError, ValueError)):
            client.get_many(["hot", "cold"], ttl, ManyLoader())
        with pytest.raises((TypeError, ValueError)):
            client.get_many(["hot"], ttl)  # even when every key is hot
    with pytest.raises(ValueError):
        client.get_many(["hot"], 30, timeout=0)
    with pytest.raises(TypeError):
        client.get_many(["cold"], 30, "not callable")  # type: ignore[arg-type]
    assert diff(before, command_calls(raw)) == {}


# -- the loader's failures ------------------------------------------------------------------


def test_fn_raising_releases_every_lock(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    raw.execute("SET", "found", "f")
    boom = KeyError("boom")
    failing = ManyLoader(error=boom)
    with pytest.raises(KeyError) as info:
        client.get_many(["a", "found", "b", "c"], 30, failing)
    assert info.value is boom
    assert sorted(failing.keys) == ["a", "b", "c"]
    for key in ("a", "b", "c"):
        assert raw.execute("EXISTS", key) == 0, f"{key} was left locked"
    assert raw.execute("GET", "found") == b"f"
    for reader in (other, client):  # nobody waits for a lock that was left behind
        start = time.monotonic()
        assert reader.get_many(["a", "b", "c"], 30, ManyLoader("next:"), timeout=2) == {
            "a": "next:a", "b": "next:b", "c": "next:c"}
        assert time.monotonic() - start < 1.0
        reader.delete("a", "b", "c")


def test_fn_omitting_keys_stores_tombstones(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    load = ManyLoader(omit={"b", "c"})
    assert client.get_many(["a", "b", "c"], 30, load) == {"a": "v:a", "b": None, "c": None}
    assert raw.execute("GET", "b") == TOMBSTONE
    assert raw.execute("GET", "c") == TOMBSTONE
    assert 29_000 < raw.execute("PTTL", "b") <= 30_000
    never = Loader("never")
    for reader in (client, other):
        assert reader.get("b", 30, never) is None
        assert reader.get_many(["c", "a"], 30, ManyLoader("never")) == {"c": None, "a": "v:a"}
    assert never.calls == 0
    assert len(load.calls) == 1


def test_tombstones_filled_with_the_negative_ttl_values_with_the_ttl(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    # One fill, two TTLs: each key is stored with its own.
    client = make_client(use_lua_lock=lua, negative_ttl=5)
    load = ManyLoader(omit={"b", "d"})
    assert client.get_many(["a", "b", "c", "d"], 30, load) == {
        "a": "v:a", "b": None, "c": "v:c", "d": None}
    assert [raw.execute("GET", key) for key in "abcd"] == [b"v:a", TOMBSTONE, b"v:c", TOMBSTONE]
    ttls = [raw.execute("PTTL", key) for key in "abcd"]
    assert all(29_000 < ttl <= 30_000 for ttl in ttls[::2]), ttls
    assert all(4_000 < ttl <= 5_000 for ttl in ttls[1::2]), ttls
    # The values were handed over, each kept locally for its own TTL.
    client.execute("PING")  # the read behind the fills is answered
    now = time.monotonic()
    left = [client._entries[key].expires - now for key in "abcd"]
    assert all(29 < ttl <= 30 for ttl in left[::2]), left
    assert all(4 < ttl <= 5 for ttl in left[1::2]), left


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (1, TypeError),
        (1.5, TypeError),
        (["x"], TypeError),
        (bytearray(b"x"), TypeError),
        (PLACEHOLDER_PREFIX + "0" * 24, ValueError),
        (TOMBSTONE, ValueError),
    ],
    ids=["int", "float", "list", "bytearray", "placeholder", "tombstone"],
)
def test_fn_returning_a_bad_value_fills_nothing(
    client: Client, raw: RawConnection, bad: Any, error: type[Exception]
) -> None:
    load = ManyLoader(values={"b": bad})
    with pytest.raises(error):
        client.get_many(["a", "b", "c"], 30, load)
    for key in ("a", "b", "c"):
        assert raw.execute("EXISTS", key) == 0, f"{key} was filled or left locked"
    start = time.monotonic()
    assert client.get_many(["a", "b", "c"], 30, ManyLoader("good:"), timeout=2) == {
        "a": "good:a", "b": "good:b", "c": "good:c"}
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("result", [["a", "b"], "a", 1], ids=["list", "str", "int"])
def test_fn_returning_a_non_mapping(client: Client, raw: RawConnection, result: Any) -> None:
    with pytest.raises(TypeError):
        client.get_many(["a", "b"], 30, ManyLoader(result=result))
    assert raw.execute("EXISTS", "a", "b") == 0
    assert client.get_many(["a", "b"], 30, ManyLoader(), timeout=2) == {"a": "v:a", "b": "v:b"}


# -- keys others hold ------------------------------------------------------------------------


def test_keys_held_by_another_client_live_and_dead(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua)
    client = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("holder's", gate)
    held = Background(lambda: holder.get("live", 30, slow))
    try:
        assert slow.started.wait(10)
        raw.execute("SET", "dead", DEAD, "PX", 30_000)  # its holder is gone
        load = ManyLoader()
        many = Background(lambda: client.get_many(["c1", "live", "dead", "c2"], 30, load))
        waiting(client)  # parked on "live" only after loading the others
        assert len(load.calls) == 1
        assert sorted(load.calls[0]) == ["c1", "c2", "dead"]
        assert raw.execute("GET", "dead") == b"v:dead"
        assert raw.execute("GET", "live").startswith(_PLACEHOLDER)
    finally:
        gate.set()
    assert held.result() == "holder's"
    values = many.result()
    assert list(values.items()) == [("c1", "v:c1"), ("live", "holder's"), ("dead", "v:dead"),
                                    ("c2", "v:c2")]
    assert len(load.calls) == 1  # the loader never saw "live", and ran once
    assert client.stats()["takeovers"] == 1
    assert client.stats()["loads"] == 1


def test_keys_this_client_is_loading_are_waited_for(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    # Two calls of one client join one read of the same cold keys; the first
    # locks and loads them, the second must wait for that fill (parked, so the
    # asyncio loop goes on reading replies and pushes), not loop on re-reads.
    client = make_client(use_lua_lock=lua)
    assert client.get("warm", 30, Loader("w")) == "w"  # connected, and the marker exists
    gate = threading.Event()
    load = ManyLoader(gate=gate)
    raw.execute("CLIENT", "PAUSE", 300, "ALL")  # both calls' reads wait for one reply
    first = Background(lambda: client.get_many(["k", "j"], 30, load))
    second = Background(lambda: client.get_many(["j", "k"], 30, load))
    try:
        assert load.started.wait(10)
        waiting(client)
        assert len(load.calls) == 1
    finally:
        gate.set()
    assert first.result() == {"k": "v:k", "j": "v:j"}
    assert second.result() == {"j": "v:j", "k": "v:k"}
    assert len(load.calls) == 1
    assert client.stats()["loads"] == 2  # warm, then one of the two calls


def test_deadline_while_another_client_holds_a_key(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    holder = make_client(use_lua_lock=lua)
    client = make_client(use_lua_lock=lua)
    gate = threading.Event()
    slow = Loader("late", gate)
    held = Background(lambda: holder.get("held", 30, slow))
    try:
        assert slow.started.wait(10)
        foreign = raw.execute("GET", "held")
        load = ManyLoader()
        start = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError):
            client.get_many(["a", "held", "b"], 30, load, timeout=0.4)
        took = time.monotonic() - start
        assert 0.35 <= took < 1.4
        assert raw.execute("GET", "held") == foreign
        assert placeholders(raw, ["a", "b"]) == {}, "this call's locks outlived it"
        other = make_client(use_lua_lock=lua)
        start = time.monotonic()
        assert other.get_many(["a", "b"], 30, ManyLoader("other:"), timeout=2) in (
            {"a": "v:a", "b": "v:b"},  # filled before the wait
            {"a": "other:a", "b": "other:b"},  # or released
        )
        assert time.monotonic() - start < 1.0
    finally:
        gate.set()
    assert held.result() == "late"


def test_deadline_while_locking_leaves_no_lock(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    # The lock commands are sent, the call gives up at its deadline, and the
    # server runs them later: the locks they take must not outlive the call.
    client = make_client(use_lua_lock=lua)
    other = make_client(use_lua_lock=lua)
    assert client.get("warm", 30, Loader("w")) == "w"  # the marker and the scripts exist
    load = ManyLoader()
    keys = ["a", "b", "c"]
    raw.execute("CLIENT", "PAUSE", 10_000, "WRITE")  # reads go on, writes wait
    try:
        start = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError):
            client.get_many(keys, 30, load, timeout=0.3)
        assert time.monotonic() - start < 1.3
    finally:
        raw.execute("CLIENT", "UNPAUSE")
    client.execute("PING")  # ordered after the late lock commands on its connection
    assert load.calls == []
    assert raw.execute("EXISTS", *keys) == 0, "a lock was left behind"
    assert other.get_many(keys, 30, ManyLoader("other:"), timeout=2) == {
        key: f"other:{key}" for key in keys}


def test_fills_after_the_server_forgot_the_scripts(
    make_client: MakeClient, lua: bool, raw: RawConnection
) -> None:
    # SCRIPT FLUSH after the connection loaded the scripts: the fills are
    # answered NOSCRIPT and go again as EVAL; nothing is lost or left locked.
    client = make_client(use_lua_lock=lua)
    assert client.get("warm", 30, Loader("w")) == "w"
    raw.execute("SCRIPT", "FLUSH")
    keys = ["f1", "f2", "f3"]
    load = ManyLoader()
    assert client.get_many(keys, 30, load) == {key: f"v:{key}" for key in keys}
    assert [raw.execute("GET", key) for key in keys] == [f"v:{key}".encode() for key in keys]
    client.execute("PING")  # the invalidations of the late fills are in
    assert client.get_many(keys, 30, ManyLoader("never")) == {key: f"v:{key}" for key in keys}
    assert len(load.calls) == 1


@pytest.mark.parametrize("chunk", [1000, 2])
def test_outside_write_during_the_load_is_not_overwritten(
    make_client: MakeClient, lua: bool, raw: RawConnection, chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Filled by one script call, or (chunk=2) by two: "b" is in the first.
    monkeypatch.setattr("valkeyaside.lock._locks.FILL_CHUNK", chunk)
    client = make_client(use_lua_lock=lua)
    gate = threading.Event()
    load = ManyLoader(gate=gate)
    many = Background(lambda: client.get_many(["a", "b", "c"], 30, load))
    try:
        assert load.started.wait(10)
        assert raw.execute("GET", "b").startswith(_PLACEHOLDER)  # locked by the call
        raw.execute("SET", "b", "outside")
    finally:
        gate.set()
    values = many.result()
    assert values["a"] == "v:a" and values["c"] == "v:c"
    assert raw.execute("GET", "b") == b"outside"
    assert raw.execute("PTTL", "b") == -1  # the outside write, as it was made
    assert raw.execute("GET", "a") == b"v:a"
    client.execute("PING")
    assert client.get("b", 30) == "outside"
    assert client.get_many(["a", "b"], 30, ManyLoader("never")) == {"a": "v:a", "b": "outside"}
    assert len(load.calls) == 1


# -- the decorator, sync ------------------------------------------------------------------------


@pytest.fixture
def sync_client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def test_cached_template_over_bound_arguments(sync_client: Client, raw: RawConnection) -> None:
    calls = []

    @sync_client.cached(30, key="user:{user_id}:{lang}")
    def load_user(user_id: int, lang: str = "en") -> str:
        calls.append((user_id, lang))
        return f"user {user_id} in {lang}"

    assert load_user(42) == "user 42 in en"
    assert load_user(42) == "user 42 in en"
    assert load_user(user_id=42) == "user 42 in en"
    assert load_user(42, "en") == "user 42 in en"
    assert load_user(42, lang="fr") == "user 42 in fr"
    assert calls == [(42, "en"), (42, "fr")]
    assert raw.execute("GET", "user:42:en") == b"user 42 in en"
    assert raw.execute("GET", "user:42:fr") == b"user 42 in fr"
    assert 29_000 < raw.execute("PTTL", "user:42:en") <= 30_000
    assert load_user.key(7) == "user:7:en"
    assert load_user.key(7, lang="de") == "user:7:de"
    assert load_user.__name__ == "load_user"  # the wrapper looks like the function


def test_cached_callable_key(sync_client: Client, raw: RawConnection) -> None:
    seen = []

    def key_of(*args: Any, **kwargs: Any) -> str:
        seen.append((args, kwargs))
        return "sum:" + str(sum(args) + sum(kwargs.values()))

    @sync_client.cached(30, key=key_of)
    def add(a: int, b: int) -> str:
        return str(a + b)

    assert add(1, 2) == "3"
    assert add(2, b=1) == "3"  # the same key: a hit
    assert seen == [((1, 2), {}), ((2,), {"b": 1})]
    assert raw.execute("GET", "sum:3") == b"3"
    assert add.key(5, 5) == "sum:10"

    @sync_client.cached(30, key=lambda a: a)  # type: ignore[arg-type, return-value]
    def not_a_str(a: Any) -> str:
        return "never"

    with pytest.raises(TypeError):
        not_a_str(1)
    assert raw.execute("EXISTS", "1") == 0


def test_cached_default_key(sync_client: Client, raw: RawConnection) -> None:
    calls = []

    @sync_client.cached(30)
    def f(a: Any, b: Any = 2, *, c: str = "x") -> str:
        calls.append((a, b, c))
        return f"{a}-{b}-{c}"

    prefix = f"{__name__}.test_cached_default_key.<locals>.f:"
    assert f.key(1, b=2) == f.key(1, 2) == f.key(1) == f.key(a=1) == prefix + "1,2,'x'"
    assert f.key("s", [1], c="y") == prefix + "'s',[1],'y'"
    assert f(1, b=2) == "1-2-x"
    assert f(1, 2) == "1-2-x"
    assert f(1) == "1-2-x"
    assert calls == [(1, 2, "x")]
    assert raw.execute("GET", prefix + "1,2,'x'") == b"1-2-x"
    assert f("s") == "s-2-x"
    assert raw.execute("GET", prefix + "'s',2,'x'") == b"s-2-x"


def test_cached_invalidate_and_uncached(sync_client: Client, raw: RawConnection) -> None:
    calls = []

    @sync_client.cached(30, key="item:{n}")
    def item(n: int) -> str:
        calls.append(n)
        return f"item {n} #{len(calls)}"

    assert item(1) == "item 1 #1"
    assert item(1) == "item 1 #1"
    assert item.invalidate(1) == 1
    assert raw.execute("EXISTS", "item:1") == 0
    assert item(1) == "item 1 #2"  # reloaded at once: no stale local copy
    assert item.invalidate(n=1) == 1
    assert item.invalidate(1) == 0
    assert item.uncached(1) == "item 1 #3"  # the function itself, no cache
    assert raw.execute("EXISTS", "item:1") == 0
    assert item(1) == "item 1 #4"
    assert calls == [1, 1, 1, 1]


def test_cached_serializer_round_trip(sync_client: Client, raw: RawConnection) -> None:
    calls = []

    @sync_client.cached(30, key="obj:{n}", serializer=json.dumps, deserializer=json.loads)
    def obj(n: int) -> Optional[dict[str, Any]]:
        calls.append(n)
        return None if n < 0 else {"n": n, "list": [1, "two"], "none": None}

    expected = {"n": 3, "list": [1, "two"], "none": None}
    assert obj(3) == expected
    assert obj(3) == expected
    assert json.loads(raw.execute("GET", "obj:3")) == expected
    assert obj(-1) is None  # None is not serialized: a tombstone
    assert obj(-1) is None
    assert raw.execute("GET", "obj:-1") == TOMBSTONE
    assert calls == [3, -1]


def test_cached_wrong_call_raises_type_error(sync_client: Client, raw: RawConnection) -> None:
    calls = []

    @sync_client.cached(30, key="t:{a}")
    def templated(a: int, b: int) -> str:
        calls.append((a, b))
        return "v"

    @sync_client.cached(30)
    def default(a: int, b: int) -> str:
        calls.append((a, b))
        return "v"

    assert templated(1, 2) == "v"  # t:1 is now kept locally
    assert default(1, 2) == "v"
    for f in (templated, default):
        for args, kwargs in [((), {}), ((1,), {}), ((1, 2, 3), {}), ((1,), {"c": 2}),
                             ((1, 2), {"a": 1}), ((1,), {"b": 2, "c": 3})]:
            with pytest.raises(TypeError):
                f(*args, **kwargs)
            with pytest.raises(TypeError):
                f.key(*args, **kwargs)
    assert calls == [(1, 2), (1, 2)]


def test_cached_equal_arguments_of_other_types_get_their_own_keys(
    sync_client: Client, raw: RawConnection
) -> None:
    # 1 == 1.0 == True and 0.0 == -0.0, with equal hashes, yet their keys differ:
    # a key remembered for one must not be read for the other.
    calls: list[Any] = []

    @sync_client.cached(30)
    def f(x: Any) -> str:
        calls.append(x)
        return repr(x)

    @sync_client.cached(30, key="t:{x}")
    def t(x: Any) -> str:
        calls.append(x)
        return repr(x)

    prefix = f"{__name__}.test_cached_equal_arguments_of_other_types_get_their_own_keys" \
        ".<locals>.f:"
    for fn in (f, t):  # remembered first, then asked for again
        fn.key(1), fn.key(0.0)
    assert [f.key(x) for x in (1, 1.0, True, 0.0, -0.0, "1")] == [
        prefix + "1", prefix + "1.0", prefix + "True", prefix + "0.0", prefix + "-0.0",
        prefix + "'1'"]
    assert [t.key(x) for x in (1, 1.0, True, 0.0, -0.0)] == [
        "t:1", "t:1.0", "t:True", "t:0.0", "t:-0.0"]
    assert [f(x) for x in (1, 1.0, True, "1")] == ["1", "1.0", "True", "'1'"]
    assert [f(x) for x in (1, 1.0, True, "1")] == ["1", "1.0", "True", "'1'"]  # hits
    assert [t(x) for x in (0.0, -0.0)] == ["0.0", "-0.0"]
    assert raw.execute("GET", prefix + "1.0") == b"1.0"
    assert raw.execute("GET", "t:-0.0") == b"-0.0"


def test_cached_key_follows_what_it_is_made_of(sync_client: Client, raw: RawConnection) -> None:
    # A key function may read more than the arguments (a tenant, say), and a
    # template may read an argument's attributes: each call makes its key afresh.
    tenant = ["a"]

    @sync_client.cached(30, key=lambda user_id: f"{tenant[0]}:user:{user_id}")
    def user(user_id: int) -> str:
        return f"user {user_id} of {tenant[0]}"

    assert user(1) == "user 1 of a"
    tenant[0] = "b"
    assert user.key(1) == "b:user:1"
    assert user(1) == "user 1 of b"
    assert raw.execute("GET", "a:user:1") == b"user 1 of a"
    assert raw.execute("GET", "b:user:1") == b"user 1 of b"

    class Account:
        def __init__(self, number: int) -> None:
            self.number = number

    @sync_client.cached(30, key="account:{account.number}")
    def account(account: Account) -> str:
        return f"account {account.number}"

    mine = Account(1)
    assert account(mine) == "account 1"
    mine.number = 2
    assert account.key(mine) == "account:2"
    assert account(mine) == "account 2"
    assert raw.execute("GET", "account:2") == b"account 2"


@pytest.mark.parametrize("lua_mode", [False, True], ids=["set-nx-get", "lua-lock"])
def test_cached_runs_once_per_key_across_concurrent_calls(
    server_url: str, raw: RawConnection, lua_mode: bool
) -> None:
    if not lua_mode:
        skip_below_server(7, 0, "SET NX GET needs 7.0")
    with Client(server_url, use_lua_lock=lua_mode) as client:
        gate = threading.Event()
        calls: list[int] = []
        lock = threading.Lock()

        @client.cached(30, key="n:{n}")
        def slow(n: int) -> str:
            with lock:
                calls.append(n)
            if not gate.wait(20):
                raise AssertionError("never opened")
            return f"n={n}"

        go = threading.Barrier(20)

        def call(n: int) -> Any:
            go.wait(10)
            return slow(n)

        runs = [Background(lambda n=i % 2: call(n)) for i in range(20)]
        try:
            waiting(client, 18)  # every call but the two loaders waits for them
        finally:
            gate.set()
        assert [run.result() for run in runs] == [f"n={i % 2}" for i in range(20)]
        assert sorted(calls) == [0, 1]
        assert raw.execute("GET", "n:0") == b"n=0"


# -- the decorator, asyncio ---------------------------------------------------------------------


def run(coroutine: Any, timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def test_async_cached_keys_invalidate_uncached(server_url: str, raw: RawConnection) -> None:
    calls: list[Any] = []

    async def main() -> None:
        async with AsyncClient(server_url) as client:

            @client.cached(30, key="user:{user_id}:{lang}")
            async def load_user(user_id: int, lang: str = "en") -> str:
                await asyncio.sleep(0)
                calls.append(("user", user_id, lang))
                return f"user {user_id} in {lang}"

            assert await load_user(42) == "user 42 in en"
            assert await load_user(user_id=42, lang="en") == "user 42 in en"
            assert raw.execute("GET", "user:42:en") == b"user 42 in en"
            assert load_user.key(42, "fr") == "user:42:fr"

            @client.cached(30, key=lambda a, b: f"pair:{min(a, b)}:{max(a, b)}")
            async def pair(a: int, b: int) -> str:
                calls.append(("pair", a, b))
                return f"{a}+{b}"

            assert await pair(2, 1) == "2+1"
            assert await pair(1, 2) == "2+1"  # the same key
            assert raw.execute("GET", "pair:1:2") == b"2+1"

            @client.cached(30)
            async def f(a: Any, b: Any = 2) -> str:
                calls.append(("f", a, b))
                return f"{a}/{b}"

            prefix = (f"{__name__}.test_async_cached_keys_invalidate_uncached.<locals>.main"
                      ".<locals>.f:")
            assert f.key(1, b=2) == f.key(1, 2) == f.key(1) == prefix + "1,2"
            assert await f(1, b=2) == "1/2"
            assert await f(1, 2) == "1/2"
            assert raw.execute("GET", prefix + "1,2") == b"1/2"

            assert await load_user.invalidate(42) == 1
            assert raw.execute("EXISTS", "user:42:en") == 0
            assert await load_user(42) == "user 42 in en"  # reloaded
            assert await load_user.invalidate(42, lang="en") == 1
            assert await load_user.uncached(42) == "user 42 in en"
            assert raw.execute("EXISTS", "user:42:en") == 0

            with pytest.raises(TypeError):
                await f()
            with pytest.raises(TypeError):
                await pair(1, c=2)
            with pytest.raises(TypeError):
                await load_user(42, nope=1)

    run(main())
    assert calls == [("user", 42, "en"), ("pair", 2, 1), ("f", 1, 2), ("user", 42, "en"),
                     ("user", 42, "en")]


def test_async_cached_serializer_and_concurrency(server_url: str, raw: RawConnection) -> None:
    calls: list[int] = []

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            gate = asyncio.Event()

            @client.cached(30, key="obj:{n}", serializer=json.dumps, deserializer=json.loads)
            async def obj(n: int) -> dict[str, Any]:
                calls.append(n)
                await gate.wait()
                return {"n": n, "items": [n, str(n)]}

            tasks = [asyncio.ensure_future(obj(i % 2)) for i in range(20)]
            while client.stats()["lock_waits"] < 18:  # every call but the two loaders waits
                await asyncio.sleep(0.005)
            gate.set()
            values = await asyncio.gather(*tasks)
            assert await obj(0) == {"n": 0, "items": [0, "0"]}  # a hit
            assert await obj.invalidate(1) == 1
            values.append(await obj(1))  # reloaded
            return values

    values = run(main())
    assert values == [{"n": i % 2, "items": [i % 2, str(i % 2)]} for i in range(20)] + [
        {"n": 1, "items": [1, "1"]}]
    assert sorted(calls) == [0, 1, 1]
    assert json.loads(raw.execute("GET", "obj:0")) == {"n": 0, "items": [0, "0"]}


def test_async_cached_hit_is_answered_locally(server_url: str, raw: RawConnection) -> None:
    """An awaited call of a decorated ``async def`` whose value is held locally
    returns it (deserialized) without a request: the hits count it, the
    misses do not move, and the server runs no further GET."""

    async def main() -> None:
        async with AsyncClient(server_url) as client:

            @client.cached(30, key="doc:{n}", serializer=json.dumps, deserializer=json.loads)
            async def doc(n: int) -> dict[str, int]:
                return {"n": n}

            assert await doc(7) == {"n": 7}
            assert await client.execute("PING") == "PONG"  # the read behind the fill is in
            before = client.stats()
            reads = command_calls(raw).get("get", 0)
            assert [await doc(7) for _ in range(3)] == [{"n": 7}] * 3
            assert await doc(n=7) == {"n": 7}  # a keyword call: the same key, by the slow path
            after = client.stats()
            assert after["hits"] - before["hits"] == 4
            assert after["misses"] == before["misses"]
            assert command_calls(raw).get("get", 0) == reads

    run(main())


def test_decorated_functions_keep_their_signature_for_type_checkers(tmp_path: Any) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it comes with the dev extra)")
    code = tmp_path / "typed.py"
    code.write_text(
        "import valkeyaside\n"
        "client = valkeyaside.Client()\n"
        "aclient = valkeyaside.AsyncClient()\n"
        "@client.cached(60, key='user:{user_id}')\n"
        "def load_user(user_id: int) -> str:\n"
        "    return ''\n"
        "@aclient.cached(60)\n"
        "async def load_order(order_id: int, *, full: bool = False) -> bytes:\n"
        "    return b''\n"
        "name: str = load_user(1)\n"
        "key: str = load_user.key(1)\n"
        "deleted: int = load_user.invalidate(1)\n"
        "load_user('one')\n"
        "@client.cached_many(60, key='product:{}')\n"
        "def load_products(ids: list[int]) -> dict[int, str]:\n"
        "    return {}\n"
        "products: dict[int, str | None] = load_products([1, 2])\n"
        "load_products(['one'])\n"
        "@aclient.cached_many(60)\n"
        "async def load_orders(ids: list[str]) -> dict[str, bytes]:\n"
        "    return {}\n"
        "async def main() -> None:\n"
        "    order: bytes = await load_order(2, full=True)\n"
        "    await load_order(2, fast=True)\n"
        "    orders: dict[str, bytes | None] = await load_orders(iter(['a']))\n"
        "    gone: int = await load_orders.invalidate(['a'])\n"
    )
    # In a process of its own: mypy leaves hundreds of MB of objects behind,
    # which would slow every later garbage collection of the test run.
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", str(code), "--no-incremental", "--cache-dir", os.devnull,
         "--python-version", "3.10"], capture_output=True, text=True, timeout=120)
    stdout, status = checked.stdout, checked.returncode
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert status == 1 and len(errors) == 3, stdout
    assert 'Argument 1 to "__call__" of "CachedFunction" has incompatible type "str"; ' \
        'expected "int"' in errors[0]
    assert 'List item 0 has incompatible type "str"; expected "int"' in errors[1]
    assert 'Unexpected keyword argument "fast"' in errors[2]
