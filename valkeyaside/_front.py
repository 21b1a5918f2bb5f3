"""What ``Client`` and ``AsyncClient`` share: their options, their ``Aside``, stats."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

from ._aside import Aside, Seconds
from ._effects import Steps
from ._flights import NO_ANSWER, Flight, Flights
from ._topology import Topology
from .cache import Waiter
from .lock import Keeper
from .resp3 import ConnectionOptions
from .resp3._options import redact

__all__ = ["Front"]


class Front:
    """The state of a front end; a subclass names its transport, waiter and keeper.

    Args:
        url: ``valkey://[user[:password]@]host[:port][/db]``; also ``valkeys://``
            (TLS), ``redis://``, ``rediss://``, ``unix:///path.sock?db=0``.
            Several hosts (``valkey://h1:7000,h2:7000/0``) are seeds of a
            Valkey Cluster (``cluster=True`` says so of one host);
            ``valkey+sentinel://s1:26379,s2:26379/mymaster/0`` names the
            sentinels of a primary (also ``sentinel_master=``, ``sentinels=``,
            ``sentinel_username=``, ``sentinel_password=``).
        client_ttl: lifetime in seconds of this client's marker key; other
            clients take over its locks within this long after it dies.
        use_lua_lock: lock with a Lua script instead of ``SET NX GET``; None
            (the default) chooses from the server's version (Lua below 7.0).
        encoding: ``get`` returns ``str`` decoded with it; ``None`` for bytes.
        local_cache: False reads the server on every ``get`` (no tracking).
        cache_max_bytes: bound of the local cache (least recently used out first).
        negative_ttl: how long a loader's ``None`` is remembered (default: ttl).
        **options: host, port, db, username, password, ssl, ssl_context,
            socket_timeout, connect_timeout, client_name, health_check_interval,
            direct_connections (a threaded cluster client's sockets per node for
            uncached reads; see ``resp3._direct``)
            (override the URL).
    """

    #: Makes the transport for one server, for these options.
    _transport: Callable[[ConnectionOptions], Any]
    #: Makes the transport for a cluster, or for a primary found through Sentinel.
    _cluster_transport: Callable[[Topology], Any]
    _sentinel_transport: Callable[[Topology], Any]
    #: Makes a waiter the calling thread or task can park on.
    _new_waiter: Callable[[], Waiter]
    #: Starts the marker's keeper: ``_keeper(keep, transport)``.
    _keeper: Callable[[Callable[[], Steps[Optional[float]]], Any], Keeper]

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        client_ttl: Seconds = 10.0,
        use_lua_lock: Optional[bool] = None,
        encoding: Optional[str] = "utf-8",
        local_cache: bool = True,
        cache_max_bytes: int = 128 * 1024 * 1024,
        negative_ttl: Optional[Seconds] = None,
        **options: Any,
    ) -> None:
        self._url = redact(url)
        topology = Topology.from_url(url, options)
        self.options = topology.options
        if topology.sentinel:
            connection = type(self)._sentinel_transport(topology)
        elif topology.cluster is False:
            connection = type(self)._transport(topology.options)
        else:
            connection = type(self)._cluster_transport(topology)
        self.connection = connection
        keeper = type(self)._keeper
        self._aside = Aside(
            connection,
            new_waiter=type(self)._new_waiter,
            start_keeper=lambda keep: keeper(keep, connection),
            client_ttl=client_ttl,
            use_lua_lock=use_lua_lock,
            encoding=encoding,
            cache_max_bytes=cache_max_bytes,
            negative_ttl=negative_ttl,
            local_cache=local_cache,
        )
        self.encoding = encoding
        self.client_ttl = self._aside.client_ttl
        self._entries = self._aside.cache.store.entries  # the hit path reads it directly
        # Callers waiting for another caller's get of the same key (``_flights``).
        self._flights = Flights(self._aside.cache)
        connection.add_disconnect_handler(self._flights.ground)
        connection.add_fork_handler(self._flights.after_fork)
        self._hits = 0
        self._closed = False

    def __repr__(self) -> str:
        where = self._url or self.options.address
        return f"<valkeyaside.{type(self).__name__} {where} db={self.options.db}>"

    def _get_steps(self, key: str, ttl: Seconds, fn: Optional[Callable[..., Any]],
                   timeout: Optional[Seconds], future: Any
                   ) -> tuple[Optional[Flight], Optional[Steps[Any]], float, float]:
        """A missed ``get``'s arguments checked: ``(flight, steps, ttl_s, deadline)``.

        Callers of this client that miss the same key wait for the first
        one's get (see ``_flights``): a follower gets the flight to wait for
        (a task's ``future`` gets its result when it lands; with no future, a
        thread's ``flight.wait()`` returns) and no steps yet. Once it has
        landed, its ``answer`` is theirs (a fresh local entry); else the
        follower runs the algorithm itself, with what is left of its time
        (see ``_answer``). Its steps are made only then: a stampede's thousand
        followers mostly never need them.
        """
        aside = self._aside
        ttl_s, deadline = aside.prepare(key, ttl, fn, timeout)
        flight_key = (key, fn is None)
        flight, leading = self._flights.lead(flight_key, deadline, future)
        if leading:
            assert flight is not None
            steps = aside.get(key, ttl_s, fn, deadline)
            return None, self._flights.led(flight_key, flight, steps), ttl_s, deadline
        if flight is not None:
            aside.lock_waits += 1
            return flight, None, ttl_s, deadline
        return None, aside.get(key, ttl_s, fn, deadline), ttl_s, deadline

    def _answer(self, flight: Flight) -> Any:
        """After a followed get landed: its answer (a hit, counted), or ``NO_ANSWER``
        when the follower must run the algorithm itself (nothing allocated: a
        stampede's followers all come through here at once)."""
        answer = flight.answer
        if answer is not NO_ANSWER:
            self._hits += 1
        return answer

    def _many(self, keys: Iterable[str], ttl: Seconds, fn: Optional[Callable[..., Any]],
              timeout: Optional[Seconds]) -> Union[dict[str, Any], Steps[dict[str, Any]]]:
        """``get_many``'s answer when every key is a local hit, else its steps."""
        aside = self._aside
        keys = aside.key_list(keys)
        found = aside.hits(keys, ttl, timeout)
        if found is not None:
            return found
        unique, ttl_s, deadline = aside.prepare_many(keys, ttl, fn, timeout)
        return aside.get_many(unique, ttl_s, fn, deadline)

    def stats(self) -> dict[str, Any]:
        """Counters since the client was made (approximate under heavy concurrency)."""
        return self._aside.stats(self._hits)
