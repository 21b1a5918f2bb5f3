"""Connection options, and the URLs that spell them."""

from __future__ import annotations

import dataclasses
import ssl as ssl_module
from typing import Any, Callable, Optional, Union
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["ConnectionOptions"]

# The socket module refuses larger timeouts (they overflow its clock).
_MAX_TIMEOUT = 86400.0 * 365
_TCP_SCHEMES = {"valkey": False, "redis": False, "valkeys": True, "rediss": True}
# Query options whose values may appear in messages; any other value (a
# password, or a misspelling of one) is masked.
_PLAIN_QUERY_OPTIONS = {"db", "socket_timeout", "connect_timeout", "client_name", "username",
                        "ssl_ca_certs", "ssl_cert_reqs", "health_check_interval",
                        "direct_connections"}


def _seconds_or_none(raw: str) -> Optional[float]:
    return None if raw.lower() in ("none", "off") else float(raw)


_QUERY_OPTIONS: dict[str, Callable[[str], Any]] = {
    "db": int,
    "socket_timeout": float,
    "connect_timeout": float,
    "health_check_interval": _seconds_or_none,
    "client_name": str,
    "username": str,
    "password": str,
    "ssl_ca_certs": str,
    "ssl_cert_reqs": str,
    "direct_connections": int,
}


@dataclasses.dataclass(frozen=True)
class ConnectionOptions:
    """Where and how to connect. The password never appears in ``repr``.

    Timeouts are in seconds; ``None`` waits forever. ``socket_timeout`` bounds
    how long a call waits for its reply and how long a write may block; a
    link that reads nothing for that long while a reply is due is dead.
    ``health_check_interval``: a link that reads nothing for that long sends
    a ``PING``; unanswered within 1 s, the link is dead (``None`` or 0: no
    PING; see ``_health``). ``direct_connections``: on a cluster, how many
    sockets per node the calling threads of a ``Client`` may use alone for
    uncached read-only commands (``_direct``; 0: none, everything goes over
    the one tracked link).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: Optional[str] = None
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    ssl: bool = False
    ssl_context: Optional[ssl_module.SSLContext] = dataclasses.field(default=None, repr=False)
    socket_timeout: Optional[float] = 10.0
    connect_timeout: Optional[float] = 5.0
    client_name: Optional[str] = None
    health_check_interval: Optional[float] = 1.0
    direct_connections: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.db, int) or isinstance(self.db, bool) or self.db < 0:
            raise ValueError(f"db must be a non-negative int, not {self.db!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be an int from 1 to 65535, not {self.port!r}")
        for name in ("socket_timeout", "connect_timeout"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not 0 < value <= _MAX_TIMEOUT
            ):
                raise ValueError(
                    f"{name} must be a positive number of seconds up to {_MAX_TIMEOUT:g}, "
                    "or None to wait forever"
                )
        interval = self.health_check_interval
        if interval is not None and (
            not isinstance(interval, (int, float))
            or isinstance(interval, bool)
            or not 0 <= interval <= _MAX_TIMEOUT
        ):
            raise ValueError(
                f"health_check_interval must be a number of seconds up to {_MAX_TIMEOUT:g}, "
                "or None (or 0) for no health check"
            )
        direct = self.direct_connections
        if not isinstance(direct, int) or isinstance(direct, bool) or direct < 0:
            raise ValueError(f"direct_connections must be a non-negative int, not {direct!r}")
        if interval == 0:
            object.__setattr__(self, "health_check_interval", None)
        if self.ssl_context is not None and not self.ssl:
            object.__setattr__(self, "ssl", True)

    @property
    def address(self) -> str:
        """Where the server is, for messages: ``host:port`` or the socket path."""
        return self.unix_path if self.unix_path is not None else f"{self.host}:{self.port}"

    def tls_context(self) -> Optional[ssl_module.SSLContext]:
        """The TLS context to use: the given one, else one that verifies certificates."""
        if not self.ssl:
            return None
        return self.ssl_context or ssl_module.create_default_context()

    def replace(self, **changes: Any) -> ConnectionOptions:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> ConnectionOptions:
        """Parse ``valkey://``, ``valkeys://``, ``redis://``, ``rediss://`` or ``unix://``.

        ``valkey://[user[:password]@]host[:port][/db][?socket_timeout=1&...]``;
        ``unix:///path/to.sock?db=0&password=...``. Keyword overrides win;
        those that are None are ignored, except ``health_check_interval``
        (None turns the health check off, as ``?health_check_interval=none``).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        fields: dict[str, Any] = {}
        if scheme in _TCP_SCHEMES:
            fields["ssl"] = _TCP_SCHEMES[scheme]
            if parts.hostname:
                fields["host"] = parts.hostname
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"invalid port in URL {_redact(url)}") from None
            if port is not None:
                fields["port"] = port
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ValueError(f"the URL path must be a db number, in {_redact(url)}")
                fields["db"] = int(path)
        elif scheme == "unix":
            if not parts.path:
                raise ValueError(f"a unix URL needs a socket path: {_redact(url)}")
            fields["unix_path"] = unquote(parts.path)
        else:
            raise ValueError(
                f"unsupported URL scheme {parts.scheme!r}: use valkey, valkeys, redis, rediss "
                "or unix"
            )
        if parts.username:
            fields["username"] = unquote(parts.username)
        if parts.password:
            fields["password"] = unquote(parts.password)
        tls: dict[str, str] = {}
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            convert = _QUERY_OPTIONS.get(name)
            if convert is None:
                raise ValueError(f"unknown URL option {name!r} in {_redact(url)}")
            try:
                value = convert(raw)
            except ValueError:
                raise ValueError(f"URL option {name!r} has an invalid value") from None
            if name.startswith("ssl_"):
                tls[name] = value
            else:
                fields[name] = value
        if tls:
            fields["ssl_context"] = _context_from_query(tls)
        fields.update({k: v for k, v in overrides.items()
                       if v is not None or k == "health_check_interval"})
        return cls(**fields)


def _context_from_query(tls: dict[str, str]) -> ssl_module.SSLContext:
    context = ssl_module.create_default_context(cafile=tls.get("ssl_ca_certs"))
    reqs = tls.get("ssl_cert_reqs", "required").lower()
    if reqs == "none":  # an explicit opt-out, never the default
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    elif reqs != "required":
        raise ValueError("URL option 'ssl_cert_reqs' must be 'required' or 'none'")
    return context


def _redact(url: str) -> str:
    """The URL with its password (in the authority or the query) replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}:***@{host}"
    query = "&".join(
        f"{k}={v}" if k in _PLAIN_QUERY_OPTIONS else f"{k}=***"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return parts._replace(netloc=netloc, query=query).geturl()


def redact(url: Union[str, None]) -> str:
    """Public form of :func:`_redact` for messages and reprs."""
    return _redact(url) if url else ""
