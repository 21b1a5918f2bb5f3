"""The handshake's pure parts, and what a connection learns from it, against a real server."""

from __future__ import annotations

import pytest
from server import ValkeyServer

import valkeyaside
from valkeyaside.errors import ResponseError
from valkeyaside.resp3 import Connection, ConnectionOptions
from valkeyaside.resp3._handshake import (
    ConnectCommand,
    check_handshake,
    handshake_commands,
    parse_version,
)

TRACKING = ("CLIENT", "TRACKING", "ON", "OPTIN")
HELLO = {b"server": b"valkey", b"version": b"8.1.2", b"proto": 3}


@pytest.mark.parametrize(("text", "version"), [
    ("7.2.4", (7, 2, 4)),
    ("255.255.255", (255, 255, 255)),
    ("8.0.0-rc1", (8, 0, 0)),
    ("6.2", (6, 2)),
    ("", ()),
    (None, ()),
    ("unstable", ()),
])
def test_parse_version(text: str | None, version: tuple[int, ...]) -> None:
    assert parse_version(text) == version


def test_commands_in_order() -> None:
    options = ConnectionOptions(username="u", password="p", client_name="n", db=3)
    commands = handshake_commands(options, [ConnectCommand(TRACKING), ConnectCommand(("X",), True)])
    assert commands == [
        ("HELLO", 3, "AUTH", "u", "p", "SETNAME", "n"), ("SELECT", 3), TRACKING, ("X",),
    ]
    assert handshake_commands(ConnectionOptions()) == [("HELLO", 3)]
    assert handshake_commands(ConnectionOptions(password="p"))[0] == (
        "HELLO", 3, "AUTH", "default", "p")


def test_check_reads_the_server_and_records_optional_refusals() -> None:
    options = ConnectionOptions(db=2)
    required, optional = ConnectCommand(("A",)), ConnectCommand(TRACKING, optional=True)
    refusal = ResponseError("NOPERM no permission")
    result = check_handshake(options, [required, optional], [HELLO, "OK", "OK", refusal])
    assert (result.server, result.version) == ("valkey", (8, 1, 2))
    assert result.refused == ((optional, refusal),)
    with pytest.raises(valkeyaside.ConnectionError, match="SELECT 2 failed"):
        check_handshake(options, [], [HELLO, ResponseError("ERR DB index is out of range")])
    with pytest.raises(valkeyaside.ConnectionError, match="A failed"):
        check_handshake(options, [required], [HELLO, "OK", ResponseError("ERR no")])
    with pytest.raises(valkeyaside.ConnectionError, match="does not speak RESP3"):
        check_handshake(options, [], [ResponseError("NOPROTO unsupported protocol version")])
    with pytest.raises(valkeyaside.ConnectionError, match="without switching to RESP3"):
        check_handshake(options, [], [[b"server", b"redis"]])


def test_connection_knows_the_server_version_after_each_connect(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    connection = Connection(ConnectionOptions.from_url(server_url))
    try:
        assert connection.server_version is None
        assert connection.call("PING") == "PONG"
        info = bytes(valkey_server.command("INFO", "server")).decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        expected = fields.get("valkey_version") or fields["redis_version"]
        assert connection.server_version == parse_version(expected)
        assert connection.server_version == valkey_server.version
        assert connection.server_name in ("valkey", "redis")
        assert connection.refused_connect_commands == ()
    finally:
        connection.close()


def test_an_optional_connect_command_may_be_refused(
    valkey_server: ValkeyServer, server_url: str
) -> None:
    valkey_server.command("ACL", "SETUSER", "notrack", "on", ">pw", "~*", "&*", "+@all",
                          "-client|tracking")
    options = ConnectionOptions.from_url(server_url, username="notrack", password="pw")
    strict = Connection(options)
    strict.add_connect_command(*TRACKING)
    with pytest.raises(valkeyaside.ConnectionError, match="CLIENT TRACKING failed"):
        strict.call("PING")
    strict.close()
    lenient = Connection(options)
    lenient.add_connect_command(*TRACKING, optional=True)
    lenient.add_connect_command("CLIENT", "SETNAME", "still-sent")
    try:
        assert lenient.call("PING") == "PONG"
        assert lenient.refused_connect_commands == (TRACKING,)
        assert lenient.call("CLIENT", "GETNAME") == b"still-sent"
        assert "flags=N" in str(lenient.call("CLIENT", "INFO"))  # no tracking
    finally:
        lenient.close()
