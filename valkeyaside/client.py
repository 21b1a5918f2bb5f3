"""The facade: ``Client.get(key, ttl, fn)`` and friends.

``get`` keeps the algorithm of SPEC.md: a fresh local entry answers at once;
otherwise a tracked read; on a miss, the first caller locks the key with a
placeholder naming its marker and loads, and everyone else waits for the
invalidation that the fill (or the holder's death) causes.
"""

from __future__ import annotations

import codecs
import contextvars
import datetime
import logging
import time
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from .cache import TrackedCache, Waiter
from .errors import TimeoutError, ValkeyError
from .lock import PLACEHOLDER_PREFIX, KeyGates, Locks
from .resp3 import Arg, Connection, ConnectionOptions, Request, encode_command
from .resp3._options import redact

__all__ = ["TOMBSTONE", "Client", "TypedClient", "override_cache_ttl"]

log = logging.getLogger("valkeyaside")

Seconds = Union[int, float, datetime.timedelta]
Value = Union[str, bytes]
Loader = Callable[[str], Optional[Value]]

_PLACEHOLDER = PLACEHOLDER_PREFIX.encode()
_monotonic = time.monotonic
_INF = float("inf")
#: What a negative-cached key holds on the server: "the loader found nothing".
TOMBSTONE = b"\x00valkeyaside:none\x00"

# Commands that would change the shared connection's state under every other
# caller (its db, its protocol, its tracking, a transaction or a subscription).
_REFUSED = {
    "SELECT": "set db= on the Client instead",
    "HELLO": "the connection must stay on RESP3",
    "AUTH": "set username=/password= on the Client instead",
    "MULTI": "transactions would interleave with other callers on the shared connection",
    "EXEC": "transactions would interleave with other callers on the shared connection",
    "DISCARD": "transactions would interleave with other callers on the shared connection",
    "WATCH": "transactions would interleave with other callers on the shared connection",
    "UNWATCH": "transactions would interleave with other callers on the shared connection",
    "SUBSCRIBE": "subscriptions are not supported on the cache connection",
    "PSUBSCRIBE": "subscriptions are not supported on the cache connection",
    "SSUBSCRIBE": "subscriptions are not supported on the cache connection",
    "UNSUBSCRIBE": "subscriptions are not supported on the cache connection",
    "PUNSUBSCRIBE": "subscriptions are not supported on the cache connection",
    "SUNSUBSCRIBE": "subscriptions are not supported on the cache connection",
    "MONITOR": "MONITOR would take over the shared connection",
    "QUIT": "use close()",
    "SYNC": "replication would take over the shared connection",
    "PSYNC": "replication would take over the shared connection",
}
_REFUSED_CLIENT = {"TRACKING", "CACHING", "REPLY", "SETNAME"}

_NO_OVERRIDE: Any = object()
_OUTSIDE_LOADER: Any = object()
_cache_ttl_override: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "valkeyaside_cache_ttl_override", default=_OUTSIDE_LOADER
)


def override_cache_ttl(ttl: Seconds) -> None:
    """Inside a loader: store the value it returns for ``ttl`` instead of ``get``'s ttl."""
    if _cache_ttl_override.get() is _OUTSIDE_LOADER:
        raise RuntimeError("override_cache_ttl() works only inside a loader called by get()")
    _cache_ttl_override.set(_seconds(ttl, "ttl"))


def _word(arg: object) -> str:
    """A command word, upper-cased, whatever form the encoder accepts it in."""
    if isinstance(arg, str):
        return arg.upper()
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg).decode("latin-1").upper()
    return ""


def _seconds(value: Seconds, name: str) -> float:
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds (int or float) or a timedelta, "
                        f"not {type(value).__name__}")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{name} must be a positive, finite duration, not {value!r}")
    return seconds


