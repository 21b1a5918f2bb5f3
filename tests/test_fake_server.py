"""The connection against a scripted fake server: what a real server will not send.

Garbage, attributes, streamed replies, pushes between replies, a reply nobody
asked for, a server without RESP3, a server that hangs up mid-frame, and
hostile lengths that must not make the client allocate.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
import tracemalloc
from typing import Any, Iterator

import pytest
from disconnects import disconnect_event
from fakeserver import SILENT, FakeServer, bulk, hello_map

import valkeyaside
from valkeyaside.lock import ACQUIRE, SET_IF_HOLDER, SET_IF_HOLDER_MANY
from valkeyaside.lock._locks import Locks
from valkeyaside.resp3 import Connection, ConnectionOptions, ProtocolError, Push


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def client(fake: FakeServer) -> Iterator[valkeyaside.Client]:
    with valkeyaside.Client(fake.url, socket_timeout=5, connect_timeout=5) as c:
        yield c


def _push(*items: bytes) -> bytes:
    return b">%d\r\n" % len(items) + b"".join(bulk(item) for item in items)


# --------------------------------------------------------------------------- handshake


def test_handshake_on_the_wire(fake: FakeServer) -> None:
    with valkeyaside.Client(
        fake.url, db=4, username="app", password="Pw-on-the-wire", client_name="svc"
    ) as c:
        assert c.execute("PING") == "PONG"
    assert fake.commands[:5] == [
        [b"HELLO", b"3", b"AUTH", b"app", b"Pw-on-the-wire", b"SETNAME", b"svc"],
        [b"SELECT", b"4"],
        [b"CLIENT", b"TRACKING", b"ON", b"OPTIN"],
        # The fills' scripts, known at once: one key's, many keys'.
        [b"SCRIPT", b"LOAD", SET_IF_HOLDER.source.encode()],
        [b"SCRIPT", b"LOAD", SET_IF_HOLDER_MANY.source.encode()],
    ]
    assert fake.commands[5] == [b"PING"]


def test_default_user_and_db_zero_send_no_select(fake: FakeServer) -> None:
    with valkeyaside.Client(fake.url, password="only-pw") as c:
        assert c.execute("ECHO", "x") == b"x"
    assert fake.commands[0] == [b"HELLO", b"3", b"AUTH", b"default", b"only-pw"]
    assert b"SELECT" not in fake.names()


def test_refused_command_reaches_no_server(fake: FakeServer, client: valkeyaside.Client) -> None:
    for command in (("SELECT", 1), ("MULTI",), ("SUBSCRIBE", "c"), ("CLIENT", "TRACKING", "off")):
        with pytest.raises(ValueError):
            client.execute(*command)
    assert fake.connections == []  # not even connected
    assert client.execute("PING") == "PONG"
    assert b"SELECT" not in fake.names()
    assert b"MULTI" not in fake.names()
    assert b"SUBSCRIBE" not in fake.names()
    assert fake.names().count(b"CLIENT") == 1  # the handshake's TRACKING ON only


@pytest.mark.parametrize(
    "hello",
    [
        _push(b"message", b"early", b"x") + hello_map(),  # a push first: skipped
        b"|1\r\n+note\r\n+x\r\n" + hello_map(),  # an attribute first: read past
    ],
    ids=["push", "attribute"],
)
def test_handshake_reply_with_a_frame_before_it(hello: bytes) -> None:
    with FakeServer(hello_reply=hello) as server, valkeyaside.Client(server.url) as c:
        assert c.execute("ECHO", "ok") == b"ok"


@pytest.mark.parametrize(
    ("hello_reply", "shown"),
    [
        (b"-ERR unknown command 'HELLO', with args beginning with: '3' \r\n",
         "unknown command 'HELLO'"),
        (b"-NOPROTO sorry, this protocol version is not supported\r\n", "NOPROTO"),
        (hello_map(proto=2), "proto"),
        (b"*2\r\n$5\r\nproto\r\n:2\r\n", "proto"),
        (b"+OK\r\n", "OK"),
    ],
)
def test_a_server_without_resp3_is_refused(hello_reply: bytes, shown: str) -> None:
    with FakeServer(hello_reply=hello_reply) as server, valkeyaside.Client(server.url) as c:
        with pytest.raises(valkeyaside.ConnectionError) as info:
            c.execute("PING")
        assert shown in str(info.value)
        assert not c.connection.connected
        assert [b"PING"] not in server.commands  # nothing sent past the handshake


def test_garbage_as_the_hello_reply() -> None:
    with FakeServer(hello_reply=b"HTTP/1.1 400 Bad Request\r\n\r\n") as server, \
            valkeyaside.Client(server.url) as c:
        with pytest.raises(valkeyaside.ConnectionError) as info:
            c.execute("PING")
        assert isinstance(info.value.__cause__, ProtocolError)


def test_a_failing_connect_command_is_named() -> None:
    refused = {b"CLIENT": b"-ERR tracking is not allowed here\r\n"}
    with FakeServer(handshake_replies=refused) as server:
        connection = Connection(ConnectionOptions.from_url(server.url))
        connection.add_connect_command("CLIENT", "TRACKING", "ON", "OPTIN")  # not optional
        try:
            with pytest.raises(valkeyaside.ConnectionError) as info:
                connection.call("PING")
        finally:
            connection.close()
        message = str(info.value)
        assert "CLIENT TRACKING" in message
        assert "tracking is not allowed here" in message


def test_a_client_refused_tracking_still_connects() -> None:
    refused = {b"CLIENT": b"-ERR tracking is not allowed here\r\n"}
    with FakeServer(handshake_replies=refused) as server, valkeyaside.Client(server.url) as c:
        c.execute("PING")
        assert c.connection.refused_connect_commands == (("CLIENT", "TRACKING", "ON", "OPTIN"),)


def test_a_silent_server_times_out_within_connect_timeout() -> None:
    with FakeServer(hello_reply=None) as server, valkeyaside.Client(
        server.url, connect_timeout=0.3, socket_timeout=10
    ) as c:
        started = time.monotonic()
        with pytest.raises(valkeyaside.TimeoutError) as info:
            c.execute("PING")
        assert 0.25 < time.monotonic() - started < 3
        assert isinstance(info.value, builtins.TimeoutError)


# --------------------------------------------------------------------------- broken streams


def test_garbage_fails_the_call_and_the_next_call_reconnects(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    assert client.execute("PING") == "PONG"
    fake.reply_next(b"@this is not RESP\r\n")
    with pytest.raises(valkeyaside.ConnectionError) as info:
        client.execute("GET", "k")
    assert isinstance(info.value, builtins.ConnectionError)
    assert isinstance(info.value.__cause__, ProtocolError)
    assert client.execute("ECHO", "fresh") == b"fresh"
    assert len(fake.connections) == 2
    fake.wait_for(lambda: fake.connections[0].closed)


def test_every_waiting_call_fails_on_garbage(fake: FakeServer, client: valkeyaside.Client) -> None:
    assert client.execute("PING") == "PONG"
    fake.reply_next(SILENT)
    fake.reply_next(SILENT)
    outcomes: list[BaseException] = []

    def call(n: int) -> None:
        try:
            client.execute("GET", f"k{n}")
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    fake.wait_for(lambda: fake.names()[-2:] == [b"GET", b"GET"])
    fake.send(b"?garbage\r\n")
    for thread in threads:
        thread.join(5)
    assert len(outcomes) == 2
    assert all(isinstance(e, valkeyaside.ConnectionError) for e in outcomes)
    assert all(isinstance(e.__cause__, ProtocolError) for e in outcomes)


def test_server_closes_mid_frame(fake: FakeServer, client: valkeyaside.Client) -> None:
    fake.reply_next(b"$10\r\nhal", close=True)
    with pytest.raises(valkeyaside.ConnectionError) as info:
        client.execute("GET", "k")
    assert not isinstance(info.value.__cause__, ProtocolError)
    assert client.execute("PING") == "PONG"
    assert len(fake.connections) == 2


def test_server_closes_without_answering(fake: FakeServer, client: valkeyaside.Client) -> None:
    fake.reply_next(SILENT, close=True)
    with pytest.raises(valkeyaside.ConnectionError):
        client.execute("GET", "k")
    assert client.execute("PING") == "PONG"


def test_a_reply_nobody_asked_for_closes_the_connection(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    assert client.execute("PING") == "PONG"
    lost, causes = disconnect_event(client)
    fake.send(b"+surprise\r\n")
    assert lost.wait(5)
    assert isinstance(causes[0], ProtocolError)
    assert "surprise" in str(causes[0])
    fake.wait_for(lambda: fake.connections[0].closed)
    assert not client.connection.connected
    assert client.execute("ECHO", "next") == b"next"  # on a new connection
    assert len(fake.connections) == 2


def test_an_extra_reply_after_a_call_closes_the_connection(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    lost, causes = disconnect_event(client)
    fake.reply_next(b"$3\r\none\r\n$3\r\ntwo\r\n")
    assert client.execute("GET", "k") == b"one"
    assert lost.wait(5)
    assert isinstance(causes[0], ProtocolError)
    assert client.execute("GET", "k") == "OK"  # on a new connection
    assert len(fake.connections) == 2


# --------------------------------------------------------------------------- timeouts


def test_a_late_reply_is_dropped_after_a_timeout(fake: FakeServer) -> None:
    # The call's own timeout is shorter than socket_timeout: past that, with
    # nothing read, the link would be dead (see test_deadlink).
    with valkeyaside.Client(fake.url, socket_timeout=5) as c:
        assert c.execute("PING") == "PONG"
        fake.reply_next(SILENT)
        with pytest.raises(valkeyaside.TimeoutError):
            c.connection.call("GET", "slow", timeout=0.2)
        fake.send(bulk("late"))  # the timed-out call's reply, after all
        assert c.execute("ECHO", "mine") == b"mine"
        assert c.execute("ECHO", "mine too") == b"mine too"
        assert len(fake.connections) == 1


# --------------------------------------------------------------------------- RESP3 shapes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # attributes annotate a reply without replacing it
        (b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
         b"*2\r\n:2039123\r\n:9543892\r\n", [2039123, 9543892]),
        (b"|1\r\n+ttl\r\n:3600\r\n$5\r\nhello\r\n", b"hello"),
        (b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", [1, 2]),
        # streamed strings and aggregates, assembled
        (b"$?\r\n;4\r\nHell\r\n;2\r\no!\r\n;0\r\n", b"Hello!"),
        (b"$?\r\n;0\r\n", b""),
        (b"*?\r\n:1\r\n$1\r\na\r\n.\r\n", [1, b"a"]),
        (b"%?\r\n+k\r\n:1\r\n.\r\n", {"k": 1}),
        (b"~?\r\n:1\r\n:2\r\n.\r\n", {1, 2}),
        (b"*?\r\n$?\r\n;2\r\nab\r\n;0\r\n*?\r\n.\r\n.\r\n", [b"ab", []]),
        # the other RESP3 types
        (b"#t\r\n", True),
        (b"#f\r\n", False),
        (b"_\r\n", None),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b",inf\r\n", float("inf")),
        (b",-1.5e3\r\n", -1500.0),
        (b"(3492890328409238509324850943850943825024385\r\n",
         3492890328409238509324850943850943825024385),
        (b"=15\r\ntxt:Some string\r\n", "Some string"),
        (b"~2\r\n*1\r\n:1\r\n:2\r\n", [[1], 2]),  # an unhashable member: a list
    ],
)
def test_reply_shapes(
    fake: FakeServer, client: valkeyaside.Client, raw: bytes, expected: Any
) -> None:
    fake.reply_next(raw)
    reply = client.execute("GET", "k")
    assert reply == expected
    assert type(reply) is type(expected)
    assert client.execute("ECHO", "after") == b"after"  # the stream is still in step


def test_nan_double(fake: FakeServer, client: valkeyaside.Client) -> None:
    fake.reply_next(b",nan\r\n")
    reply = client.execute("GET", "k")
    assert reply != reply


@pytest.mark.parametrize(
    "raw",
    [b"-ERR plain failure\r\n", b"!17\r\nERR plain failure\r\n"],
)
def test_error_replies_are_raised(fake: FakeServer, client: valkeyaside.Client, raw: bytes) -> None:
    fake.reply_next(raw)
    with pytest.raises(valkeyaside.ResponseError) as info:
        client.execute("GET", "k")
    assert str(info.value) == "ERR plain failure"
    assert client.execute("ECHO", "in-step") == b"in-step"


def test_a_reply_split_into_single_bytes(fake: FakeServer, client: valkeyaside.Client) -> None:
    fake.reply_next(SILENT)
    holder: list[Any] = []
    thread = threading.Thread(target=lambda: holder.append(client.execute("GET", "k")))
    thread.start()
    fake.wait_for(lambda: fake.commands[-1:] == [[b"GET", b"k"]])
    for byte in b"*2\r\n$3\r\nabc\r\n%1\r\n+x\r\n#t\r\n":
        fake.send(bytes([byte]))
    thread.join(5)
    assert holder == [[b"abc", {"x": True}]]


# --------------------------------------------------------------------------- pushes


def test_pushes_between_replies_keep_order_and_replies_match(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    pushes: list[Push] = []
    last = threading.Event()

    def on_push(push: Push) -> None:
        pushes.append(push)
        if push[-1] == b"4":
            last.set()

    client.connection.add_push_handler(on_push)
    fake.reply_next(_push(b"message", b"ch", b"1") + bulk("a"))
    fake.reply_next(_push(b"message", b"ch", b"2") + _push(b"message", b"ch", b"3") + bulk("b"))
    fake.reply_next(bulk("c") + _push(b"message", b"ch", b"4"))
    replies = client.connection.call_many([("GET", "a"), ("GET", "b"), ("GET", "c")])
    assert replies == [b"a", b"b", b"c"]
    assert last.wait(5)
    assert [p[-1] for p in pushes] == [b"1", b"2", b"3", b"4"]
    assert all(type(p) is Push for p in pushes)
    # And with one call at a time through execute.
    fake.reply_next(_push(b"message", b"ch", b"5") + bulk("d"))
    assert client.execute("GET", "d") == b"d"
    assert pushes[-1][-1] == b"5"
    assert len(fake.connections) == 1


def test_a_push_while_idle_keeps_the_connection(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    got = threading.Event()
    client.connection.add_push_handler(lambda push: got.set())
    assert client.execute("PING") == "PONG"
    fake.send(_push(b"message", b"ch", b"idle"))
    assert got.wait(5)
    assert client.execute("ECHO", "still") == b"still"
    assert len(fake.connections) == 1


def test_pushes_between_replies_from_many_threads(
    fake: FakeServer, client: valkeyaside.Client
) -> None:
    # Every answer comes after a push: no reply may go to the wrong caller.
    fake.before_reply = _push(b"message", b"ch", b"noise")
    count = 0
    counted = threading.Lock()

    def on_push(push: Push) -> None:
        nonlocal count
        with counted:
            count += 1

    client.connection.add_push_handler(on_push)
    failures: list[str] = []

    def worker(index: int) -> None:
        for j in range(200):
            token = f"{index}-{j}"
            reply = client.execute("ECHO", token)
            if reply != token.encode():
                failures.append(f"{token}: {reply!r}")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert count == 8 * 200  # each push came before its reply, so all were handled
    assert len(fake.connections) == 1


# --------------------------------------------------------------------------- hostile lengths


@pytest.mark.parametrize(
    ("raw", "protocol_error"),
    [
        (b"$4294967296\r\n", True),  # over the bulk limit: refused at the header
        (b"$99999999999999999999999\r\n", True),
        (b"=4294967296\r\n", True),
        (b"!4294967296\r\n", True),
        (b"*4294967297\r\n", True),
        (b"$500000000\r\nabc", False),  # within the limit: waits for data, allocates nothing
        (b"*4294967295\r\n:1\r\n", False),
        (b"%2147483647\r\n+a\r\n", False),
        (b"~4294967295\r\n", False),
    ],
)
def test_hostile_lengths_allocate_nothing(
    fake: FakeServer, client: valkeyaside.Client, raw: bytes, protocol_error: bool
) -> None:
    assert client.execute("PING") == "PONG"
    fake.reply_next(raw, close=not protocol_error)
    tracemalloc.start()
    try:
        with pytest.raises(valkeyaside.ConnectionError) as info:
            client.execute("GET", "k")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    assert isinstance(info.value.__cause__, ProtocolError) is protocol_error
    assert client.execute("ECHO", "recovered") == b"recovered"


# --------------------------------------------------------------------------- the lock mode


def test_set_nx_get_refused_as_a_syntax_error_switches_to_lua(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Behind a proxy that hides the server's version, an old server refuses
    ``SET NX GET``: the client locks with the Lua script from then on."""
    no_version = b"%2\r\n" + bulk("server") + bulk("proxy") + bulk("proto") + b":3\r\n"
    cold_read = [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n", b"*2\r\n:-2\r\n_\r\n"]
    with FakeServer(hello_reply=no_version) as server:
        for reply in [*cold_read, b"+OK\r\n",  # the read; the marker's SET
                      b"-ERR syntax error\r\n",  # SET key marker NX GET PX ttl
                      b"_\r\n", b"+OK\r\n",  # the Lua lock: taken; the fill
                      *cold_read[:3], b"*2\r\n:30000\r\n$6\r\nloaded\r\n",  # the read behind
                      *cold_read, b"_\r\n", b"+OK\r\n"]:  # another key: read, lock, fill
            server.reply_next(reply)
        with caplog.at_level(logging.WARNING, logger="valkeyaside"), valkeyaside.Client(
            server.url, socket_timeout=5
        ) as client:
            assert client.get("k", 30, lambda key: "loaded") == "loaded"
            assert client.get("other", 30, lambda key: "loaded too") == "loaded too"
        locks = [command for command in server.commands
                 if command[0].upper() in (b"SET", b"EVALSHA") and command[1] in (b"k", b"other",
                                                                                  ACQUIRE.sha.encode())]
    assert [(command[0].upper(), command[1]) for command in locks] == [
        (b"SET", b"k"), (b"EVALSHA", ACQUIRE.sha.encode()), (b"EVALSHA", ACQUIRE.sha.encode())
    ], "after the refusal every lock goes through the Lua script, the refused one again"
    assert [locks[1][3], locks[2][3]] == [b"k", b"other"]
    warnings = [r for r in caplog.records if "SET NX GET" in r.getMessage()]
    assert len(warnings) == 1


#: The replies to a cold read of "a" and "b" in one transaction (MULTI, a
#: PTTL and a GET each, EXEC; the fake answers CLIENT CACHING itself).
# MULTI, PTTL a, PTTL b, MGET a b, EXEC
_A_AND_B_READ = [b"+OK\r\n", *[b"+QUEUED\r\n"] * 3, b"*3\r\n:-2\r\n:-2\r\n*2\r\n_\r\n_\r\n"]


def _load_a_and_b(server: FakeServer) -> Locks:
    """``get_many(["a", "b"])`` on a client of ``server``, its loader answering
    "va" and "vb": the client's locks, for a look at their mode."""
    with valkeyaside.Client(server.url, socket_timeout=5) as client:
        assert client.get_many(["a", "b"], 30, lambda keys: {
            key: f"v{key}" for key in keys}) == {"a": "va", "b": "vb"}
        return client._aside.locks


def test_set_nx_get_refused_in_a_batch_transaction_switches_to_lua(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The locks of a ``get_many`` go as one transaction. Refused as it is
    queued (``EXECABORT``), every key is locked again with the Lua script."""
    no_version = b"%2\r\n" + bulk("server") + bulk("proxy") + bulk("proto") + b":3\r\n"
    with FakeServer(hello_reply=no_version) as server:
        for reply in [*_A_AND_B_READ, b"+OK\r\n",  # the read; the marker's SET
                      b"+OK\r\n", b"-ERR syntax error\r\n", b"-ERR syntax error\r\n",
                      b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                      b"_\r\n", b"_\r\n",  # the Lua locks: both taken
                      b"*2\r\n:1\r\n:1\r\n",  # the fill of both
                      *_A_AND_B_READ[:-1],  # the read behind it
                      b"*3\r\n:30000\r\n:30000\r\n*2\r\n$2\r\nva\r\n$2\r\nvb\r\n"]:
            server.reply_next(reply)
        with caplog.at_level(logging.WARNING, logger="valkeyaside"):
            _load_a_and_b(server)
        locks = [command[:2] for command in server.commands
                 if command[0].upper() in (b"MULTI", b"EXEC", b"SET", b"EVALSHA")]
    assert locks[3:11] == [
        [b"MULTI"], [b"SET", b"a"], [b"SET", b"b"], [b"EXEC"],
        [b"EVALSHA", ACQUIRE.sha.encode()], [b"EVALSHA", ACQUIRE.sha.encode()],
        [b"EVALSHA", SET_IF_HOLDER_MANY.sha.encode()], [b"MULTI"],
    ], locks
    assert len([r for r in caplog.records if "SET NX GET" in r.getMessage()]) == 1


def test_set_ifeq_refused_fills_with_the_script(caplog: pytest.LogCaptureFixture) -> None:
    """A server that says it is Valkey 8.1 but refuses ``SET ... IFEQ`` (an older
    one behind a proxy) as the fills are queued in their transaction with the
    read behind them: the keys are filled by the many-key script at once, and
    from then on."""
    valkey_81 = (b"%3\r\n" + bulk("server") + bulk("valkey") + bulk("version")
                 + bulk("8.1.0") + bulk("proto") + b":3\r\n")
    queued = b"+QUEUED\r\n"
    with FakeServer(hello_reply=valkey_81) as server:
        for reply in [*_A_AND_B_READ, b"+OK\r\n",  # the read; the marker's SET
                      b"+OK\r\n", queued, queued, b"*2\r\n_\r\n_\r\n",  # both locked
                      # MULTI, SET a/b ... IFEQ, EXISTS a b, EXEC: as an older server
                      # answers, the SETs refused as they run
                      b"+OK\r\n", queued, queued, queued,
                      b"*3\r\n-ERR syntax error\r\n-ERR syntax error\r\n:0\r\n",
                      b"*2\r\n:1\r\n:1\r\n"]:  # the script fills both
            server.reply_next(reply)
        with caplog.at_level(logging.WARNING, logger="valkeyaside"):
            assert _load_a_and_b(server).ifeq is False
        writes = [command[:4] for command in server.commands
                  if command[0].upper() in (b"SET", b"EVALSHA") and command[1] in (
                      b"a", b"b", SET_IF_HOLDER_MANY.sha.encode())]
    assert [command[:2] for command in writes] == [
        [b"SET", b"a"], [b"SET", b"b"], [b"SET", b"a"], [b"SET", b"b"],
        [b"EVALSHA", SET_IF_HOLDER_MANY.sha.encode()]], writes
    assert [command[3] for command in writes[2:4]] == [b"IFEQ", b"IFEQ"]
    assert len([r for r in caplog.records if "SET IFEQ" in r.getMessage()]) == 1
    fills = [index for index, command in enumerate(server.commands) if command[:1] == [b"SET"]
             and command[3:4] == [b"IFEQ"]]
    assert [command[:1] for command in server.commands[fills[0] - 2:fills[-1] + 3]] == [
        [b"CLIENT"], [b"MULTI"], [b"SET"], [b"SET"], [b"EXISTS"], [b"EXEC"]]
