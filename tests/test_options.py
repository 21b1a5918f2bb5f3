"""Connection options and URL parsing; a password never shows in a repr or an error."""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Iterator

import pytest
from tlsproxy import make_certificates, openssl_available

import valkeyaside
from valkeyaside.resp3 import ConnectionOptions

SECRET = "Pa55-w0rd-Zq9"
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 6379,
    "unix_path": None,
    "db": 0,
    "username": None,
    "password": None,
    "ssl": False,
    "socket_timeout": 10.0,
    "connect_timeout": 5.0,
    "client_name": None,
}


def _fields(options: ConnectionOptions) -> dict[str, Any]:
    return {
        name: getattr(options, name) for name in DEFAULTS
    }


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("valkey://localhost", {"host": "localhost"}),
        ("valkey://", {}),
        ("valkey://h:6380", {"host": "h", "port": 6380}),
        ("valkey://h:6380/3", {"host": "h", "port": 6380, "db": 3}),
        ("valkey://h/", {"host": "h"}),
        ("valkey://h/0", {"host": "h"}),
        ("valkey://h/15", {"host": "h", "db": 15}),
        ("redis://h:7000/1", {"host": "h", "port": 7000, "db": 1}),
        ("valkeys://h", {"host": "h", "ssl": True}),
        ("rediss://h:6390/2", {"host": "h", "port": 6390, "db": 2, "ssl": True}),
        ("VALKEY://H:1/2", {"host": "h", "port": 1, "db": 2}),
        ("valkey://[::1]:7000", {"host": "::1", "port": 7000}),
        ("valkey://10.0.0.5", {"host": "10.0.0.5"}),
        ("valkey://user:pw@h", {"host": "h", "username": "user", "password": "pw"}),
        ("valkey://:pw@h", {"host": "h", "password": "pw"}),
        ("valkey://user@h", {"host": "h", "username": "user"}),
        ("valkey://us%40er:p%3Aw%2F%25@h", {"host": "h", "username": "us@er", "password": "p:w/%"}),
        ("valkey://user:p@ss@h", {"host": "h", "username": "user", "password": "p@ss"}),
        (
            "valkey://h?socket_timeout=1.5&connect_timeout=2&client_name=app&db=4",
            {"host": "h", "socket_timeout": 1.5, "connect_timeout": 2.0, "client_name": "app",
             "db": 4},
        ),
        ("valkey://h?username=u&password=pw", {"host": "h", "username": "u", "password": "pw"}),
        ("valkey://h?password=a%26b%3Dc", {"host": "h", "password": "a&b=c"}),
        ("unix:///tmp/v.sock", {"unix_path": "/tmp/v.sock"}),
        ("unix:///tmp/v.sock?db=3", {"unix_path": "/tmp/v.sock", "db": 3}),
        ("unix:///tmp/my%20dir/v.sock", {"unix_path": "/tmp/my dir/v.sock"}),
        (
            "unix:///tmp/v.sock?db=2&username=u&password=pw&client_name=c&socket_timeout=3",
            {"unix_path": "/tmp/v.sock", "db": 2, "username": "u", "password": "pw",
             "client_name": "c", "socket_timeout": 3.0},
        ),
        ("unix://user:pw@/tmp/v.sock", {"unix_path": "/tmp/v.sock", "username": "user",
                                        "password": "pw"}),
    ],
)
def test_url_table(url: str, expected: dict[str, Any]) -> None:
    options = ConnectionOptions.from_url(url)
    assert _fields(options) == {**DEFAULTS, **expected}
    if options.ssl:
        assert isinstance(options.tls_context(), ssl.SSLContext)
    else:
        assert options.tls_context() is None


def test_address() -> None:
    assert ConnectionOptions.from_url("valkey://h:7").address == "h:7"
    assert ConnectionOptions.from_url("unix:///tmp/x.sock").address == "/tmp/x.sock"