def _millis(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Client:
    """A Cache-Aside client for Valkey; thread-safe, one per process is plenty.

    Args:
        url: ``valkey://[user[:password]@]host[:port][/db]``; also ``valkeys://``
            (TLS), ``redis://``, ``rediss://``, ``unix:///path.sock?db=0``.
        client_ttl: lifetime in seconds of this client's marker key; other
            clients take over its locks within this long after it dies.
        use_lua_lock: lock with a Lua script instead of ``SET NX GET``
            (for servers older than 7.0).
        encoding: ``get`` returns ``str`` decoded with it; ``None`` for bytes.
        cache_max_bytes: bound of the local cache (least recently used out first).
        negative_ttl: how long a loader's ``None`` is remembered (default: ttl).
        **options: host, port, db, username, password, ssl, ssl_context,
            socket_timeout, connect_timeout, client_name (override the URL).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        client_ttl: Seconds = 10.0,
        use_lua_lock: bool = False,
        encoding: Optional[str] = "utf-8",
        cache_max_bytes: int = 128 * 1024 * 1024,
        negative_ttl: Optional[Seconds] = None,
        **options: Any,
    ) -> None:
        if encoding is not None:
            codecs.lookup(encoding)  # LookupError now rather than on the first get
        self._url = redact(url)
        self.options = (
            ConnectionOptions.from_url(url, **options) if url else ConnectionOptions(**options)
        )
        self.encoding = encoding
        self.client_ttl = _seconds(client_ttl, "client_ttl")
        self.negative_ttl = None if negative_ttl is None else _seconds(negative_ttl, "negative_ttl")
        self.connection = Connection(self.options)
        self._cache = TrackedCache(self.connection, cache_max_bytes, self._decode)
        self._entries = self._cache.store.entries  # the hit path reads it directly
        self._locks = Locks(self.connection, self.client_ttl, use_lua_lock)
        self._gates = KeyGates()
        self.connection.add_fork_handler(self._gates.after_fork)
        self._hits = 0
        self._loads = 0
        self._lock_waits = 0
        self._takeovers = 0
        self._closed = False

    def __repr__(self) -> str:
        where = self._url or self.options.address
        return f"<valkeyaside.Client {where} db={self.options.db}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- get -----------------------------------------------------------------

    def get(
        self,
        key: str,
        ttl: Seconds,
        fn: Optional[Loader] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> Optional[Value]:
        """The value of ``key``, from the local cache, the server, or ``fn(key)``.

        ``fn`` runs in at most one caller across all clients while the key is
        missing; the others wait (up to ``min(timeout, ttl)``) for its result.
        Returns ``None`` when the key is absent and there is no ``fn``, or when
        ``fn`` returned ``None`` (remembered for ``negative_ttl``, else ``ttl``).
        """
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.plain
            and entry.expires > _monotonic()
            # The same checks as the slow path, for the common argument types only.
            and key.__class__ is str
            and (ttl.__class__ is int or ttl.__class__ is float)
            and 0 < ttl < _INF
            and timeout is None
        ):
            entry.used = True
            self._hits += 1
            return entry.value  # type: ignore[no-any-return]
        return self._get_slow(key, ttl, fn, timeout)

    def _get_slow(
        self, key: str, ttl: Seconds, fn: Optional[Loader], timeout: Optional[Seconds]
    ) -> Optional[Value]:
        if type(key) is not str:
            raise TypeError(f"key must be str, not {type(key).__name__}")
        ttl_s = _seconds(ttl, "ttl")
        limit = ttl_s if timeout is None else min(_seconds(timeout, "timeout"), ttl_s)
        if fn is not None and not callable(fn):
            raise TypeError("fn must be callable (or None)")
        deadline = _monotonic() + limit
        cache = self._cache
        while True:
            waiter = Waiter()
            cache.waiters.watch(waiter, key)  # before reading: no invalidation is missed
            try:
                entry = cache.read(key, ttl_s, self._remaining(deadline, key))
                if entry.plain:
                    return entry.value  # type: ignore[no-any-return]
                wait_until = min(deadline, entry.expires)
                raw = entry.raw
                if raw is None:
                    if fn is None:
                        return None
                    loaded, result = self._load(key, ttl_s, fn, deadline)
                    if loaded:
                        return result  # type: ignore[no-any-return]
                    raw = result  # someone else's placeholder, or a value that appeared
                    if not raw.startswith(_PLACEHOLDER):
                        return self._decode(raw)[0]  # type: ignore[no-any-return]
                self._await_holder(key, raw.decode(), waiter, wait_until, deadline)
            finally:
                cache.waiters.forget(waiter)

    def _await_holder(
        self, key: str, placeholder: str, waiter: Waiter, wait_until: float, deadline: float
    ) -> None:
        """Someone holds ``key``: wait for its fill, or take over if it died.

        Invalidations of the key (filled, released) or of the holder's marker
        (refreshed, expired) wake the waiter. It also wakes when the marker or
        the lock would expire, in case the server's expiry sent no push.
        """
        cache = self._cache
        cache.waiters.watch(waiter, placeholder)
        marker = cache.read(placeholder, self.client_ttl, self._remaining(deadline, key))
        if marker.raw is None:  # its holder's marker expired: the holder is gone
            self._takeovers += 1
            self._locks.release(key, placeholder, self._remaining(deadline, key))
            cache.drop([key])  # don't wait for the push to forget the dead placeholder
            return
        self._lock_waits += 1
        if not waiter.wait(min(wait_until, marker.expires) - _monotonic()) and (
            _monotonic() >= deadline
        ):
            raise TimeoutError(f"get({key!r}): still locked by {placeholder} at the deadline")

    def _remaining(self, deadline: float, key: str) -> float:
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise TimeoutError(f"get({key!r}) ran out of time")
        socket_timeout = self.options.socket_timeout
        return remaining if socket_timeout is None else min(remaining, socket_timeout)

    def _load(self, key: str, ttl: float, fn: Loader, deadline: float) -> tuple[bool, Any]:
        """Lock and load: ``(True, value)`` when we loaded, else ``(False, what we found)``."""
        marker = self._locks.marker.ensure(self._remaining(deadline, key))
        turn = f"{marker}\x00{key}"
        if not self._gates.enter(turn, deadline - _monotonic()):
            raise TimeoutError(f"get({key!r}): another load of it in this client outlasted "
                               "the deadline")
        try:
            return self._load_in_turn(key, marker, ttl, fn, deadline)
        finally:
            self._gates.exit(turn)

    def _load_in_turn(
        self, key: str, marker: str, ttl: float, fn: Loader, deadline: float
    ) -> tuple[bool, Any]:
        ttl_ms = _millis(ttl)
        current = self._locks.acquire(key, marker, ttl_ms, self._remaining(deadline, key))
        if current is not None:
            return False, current
        self._loads += 1
        try:
            token = _cache_ttl_override.set(_NO_OVERRIDE)
            try:
                value = fn(key)
                override = _cache_ttl_override.get()
            finally:
                _cache_ttl_override.reset(token)
            data = self._encode_value(key, value)
            if override is not _NO_OVERRIDE:
                store_ttl = override
            elif value is None and self.negative_ttl is not None:
                store_ttl = self.negative_ttl
            else:
                store_ttl = ttl
            self._locks.fill(key, marker, data, _millis(store_ttl), None)
        except BaseException:
            try:
                self._locks.release(key, marker, None)
            except ValkeyError as exc:  # it expires after ttl anyway
                log.warning("could not release the lock on %r: %s", key, exc)
            raise
        return True, self._decode(data)[0]

    def _encode_value(self, key: str, value: object) -> bytes:
        if value is None:
            return TOMBSTONE
        if isinstance(value, str):
            data = value.encode(self.encoding or "utf-8")
        elif isinstance(value, bytes):
            data = value
            if self.encoding is not None:
                try:
                    data.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    raise ValueError(
                        f"the loader for {key!r} returned bytes that are not valid "
                        f"{self.encoding}; use encoding=None for binary values"
                    ) from exc
        else:
            raise TypeError(
                f"the loader for {key!r} returned {type(value).__name__}: "
                "it must return str, bytes or None"
            )
        if data.startswith(_PLACEHOLDER):
            raise ValueError(f"the loader for {key!r} returned a value that begins with "
                             f"{PLACEHOLDER_PREFIX!r}, which marks a lock")
        if data == TOMBSTONE:
            raise ValueError(f"the loader for {key!r} returned the negative-cache marker")
        return data

    def _decode(self, raw: Optional[bytes]) -> tuple[Any, bool]:
        """(what get returns, whether that is final) for what the server holds."""
        if raw is None or raw.startswith(_PLACEHOLDER):
            return raw, False  # absent, or locked: get must act
        if raw == TOMBSTONE:
            return None, True
        return (raw if self.encoding is None else raw.decode(self.encoding)), True

    # -- other commands --------------------------------------------------------

    def delete(self, *keys: str) -> int:
        """DEL the keys; they leave the local cache as soon as the reply arrives."""
        if not keys:
            return 0
        for key in keys:
            if type(key) is not str:
                raise TypeError(f"keys must be str, not {type(key).__name__}")
        dropped = list(keys)
        request = Request(encode_command("DEL", *keys),
                          on_reply=lambda _request: self._cache.drop(dropped))
        self.connection.submit(request)
        reply = request.wait(self.options.socket_timeout)[0]
        if isinstance(reply, Exception):
            raise reply
        return int(reply)

    def execute(self, *args: Arg) -> Any:
        """Run any command, uncached; the reply as Python values (bulk strings as bytes).

        Commands that would change the shared connection for every other
        caller (SELECT, MULTI, SUBSCRIBE, CLIENT TRACKING, ...) are refused
        with ``ValueError``. RESET resets the connection: the local cache is
        dropped and the next call reconnects.
        """
        if not args:
            raise TypeError("execute() needs a command")
        first = args[0]
        name = first.upper() if type(first) is str else _word(first)
        reason = _REFUSED.get(name)
        if reason is None and name == "CLIENT" and len(args) > 1 and (
            _word(args[1]) in _REFUSED_CLIENT
        ):
            reason = "it would change the connection that the cache depends on"
        if reason is not None:
            raise ValueError(f"execute({name}) is refused: {reason}")
        if name == "RESET":
            # Nothing may follow RESET on that socket; it is closed on the reply,
            # which drops the local cache, and the next call connects afresh.
            return self.connection.call_last(*args)
        return self.connection.call(*args)

    # -- lifecycle -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since the client was made (approximate under heavy concurrency)."""
        cache = self._cache
        return {
            "hits": self._hits + cache.hits,
            "misses": cache.misses,
            "loads": self._loads,
            "lock_waits": self._lock_waits,
            "takeovers": self._takeovers,
            "invalidations": cache.invalidations,
            "flushes": cache.flushes,
            "evictions": cache.store.evictions,
            "entries": len(cache.store.entries),
            "bytes": cache.store.bytes,
        }

    def close(self) -> None:
        """Stop the marker refresher, delete the marker, close the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            self._locks.close()
        finally:
            self.connection.close()
            self._cache.flush()


T = TypeVar("T")


class TypedClient(Generic[T]):
    """``get`` for objects: ``serializer(obj) -> str | bytes`` on the way in,
    ``deserializer(str | bytes) -> obj`` on the way out (``None`` passes through)."""

    def __init__(
        self,
        client: Client,
        serializer: Callable[[T], Value],
        deserializer: Callable[[Value], T],
    ) -> None:
        self.client = client
        self._serializer = serializer
        self._deserializer = deserializer

    def get(
        self,
        key: str,
        ttl: Seconds,
        fn: Optional[Callable[[str], Optional[T]]] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> Optional[T]:
        loader: Optional[Loader] = None
        if fn is not None:
            load = fn

            def loader(k: str) -> Optional[Value]:
                obj = load(k)
                return None if obj is None else self._serializer(obj)

        raw = self.client.get(key, ttl, loader, timeout=timeout)
        return None if raw is None else self._deserializer(raw)

    def delete(self, *keys: str) -> int:
        return self.client.delete(*keys)

