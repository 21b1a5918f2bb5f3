"""The connection against a real server: handshake, auth, db, unix socket, TLS,
many threads on one socket, lost connections, timeouts, and ``execute``'s replies."""

from __future__ import annotations

import builtins
import random
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator

import pytest
from disconnects import disconnect_event
from server import ValkeyServer, free_port
from tlsproxy import TLSProxy

import valkeyaside
from valkeyaside.resp3 import ProtocolError, Push

NAME = "vka-conn-test"
WRONG_PASSWORD = "Wr0ng-pa55-Q7xZ"


# --------------------------------------------------------------------------- fixtures and utilities


@pytest.fixture
def client(server_url: str) -> Iterator[valkeyaside.Client]:
    with valkeyaside.Client(server_url, socket_timeout=5) as c:
        yield c


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for server-side state that offers no event to wait on (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{predicate} did not hold within {timeout} s")
        time.sleep(0.005)


def _client_list(server: ValkeyServer) -> str:
    return bytes(server.command("CLIENT", "LIST")).decode()


def _blocked_clients(server: ValkeyServer) -> int:
    info = bytes(server.command("INFO", "clients")).decode()
    for line in info.splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no blocked_clients in {info!r}")


def _field(words: list[str], name: str) -> int:
    """An integer field of a CLIENT INFO line split into words."""
    for word in words:
        if word.startswith(name + "="):
            return int(word[len(name) + 1 :])
    raise AssertionError(f"no {name} in {words}")


def _error_text(exc: BaseException) -> str:
    """str and repr of an exception and of every exception chained to it."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# --------------------------------------------------------------------------- handshake


@pytest.mark.requires_server(7, 0, reason="CLIENT INFO shows resp= from 7.0 on")
def test_handshake_speaks_resp3_and_sets_the_client_name(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    with valkeyaside.Client(server_url, client_name=NAME) as c:
        info = c.execute("CLIENT", "INFO")
        assert isinstance(info, str)  # a verbatim string, its txt: prefix dropped
        assert "resp=3" in info.split()
        assert f"name={NAME}" in info.split()
        assert c.execute("CLIENT", "GETNAME") == NAME.encode()
        assert f"name={NAME}" in _client_list(valkey_server)
        # A RESP3-only reply type: a map, not a flat RESP2 array.
        c.execute("HSET", "h", "f", "v")
        assert c.execute("HGETALL", "h") == {b"f": b"v"}


def test_client_setname_is_refused_but_getname_works(client: valkeyaside.Client) -> None:
    with pytest.raises(ValueError, match="refused"):
        client.execute("CLIENT", "SETNAME", "other")
    assert client.execute("CLIENT", "GETNAME") is None


def test_an_invalid_client_name_is_not_reported_as_a_missing_resp3(server_url: str) -> None:
    # The server refuses the name inside HELLO; the error must say so, not blame
    # the protocol version.
    with valkeyaside.Client(server_url, client_name="has space") as c, pytest.raises(
        valkeyaside.ConnectionError
    ) as info:
        c.execute("PING")
    message = str(info.value)
    assert "Client names cannot contain spaces" in message
    assert "does not speak RESP3" not in message


def test_acl_user_with_password_authenticates(
    valkey_server: ValkeyServer, acl_user: tuple[str, str]
) -> None:
    user, password = acl_user
    url = f"valkey://{user}:{password}@127.0.0.1:{valkey_server.port}"
    with valkeyaside.Client(url) as c:
        assert c.execute("ACL", "WHOAMI") == user.encode()
    with valkeyaside.Client(
        host="127.0.0.1", port=valkey_server.port, username=user, password=password
    ) as c:
        assert c.execute("ACL", "WHOAMI") == user.encode()


@pytest.mark.parametrize("how", ["url", "keywords"])
def test_wrong_password_fails_without_showing_it(
    valkey_server: ValkeyServer, acl_user: tuple[str, str], how: str
) -> None:
    user, password = acl_user
    if how == "url":
        c = valkeyaside.Client(f"valkey://{user}:{WRONG_PASSWORD}@127.0.0.1:{valkey_server.port}")
    else:
        c = valkeyaside.Client(port=valkey_server.port, username=user, password=WRONG_PASSWORD)
    with c:
        assert WRONG_PASSWORD not in repr(c)
        with pytest.raises(valkeyaside.ConnectionError) as info:
            c.execute("PING")
        assert isinstance(info.value, builtins.ConnectionError)
        assert "WRONGPASS" in str(info.value)
        text = _error_text(info.value)
        assert WRONG_PASSWORD not in text
        assert password not in text
        assert WRONG_PASSWORD not in repr(c.connection)
        assert not c.connection.connected


def test_requirepass_without_a_password_is_refused(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    valkey_server.command("CONFIG", "SET", "requirepass", "Pw-of-default-9")
    with valkeyaside.Client(server_url) as c, pytest.raises(
        valkeyaside.ConnectionError, match="NOAUTH"
    ):
        c.execute("PING")
    with valkeyaside.Client(server_url, password="Pw-of-default-9") as c:
        assert c.execute("ACL", "WHOAMI") == b"default"


# --------------------------------------------------------------------------- db, unix socket


@pytest.mark.parametrize("how", ["url", "keyword"])
def test_db_selects_the_database(valkey_server: ValkeyServer, server_url: str, how: str) -> None:
    db2 = (
        valkeyaside.Client(server_url + "/2") if how == "url"
        else valkeyaside.Client(server_url, db=2)
    )
    with db2, valkeyaside.Client(server_url) as db0:
        assert db2.options.db == 2
        assert db2.execute("SET", "only-in-2", "x") == "OK"
        assert db2.execute("GET", "only-in-2") == b"x"
        assert db0.execute("GET", "only-in-2") is None
        assert db0.execute("DBSIZE") == 0
        assert "db=2" in db2.execute("CLIENT", "INFO").split()
    assert valkey_server.pipeline([("SELECT", 2), ("GET", "only-in-2")]) == ["OK", b"x"]


@pytest.mark.requires_server(7, 0, reason="CLIENT INFO shows resp= from 7.0 on")
def test_unix_socket(valkey_server: ValkeyServer, unix_server_path: str) -> None:
    with valkeyaside.Client(f"unix://{unix_server_path}?db=3", client_name=NAME) as c:
        assert c.options.unix_path == unix_server_path
        assert c.execute("SET", "k", "over-unix") == "OK"
        assert c.execute("ECHO", "hi") == b"hi"
        info = c.execute("CLIENT", "INFO").split()
        assert "db=3" in info
        assert "resp=3" in info
    assert valkey_server.pipeline([("SELECT", 3), ("GET", "k")]) == ["OK", b"over-unix"]


def test_unix_socket_that_does_not_exist(tmp_path: Any) -> None:
    with valkeyaside.Client(f"unix://{tmp_path}/none.sock") as c, pytest.raises(
        valkeyaside.ConnectionError, match=r"none\.sock"
    ):
        c.execute("PING")


# --------------------------------------------------------------------------- TLS


@pytest.mark.requires_server(7, 0, reason="CLIENT INFO shows resp= from 7.0 on")
def test_tls_with_the_proxy_ca(tls_proxy: TLSProxy, server_url: str) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    with valkeyaside.Client(
        host="127.0.0.1", port=tls_proxy.port, ssl_context=context, client_name=NAME
    ) as c:
        assert c.options.ssl
        assert c.execute("SET", "tls-key", "over-tls") == "OK"
        assert c.execute("GET", "tls-key") == b"over-tls"
        big = random.Random(7).randbytes(300_000)
        assert c.execute("SET", "big", big) == "OK"
        assert c.execute("GET", "big") == big  # many TLS records, reassembled
        assert "resp=3" in c.execute("CLIENT", "INFO").split()


def test_tls_url_with_ca_certs_query(tls_proxy: TLSProxy, server_url: str) -> None:
    url = f"valkeys://localhost:{tls_proxy.port}/1?ssl_ca_certs={tls_proxy.ca_file}"
    with valkeyaside.Client(url) as c:
        assert c.options.ssl
        assert c.options.db == 1
        assert c.execute("PING") == "PONG"
        assert "db=1" in c.execute("CLIENT", "INFO").split()


def test_tls_default_verification_rejects_a_throwaway_ca(
    tls_proxy: TLSProxy, server_url: str
) -> None:
    with valkeyaside.Client(tls_proxy.url, connect_timeout=5) as c, pytest.raises(
        valkeyaside.ConnectionError
    ) as info:
        c.execute("PING")
    assert isinstance(info.value.__cause__, ssl.SSLError)


def test_tls_many_threads(tls_proxy: TLSProxy, server_url: str) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    with valkeyaside.Client(port=tls_proxy.port, ssl_context=context, socket_timeout=10) as c:
        _hammer(c, threads=8, calls=300)


def test_tls_reconnects_after_the_connection_drops(tls_proxy: TLSProxy, server_url: str) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    with valkeyaside.Client(port=tls_proxy.port, ssl_context=context) as c:
        assert c.execute("ECHO", "before") == b"before"
        lost, _ = disconnect_event(c)
        generation = c.connection.generation
        tls_proxy.drop_connections()
        assert lost.wait(5)
        assert c.execute("ECHO", "after") == b"after"
        assert c.connection.generation == generation + 1


# --------------------------------------------------------------------------- many threads


def _hammer(c: valkeyaside.Client, threads: int, calls: int) -> None:
    """Each thread runs mixed commands on its own keys and checks every reply."""
    barrier = threading.Barrier(threads)
    failures: list[str] = []
    done = [0] * threads

    def worker(index: int) -> None:
        rng = random.Random(index)
        prefix = f"t{index}:"
        counter = list_len = 0
        fields: set[int] = set()
        last: bytes | None = None
        try:
            barrier.wait(10)
            for j in range(calls):
                op = rng.randrange(6)
                token = f"{index}/{j}/{rng.getrandbits(32)}"
                if op == 0:
                    got: Any = c.execute("SET", prefix + "s", token)
                    want: Any = "OK"
                    last = token.encode()
                elif op == 1:
                    got, want = c.execute("GET", prefix + "s"), last
                elif op == 2:
                    counter += 1
                    got, want = c.execute("INCR", prefix + "n"), counter
                elif op == 3:
                    list_len += 1
                    got, want = c.execute("LPUSH", prefix + "l", token), list_len
                elif op == 4:
                    field = rng.randrange(50)
                    got = c.execute("HSET", prefix + "h", field, token)
                    want = 0 if field in fields else 1
                    fields.add(field)
                else:
                    got, want = c.execute("ECHO", token), token.encode()
                if got != want:
                    failures.append(f"thread {index} call {j} op {op}: got {got!r}, want {want!r}")
                    return
                done[index] += 1
        except BaseException as exc:
            failures.append(f"thread {index}: {exc!r}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers)
    assert failures == []
    assert done == [calls] * threads


def test_sixteen_threads_share_one_connection_without_crossed_replies(
    client: valkeyaside.Client,
) -> None:
    _hammer(client, threads=16, calls=1000)
    assert client.connection.generation == 1  # one socket for all of it


# --------------------------------------------------------------------------- lost connections


def test_reconnect_after_client_kill(
    valkey_server: ValkeyServer, client: valkeyaside.Client
) -> None:
    first_id = client.execute("CLIENT", "ID")
    lost, causes = disconnect_event(client)
    assert valkey_server.command("CLIENT", "KILL", "ID", first_id) == 1
    assert lost.wait(5)
    assert len(causes) == 1
    assert client.execute("ECHO", "again") == b"again"
    assert client.execute("CLIENT", "ID") != first_id
    assert client.connection.generation == 2


def test_a_call_in_flight_fails_when_the_connection_is_killed(
    valkey_server: ValkeyServer, client: valkeyaside.Client
) -> None:
    client_id = client.execute("CLIENT", "ID")
    outcome: list[BaseException] = []

    def blocked_call() -> None:
        try:
            client.execute("BLPOP", "never-pushed", 0)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked_call)
    thread.start()
    _eventually(lambda: _blocked_clients(valkey_server) == 1)
    assert valkey_server.command("CLIENT", "KILL", "ID", client_id) == 1
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1
    error = outcome[0]
    assert isinstance(error, valkeyaside.ConnectionError)
    assert isinstance(error, builtins.ConnectionError)
    assert isinstance(error, valkeyaside.ValkeyError)
    assert client.execute("PING") == "PONG"


def test_repeated_kills_under_load_never_cross_replies(
    valkey_server: ValkeyServer, client: valkeyaside.Client
) -> None:
    # Every call gets its own reply or a ConnectionError; nothing hangs.
    stop = threading.Event()
    progress = threading.Condition()
    done = [0]
    problems: list[str] = []
    kills = 5

    def worker(index: int) -> None:
        j = 0
        while not stop.is_set():
            j += 1
            token = f"{index}/{j}"
            try:
                reply = client.execute("ECHO", token)
            except valkeyaside.ConnectionError:
                continue
            except BaseException as exc:
                problems.append(f"{token}: {exc!r}")
                return
            if reply != token.encode():
                problems.append(f"{token}: got {reply!r}")
                return
            with progress:
                done[0] += 1
                progress.notify_all()

    def await_more_replies(count: int) -> None:
        with progress:
            target = done[0] + count
            assert progress.wait_for(lambda: done[0] >= target or bool(problems), 10)
        assert not problems

    lost = threading.Semaphore(0)
    client.connection.add_disconnect_handler(lambda cause: lost.release())
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    try:
        for _ in range(kills):
            await_more_replies(50)
            assert valkey_server.command("CLIENT", "KILL", "USER", "default") >= 1
            assert lost.acquire(timeout=5), "a lost connection did not run the disconnect handlers"
        await_more_replies(50)  # on the last connection
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    assert not any(w.is_alive() for w in workers)
    assert problems == []
    assert client.connection.generation == kills + 1


def test_disconnect_handlers_run_even_when_a_caller_reconnects_first(
    valkey_server: ValkeyServer, client: valkeyaside.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller may reconnect while a lost connection is still being torn down.
    # The disconnect handlers (which flush the local cache: its entries are no
    # longer tracked) must still run. Here the reader thread is held at that
    # point until the reconnect is done: one schedule threads may take under load.
    connection = client.connection
    original = connection._link_died
    dying = threading.Event()
    reconnected = threading.Event()

    def link_died_after_the_reconnect(cause: BaseException) -> None:
        dying.set()
        reconnected.wait(5)
        original(cause)

    monkeypatch.setattr(connection, "_link_died", link_died_after_the_reconnect)
    lost, _ = disconnect_event(client)
    client.execute("SET", "k", "v1")
    assert client.get("k", 60) == "v1"  # now cached locally, tracked on this connection
    flushes = client.stats()["flushes"]
    assert valkey_server.command("CLIENT", "KILL", "ID", client.execute("CLIENT", "ID")) == 1
    assert dying.wait(5)
    # Another thread reconnects while the old link is still dying. The client
    # may hold that reconnect until the teardown is done, or let it through:
    # either way what follows must be coherent.
    pings: list[object] = []
    pinger = threading.Thread(target=lambda: pings.append(client.execute("PING")))
    pinger.start()
    pinger.join(0.5)  # not a sleep: returns at once if the reconnect is let through
    reconnected.set()
    pinger.join(5)
    assert pings == ["PONG"]
    assert connection.generation == 2
    valkey_server.command("SET", "k", "v2")  # no invalidation for the old connection's reads
    handlers_ran = lost.wait(5)
    value = client.get("k", 60)
    assert handlers_ran, f"the disconnect handlers did not run; get() now returns {value!r}"
    assert client.stats()["flushes"] > flushes
    assert value == "v2"


def test_server_restart_then_the_next_call_reconnects(fresh_server: ValkeyServer) -> None:
    with valkeyaside.Client(fresh_server.url) as c:
        assert c.execute("SET", "k", "v") == "OK"
        lost, _ = disconnect_event(c)
        fresh_server.restart()
        assert lost.wait(10)
        assert c.execute("GET", "k") is None  # a new process that persisted nothing
        assert c.execute("SET", "k", "w") == "OK"
        assert c.execute("GET", "k") == b"w"
        assert c.connection.generation == 2


def test_server_down_then_up(fresh_server: ValkeyServer) -> None:
    with valkeyaside.Client(fresh_server.url, connect_timeout=2) as c:
        assert c.execute("PING") == "PONG"
        lost, _ = disconnect_event(c)
        fresh_server.stop()
        assert lost.wait(10)
        with pytest.raises(valkeyaside.ConnectionError):
            c.execute("PING")
        fresh_server.start()
        assert c.execute("PING") == "PONG"


def test_closed_port_fails_quickly() -> None:
    port = free_port()
    started = time.monotonic()
    with valkeyaside.Client(f"valkey://127.0.0.1:{port}", connect_timeout=5) as c, pytest.raises(
        valkeyaside.ConnectionError
    ) as info:
        c.execute("PING")
    assert time.monotonic() - started < 2
    assert isinstance(info.value, builtins.ConnectionError)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full, so that a new connect hangs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            fillers.append(sock)
            sock.settimeout(0.2)
            try:
                sock.connect(("127.0.0.1", port))
            except socket.timeout:
                break
        else:
            pytest.skip("this kernel completes connections to a full accept queue")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_connect_timeout(full_backlog: int) -> None:
    started = time.monotonic()
    url = f"valkey://127.0.0.1:{full_backlog}"
    with valkeyaside.Client(url, connect_timeout=0.3) as c, pytest.raises(
        valkeyaside.TimeoutError
    ) as info:
        c.execute("PING")
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 3
    assert isinstance(info.value, builtins.TimeoutError)


# --------------------------------------------------------------------------- timeouts


def test_timeout_then_the_late_reply_is_dropped(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    # A call's own timeout, shorter than socket_timeout: the link is not yet
    # overdue (see test_deadlink for one that is), so it stays.
    with valkeyaside.Client(server_url, socket_timeout=10) as c:
        assert c.execute("PING") == "PONG"
        started = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError) as info:
            c.connection.call("BLPOP", "q", 0, timeout=0.3)
        assert 0.25 < time.monotonic() - started < 3
        assert isinstance(info.value, builtins.TimeoutError)
        # Serve the abandoned BLPOP: its reply arrives late and must be dropped.
        assert valkey_server.command("LPUSH", "q", "late") == 1
        assert c.execute("ECHO", "next") == b"next"
        assert c.execute("LLEN", "q") == 0  # the late BLPOP really took it
        assert c.execute("INCR", "n") == 1
        assert c.connection.generation == 1  # the timeout did not cost the connection


def test_timeout_under_client_pause(valkey_server: ValkeyServer, server_url: str) -> None:
    # CLIENT PAUSE ALL holds every client's commands (even UNPAUSE and AUTH)
    # until it ends, so a second client's PING is the event "the pause is over".
    # The calls time out (0.2 s) well before the link is overdue (socket_timeout)
    # or its health PING unanswered (1 s after a silence of 1 s).
    with valkeyaside.Client(server_url, socket_timeout=10) as c, valkeyaside.Client(
        server_url, socket_timeout=10
    ) as witness:
        assert c.execute("SET", "k", "v") == "OK"
        assert witness.execute("PING") == "PONG"
        valkey_server.command("CLIENT", "PAUSE", 1000, "ALL")
        with pytest.raises(valkeyaside.TimeoutError):
            c.connection.call("GET", "k", timeout=0.2)
        with pytest.raises(valkeyaside.TimeoutError):
            c.connection.call("ECHO", "also-late", timeout=0.2)
        assert witness.execute("PING") == "PONG"  # returns once the pause is over
        assert c.execute("ECHO", "own") == b"own"
        assert c.execute("GET", "k") == b"v"
        assert c.connection.generation == 1


def test_idle_longer_than_socket_timeout_keeps_the_connection(server_url: str) -> None:
    # The reader's receive times out while idle; that is not a lost connection.
    with valkeyaside.Client(server_url, socket_timeout=0.1) as c:
        assert c.execute("PING") == "PONG"
        time.sleep(0.35)  # idle on purpose: several receive timeouts pass
        assert c.execute("ECHO", "awake") == b"awake"
        assert c.connection.generation == 1


def test_tls_idle_longer_than_socket_timeout_keeps_the_connection(
    tls_proxy: TLSProxy, server_url: str
) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    with valkeyaside.Client(port=tls_proxy.port, ssl_context=context, socket_timeout=0.1) as c:
        assert c.execute("PING") == "PONG"
        time.sleep(0.35)  # idle on purpose
        assert c.execute("ECHO", "awake") == b"awake"
        assert c.connection.generation == 1


# --------------------------------------------------------------------------- execute


@pytest.mark.requires_server(7, 0, reason="Lua big_number and verbatim_string replies need 7.0")
def test_execute_maps_real_replies(client: valkeyaside.Client) -> None:
    c = client
    assert c.execute("PING") == "PONG"  # simple string -> str
    assert c.execute("SET", "s", "v") == "OK"
    assert c.execute("GET", "s") == b"v"  # bulk -> bytes
    assert c.execute("GET", "missing") is None  # null
    assert c.execute("EXISTS", "s") == 1
    assert c.execute("HSET", "h", "a", "1", "b", "2") == 2
    assert c.execute("HGETALL", "h") == {b"a": b"1", b"b": b"2"}  # map -> dict
    assert c.execute("HGETALL", "missing") == {}
    assert c.execute("SADD", "set", "x", "y") == 2
    members = c.execute("SMEMBERS", "set")
    assert type(members) is set
    assert members == {b"x", b"y"}
    assert c.execute("INCRBYFLOAT", "f", "1.5") == b"1.5"  # a bulk string, not a double
    assert c.execute("ZADD", "z", "2.5", "m", "inf", "top", "-inf", "bottom") == 3
    score = c.execute("ZSCORE", "z", "m")
    assert type(score) is float
    assert score == 2.5
    assert c.execute("ZSCORE", "z", "top") == float("inf")
    assert c.execute("ZSCORE", "z", "bottom") == float("-inf")
    assert c.execute("ZRANGE", "z", 0, 0, "WITHSCORES") == [[b"bottom", float("-inf")]]
    assert c.execute("RPUSH", "l", "a", "b") == 2
    assert c.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]
    assert c.execute("CONFIG", "GET", "maxmemory-policy") == {b"maxmemory-policy": b"noeviction"}
    assert c.execute("EVAL", "return {double=3.25}", 0) == 3.25
    big = "123456789012345678901234567890"
    assert c.execute("EVAL", f"return {{big_number='{big}'}}", 0) == int(big)
    assert c.execute("EVAL", "return {verbatim_string={format='txt', string='hi'}}", 0) == "hi"
    binary = bytes(range(256))
    assert c.execute("SET", b"bin\x00key", binary) == "OK"
    assert c.execute("GET", b"bin\x00key") == binary


@pytest.mark.requires_server(7, 0, reason="7.0 quotes an unknown command with ', 6.2 with `")
def test_an_error_reply_is_raised_with_its_message(client: valkeyaside.Client) -> None:
    client.execute("SET", "str", "v")
    with pytest.raises(valkeyaside.ResponseError) as info:
        client.execute("LPUSH", "str", "x")
    assert str(info.value) == "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert info.value.code == "WRONGTYPE"
    assert isinstance(info.value, valkeyaside.ValkeyError)
    with pytest.raises(valkeyaside.ResponseError, match="unknown command 'NOSUCHCOMMAND'"):
        client.execute("NOSUCHCOMMAND", "x")
    # Still in step: the next reply is this call's own.
    assert client.execute("ECHO", "fine") == b"fine"


@pytest.mark.requires_server(7, 0, reason="redis.error_reply adds ERR from 7.0 on")
def test_an_error_inside_an_array_is_returned_not_raised(client: valkeyaside.Client) -> None:
    reply = client.execute("EVAL", "return {1, redis.error_reply('boom')}", 0)
    assert reply == [1, valkeyaside.ResponseError("ERR boom")]
    assert isinstance(reply[1], valkeyaside.ResponseError)


@pytest.mark.requires_server(7, 2, reason="CLIENT INFO tot-cmds needs 7.2")
@pytest.mark.parametrize(
    "command",
    [
        ("SELECT", 1),
        ("select", 1),
        (b"SELECT", 1),
        ("MULTI",),
        ("EXEC",),
        ("WATCH", "k"),
        ("SUBSCRIBE", "ch"),
        ("PSUBSCRIBE", "ch*"),
        ("SSUBSCRIBE", "ch"),
        ("HELLO", 2),
        ("AUTH", "pw"),
        ("MONITOR",),
        ("QUIT",),
        ("CLIENT", "TRACKING", "OFF"),
        ("client", "tracking", "on"),
        ("CLIENT", "CACHING", "NO"),
        ("CLIENT", "REPLY", "OFF"),
        ("CLIENT", "SETNAME", "x"),
        (b"CLIENT", b"TRACKING", b"OFF"),
        (bytearray(b"multi"),),
        # every argument type execute accepts must be recognised
        (memoryview(b"SELECT"), 1),
        ("CLIENT", memoryview(b"TRACKING"), "OFF"),
    ],
    ids=lambda command: " ".join(
        f"{type(a).__name__}:{bytes(a).decode() if not isinstance(a, (str, int)) else a}"
        for a in command
    ),
)
def test_refused_commands_send_nothing(server_url: str, command: tuple[Any, ...]) -> None:
    with valkeyaside.Client(server_url) as c:
        with pytest.raises(ValueError, match="refused"):
            c.execute(*command)
        assert c.connection.generation == 0  # not even a connection was made
        before = c.execute("CLIENT", "INFO").split()
        with pytest.raises(ValueError, match="refused"):
            c.execute(*command)
        after = c.execute("CLIENT", "INFO").split()
    # Only the second CLIENT INFO reached the server in between.
    assert _field(after, "tot-cmds") == _field(before, "tot-cmds") + 1


def test_execute_needs_a_command(client: valkeyaside.Client) -> None:
    with pytest.raises(TypeError):
        client.execute()


# --------------------------------------------------------------------------- close


def test_with_closes_and_later_calls_fail(valkey_server: ValkeyServer, server_url: str) -> None:
    with valkeyaside.Client(server_url, client_name=NAME) as c:
        assert c.execute("PING") == "PONG"
        assert c.connection.connected
    assert not c.connection.connected
    for _ in range(2):
        with pytest.raises(valkeyaside.ConnectionError, match="closed"):
            c.execute("PING")
    c.close()  # twice is fine
    _eventually(lambda: f"name={NAME}" not in _client_list(valkey_server))


def test_close_fails_a_call_in_flight(valkey_server: ValkeyServer, server_url: str) -> None:
    c = valkeyaside.Client(server_url)
    c.execute("PING")
    outcome: list[BaseException] = []

    def blocked_call() -> None:
        try:
            c.execute("BLPOP", "never-pushed", 0)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked_call)
    thread.start()
    _eventually(lambda: _blocked_clients(valkey_server) == 1)
    c.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], valkeyaside.ConnectionError)


def test_push_frames_from_a_real_server_reach_the_handlers(
    valkey_server: ValkeyServer, client: valkeyaside.Client
) -> None:
    # A real push: CLIENT TRACKING (set by the client) invalidates a key read
    # under CLIENT CACHING YES when someone else writes it.
    pushes: list[Push] = []
    got = threading.Event()

    def on_push(push: Push) -> None:
        pushes.append(push)
        if push and push[0] == b"invalidate":
            got.set()

    client.connection.add_push_handler(on_push)
    client.execute("SET", "watched", "1")
    assert client.get("watched", 60) == "1"  # a tracked read
    valkey_server.command("SET", "watched", "2")
    assert got.wait(5)
    assert [b"invalidate", [b"watched"]] in [list(p) for p in pushes]
    assert client.execute("ECHO", "still-in-step") == b"still-in-step"


def test_protocol_error_is_not_a_connection_error() -> None:
    # The error tree the tests above rely on.
    assert issubclass(valkeyaside.ConnectionError, builtins.ConnectionError)
    assert issubclass(valkeyaside.TimeoutError, builtins.TimeoutError)
    assert issubclass(ProtocolError, valkeyaside.ValkeyError)
    assert not issubclass(ProtocolError, builtins.ConnectionError)


# --------------------------------------------------------------------------- RESET


@pytest.mark.requires_server(7, 0, reason="CLIENT INFO shows resp= from 7.0 on")
def test_reset_reconnects_with_the_same_settings(server_url: str) -> None:
    with valkeyaside.Client(server_url, db=2, client_name=NAME) as c:
        first_id = c.execute("CLIENT", "ID")
        assert c.execute("RESET") == "RESET"
        info = c.execute("CLIENT", "INFO").split()
        assert "db=2" in info
        assert "resp=3" in info
        assert f"name={NAME}" in info
        assert "t" in _flags(info)  # tracking on again
        assert c.execute("CLIENT", "ID") != first_id


def _flags(words: list[str]) -> str:
    for word in words:
        if word.startswith("flags="):
            return word[len("flags=") :]
    raise AssertionError(f"no flags in {words}")


def _query_buffer(server: ValkeyServer, client_id: int) -> int:
    line = bytes(server.command("CLIENT", "LIST", "ID", client_id)).decode().split()
    return _field(line, "qbuf")


def test_a_command_pipelined_behind_reset_does_not_run_on_the_reset_connection(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    # RESET puts the server side of the connection back to db 0, RESP2 and no
    # tracking. A command another thread wrote right behind it must not run
    # in that state: it may fail, but must not land in db 0.
    with valkeyaside.Client(server_url, db=2, socket_timeout=10) as c:
        client_id = c.execute("CLIENT", "ID")
        outcomes: dict[str, Any] = {}

        def run(name: str, *args: Any) -> None:
            try:
                outcomes[name] = c.execute(*args)
            except BaseException as exc:
                outcomes[name] = exc

        # Hold the connection with a BLPOP, so that RESET and SET queue behind it.
        threads = [threading.Thread(target=run, args=("gate", "BLPOP", "gate", 0))]
        threads[0].start()
        _eventually(lambda: _blocked_clients(valkey_server) == 1)
        threads.append(threading.Thread(target=run, args=("reset", "RESET")))
        threads[1].start()
        _eventually(lambda: _query_buffer(valkey_server, client_id) > 0)
        threads.append(threading.Thread(target=run, args=("set", "SET", "k", "v")))
        threads[2].start()
        reset_and_set = len(b"*1\r\n$5\r\nRESET\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        # The SET is either written behind RESET on the same socket, or (better)
        # held back from it and sent on a new connection.
        _eventually(
            lambda: _query_buffer(valkey_server, client_id) >= reset_and_set or "set" in outcomes
        )
        valkey_server.pipeline([("SELECT", 2), ("LPUSH", "gate", "open")])
        for thread in threads:
            thread.join(10)
        assert outcomes["gate"] == [b"gate", b"open"]
        assert outcomes["reset"] == "RESET"
    db0 = valkey_server.pipeline([("SELECT", 0), ("GET", "k")])[1]
    db2 = valkey_server.pipeline([("SELECT", 2), ("GET", "k")])[1]
    assert db0 is None, f"SET ran on the reset connection (db 0); it returned {outcomes['set']!r}"
    assert (outcomes["set"] == "OK" and db2 == b"v") or isinstance(
        outcomes["set"], valkeyaside.ConnectionError
    )
