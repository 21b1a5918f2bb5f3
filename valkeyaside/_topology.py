"""Where the data lives: one server, a cluster, or a primary found through Sentinel.

A URL names one of three topologies:

- ``valkey://host:port/0``: one server;
- ``valkey://h1:7000,h2:7000/0``: several seed nodes of a Valkey Cluster
  (cluster mode is then confirmed with the server; ``cluster=True`` also
  makes a single seed a cluster seed);
- ``valkey+sentinel://s1:26379,s2:26379/mymaster/0``: the sentinels that
  know the primary named ``mymaster`` (also ``sentinel_master=`` and
  ``sentinels=`` with any URL).

The credentials and options of the URL are the data nodes'; the sentinels
take theirs from ``sentinel_username=``/``sentinel_password=`` only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from .resp3 import ConnectionOptions
from .resp3._options import redact

__all__ = ["Address", "Topology"]

Address = tuple[str, int]

_SENTINEL_SCHEMES = {"valkey+sentinel": "valkey", "redis+sentinel": "redis",
                     "valkeys+sentinel": "valkeys", "rediss+sentinel": "rediss"}
_SENTINEL_PORT = 26379
_DEFAULT_PORT = 6379


def _address(text: str, default_port: int, url: str) -> Address:
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, default_port
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid host:port {text!r} in URL {redact(url)}")
    return host, int(port)


def _addresses(value: Any, name: str) -> list[Address]:
    """``[(host, port), ...]`` from a list of pairs or of ``"host:port"`` strings."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise TypeError(f"{name} must be a non-empty list of (host, port) or 'host:port'")
    found = []
    for item in value:
        if isinstance(item, str):
            found.append(_address(item, _SENTINEL_PORT, item))
        elif (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], int) and not isinstance(item[1], bool)):
            found.append((item[0], item[1]))
        else:
            raise TypeError(f"{name} must hold (host, port) pairs or 'host:port' strings, "
                            f"not {item!r}")
    return found


@dataclasses.dataclass(frozen=True)
class Topology:
    """What a front end connects to.

    ``options`` are the data nodes' options (host/port: the first seed).
    ``seeds``: the data nodes named (several for a cluster). ``cluster``:
    True (a cluster), False (one server), None (several seeds: ask the
    server). ``sentinel_master``/``sentinels``/``sentinel_options``: the
    Sentinel setup, when there is one.
    """

    options: ConnectionOptions
    seeds: tuple[Address, ...]
    cluster: Optional[bool] = False
    sentinel_master: Optional[str] = None
    sentinels: tuple[Address, ...] = ()
    sentinel_options: Optional[ConnectionOptions] = None

    @property
    def sentinel(self) -> bool:
        return self.sentinel_master is not None

    @classmethod
    def from_url(cls, url: Optional[str], options: dict[str, Any]) -> Topology:
        """The topology for ``Client(url, **options)``; the topology keywords
        (``cluster``, ``sentinel_master``, ``sentinels``, ``sentinel_username``,
        ``sentinel_password``) are taken out of ``options``."""
        options = dict(options)
        cluster = options.pop("cluster", None)
        master = options.pop("sentinel_master", None)
        sentinels = options.pop("sentinels", None)
        sentinel_auth = {"username": options.pop("sentinel_username", None),
                         "password": options.pop("sentinel_password", None)}
        if cluster not in (None, True, False):
            raise TypeError("cluster must be True, False or None (ask the server)")
        seeds: list[Address] = []
        if url:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            userinfo, at, hosts = parts.netloc.rpartition("@")
            if scheme in _SENTINEL_SCHEMES:
                path = [part for part in parts.path.split("/") if part]
                if not path or len(path) > 2:
                    raise ValueError(f"a sentinel URL is {scheme}://host:port[,host:port...]"
                                     f"/master_name[/db], not {redact(url)}")
                master = master if master is not None else path[0]
                sentinels = sentinels if sentinels is not None else [
                    _address(host, _SENTINEL_PORT, url) for host in hosts.split(",") if host]
                data_url = urlunsplit((_SENTINEL_SCHEMES[scheme], userinfo + at + "127.0.0.1",
                                       "/" + (path[1] if len(path) > 1 else ""), parts.query, ""))
            elif "," in hosts:
                seeds = [_address(host, _DEFAULT_PORT, url) for host in hosts.split(",") if host]
                data_url = urlunsplit((parts.scheme, f"{userinfo}{at}{seeds[0][0]}:{seeds[0][1]}",
                                       parts.path, parts.query, ""))
                if cluster is False:
                    raise ValueError(f"several hosts name a cluster, not one server: {redact(url)}")
            else:
                data_url = url
            data = ConnectionOptions.from_url(data_url, **options)
        else:
            data = ConnectionOptions(**options)
        if master is not None or sentinels is not None:
            if master is None or sentinels is None:
                raise ValueError("a Sentinel setup needs both sentinel_master= and sentinels=")
            if not isinstance(master, str) or not master:
                raise TypeError("sentinel_master must be the primary's name, a non-empty str")
            if cluster:
                raise ValueError("a Sentinel setup is not a cluster")
            sentinel_options = ConnectionOptions(
                ssl=data.ssl, ssl_context=data.ssl_context,
                socket_timeout=data.socket_timeout, connect_timeout=data.connect_timeout,
                health_check_interval=data.health_check_interval,
                **{k: v for k, v in sentinel_auth.items() if v is not None})
            return cls(data, (), False, master, tuple(_addresses(sentinels, "sentinels")),
                       sentinel_options)
        if any(v is not None for v in sentinel_auth.values()):
            raise ValueError("sentinel_username/sentinel_password need a Sentinel setup")
        if not seeds:  # one host: a cluster only when asked for
            seeds = [(data.host, data.port)]
            cluster = bool(cluster)
        return cls(data, tuple(seeds), cluster)