def test_keyword_overrides_win_and_none_is_ignored() -> None:
    options = ConnectionOptions.from_url(
        "valkey://u:pw@h:7000/1?socket_timeout=2", db=5, port=None, password="other",
        socket_timeout=None,
    )
    assert (options.host, options.port, options.db) == ("h", 7000, 5)
    assert options.password == "other"
    assert options.socket_timeout == 2.0
    assert ConnectionOptions.from_url("valkeys://h", ssl=False).ssl is False


def test_client_takes_url_and_keywords() -> None:
    client = valkeyaside.Client("valkey://h:7000/1", db=3, client_name="app", socket_timeout=1)
    try:
        assert (client.options.host, client.options.port) == ("h", 7000)
        assert client.options.db == 3
        assert client.options.client_name == "app"
        assert client.options.socket_timeout == 1
    finally:
        client.close()
    client = valkeyaside.Client(host="h2", port=7001)
    try:
        assert client.options.address == "h2:7001"
    finally:
        client.close()


def test_an_ssl_context_turns_tls_on() -> None:
    context = ssl.create_default_context()
    options = ConnectionOptions(ssl_context=context)
    assert options.ssl
    assert options.tls_context() is context


def test_replace_ignores_none() -> None:
    options = ConnectionOptions(host="h", db=2)
    changed = options.replace(db=None, port=7000)
    assert (changed.host, changed.port, changed.db) == ("h", 7000, 2)


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not openssl_available():
        pytest.skip("the openssl command is not installed")
    ca, _, _ = make_certificates(str(tmp_path_factory.mktemp("certs")))
    yield ca


def test_ssl_query_options(ca_file: str) -> None:
    options = ConnectionOptions.from_url(f"valkeys://h?ssl_ca_certs={ca_file}")
    context = options.tls_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.get_ca_certs()  # the CA was loaded
    off = ConnectionOptions.from_url("valkeys://h?ssl_cert_reqs=none").tls_context()
    assert off is not None
    assert off.verify_mode == ssl.CERT_NONE
    assert not off.check_hostname
    on = ConnectionOptions.from_url("valkeys://h?ssl_cert_reqs=required").tls_context()
    assert on is not None
    assert on.verify_mode == ssl.CERT_REQUIRED


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://h", "scheme"),
        ("localhost:6379", "scheme"),
        ("h", "scheme"),
        ("valkey+tls://h", "scheme"),
        ("valkey://h?foo=1", "foo"),
        ("valkey://h?ssl=true", "ssl"),
        ("valkey://h/abc", "db"),
        ("valkey://h/1/2", "db"),
        ("valkey://h/-1", "db"),
        ("valkey://h:99999", "port"),
        ("valkey://h:abc", "port"),
        ("valkey://h:0", "port"),
        ("valkey://h?db=x", "db"),
        ("valkey://h?db=-1", "db"),
        ("valkey://h?socket_timeout=abc", "socket_timeout"),
        ("valkey://h?socket_timeout=0", "socket_timeout"),
        ("valkey://h?connect_timeout=-1", "connect_timeout"),
        ("valkeys://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "path"),
        ("unix://?db=1", "path"),
    ],
)
def test_bad_urls_raise_value_error(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConnectionOptions.from_url(url)
    with pytest.raises(ValueError, match=match):
        valkeyaside.Client(url)


@pytest.mark.parametrize(
    "changes",
    [
        {"db": -1},
        {"db": True},
        {"db": "1"},
        {"port": 0},
        {"port": 65536},
        {"port": "6379"},
        {"socket_timeout": 0},
        {"socket_timeout": -1},
        {"socket_timeout": "1"},
        {"connect_timeout": 0},
    ],
)
def test_bad_fields_raise_value_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnectionOptions(**changes)


@pytest.mark.parametrize("name", ["socket_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_timeouts_are_refused(name: str, value: float) -> None:
    # Accepted now, they fail on the first call with an OverflowError or a
    # ValueError from the socket module, not a valkeyaside error.
    with pytest.raises(ValueError, match=name):
        ConnectionOptions(**{name: value})


def test_none_timeouts_wait_forever() -> None:
    options = ConnectionOptions(socket_timeout=None, connect_timeout=None)
    assert options.socket_timeout is None
    assert options.connect_timeout is None


def test_options_are_frozen() -> None:
    options = ConnectionOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.db = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- the password, hidden


PASSWORD_URLS = [
    f"valkey://user:{SECRET}@h:7000/2",
    f"valkey://:{SECRET}@h",
    f"rediss://user:{SECRET}@h",
    f"valkey://h?password={SECRET}",
    f"valkey://h?username=u&password={SECRET}&db=1",
    f"unix:///tmp/v.sock?password={SECRET}",
    f"unix://user:{SECRET}@/tmp/v.sock",
]


@pytest.mark.parametrize("url", PASSWORD_URLS)
def test_repr_never_shows_the_password(url: str) -> None:
    options = ConnectionOptions.from_url(url)
    assert options.password == SECRET
    assert SECRET not in repr(options)
    assert SECRET not in str(options)
    client = valkeyaside.Client(url)
    try:
        assert SECRET not in repr(client)
        assert SECRET not in str(client)
        assert SECRET not in repr(client.options)
        assert SECRET not in repr(client.connection)
        assert client.options.password == SECRET
    finally:
        client.close()


def test_repr_with_keyword_password() -> None:
    client = valkeyaside.Client(host="h", username="u", password=SECRET)
    try:
        assert SECRET not in repr(client)
        assert SECRET not in repr(client.options)
    finally:
        client.close()
    options = ConnectionOptions(password=SECRET, ssl_context=ssl.create_default_context())
    assert SECRET not in repr(options)
    assert "SSLContext" not in repr(options)


def _all_text(exc: BaseException) -> str:
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts += [str(current), repr(current), *(repr(arg) for arg in current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# Each bad URL once with the password in the authority, once in the query.
BAD_URL_TAILS = [
    "h?foo=1",
    "h?foo=1&bar=2",
    "h/abc",
    "h/1/2",
    "h:99999",
    "h:abc",
    "h:0",
    "h?db=x",
    "h?db=-1",
    "h?socket_timeout=abc",
    "h?socket_timeout=0",
    "h?ssl_cert_reqs=maybe",
]


@pytest.mark.parametrize("tail", BAD_URL_TAILS)
@pytest.mark.parametrize("where", ["authority", "query", "both"])
def test_value_errors_never_show_the_password(tail: str, where: str) -> None:
    host, sep, query = tail.partition("?")
    query_password = f"password={SECRET}"
    if where == "authority":
        url = f"valkey://user:{SECRET}@{tail}"
    elif where == "query":
        url = f"valkey://{host}?{query_password}" + (f"&{query}" if sep else "")
    else:
        url = f"valkey://user:{SECRET}@{host}?{query_password}" + (f"&{query}" if sep else "")
    with pytest.raises(ValueError) as info:
        ConnectionOptions.from_url(url)
    assert SECRET not in _all_text(info.value)
    with pytest.raises(ValueError) as info:
        valkeyaside.Client(url)
    assert SECRET not in _all_text(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"unix://user:{SECRET}@",
        f"unix://?password={SECRET}",
        f"http://user:{SECRET}@h",
        f"ftp://h?password={SECRET}",
        f"valkey://user:{SECRET}@[::1",
    ],
)
def test_other_value_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        ConnectionOptions.from_url(url)
    assert SECRET not in _all_text(info.value)


@pytest.mark.parametrize("name", ["Password", "passwd"])
def test_a_misspelt_password_option_is_not_echoed(name: str) -> None:
    # An unknown option is refused; its value may well be a password, so the
    # message must not repeat it.
    with pytest.raises(ValueError, match=name) as info:
        ConnectionOptions.from_url(f"valkey://h?{name}={SECRET}")
    assert SECRET not in _all_text(info.value)


def test_the_password_does_not_show_in_a_connection_error() -> None:
    # Nothing listens on port 1 of the loopback: the error names the address only.
    client = valkeyaside.Client(f"valkey://user:{SECRET}@127.0.0.1:1", connect_timeout=2)
    try:
        with pytest.raises(valkeyaside.ConnectionError) as info:
            client.execute("PING")
        assert SECRET not in _all_text(info.value)
    finally:
        client.close()
