"""The threaded front end: ``Client.get(key, ttl, fn)`` and friends.

The algorithm lives in ``_aside``; this module drives its steps by blocking
(``run``), keeps the marker alive on a thread, and answers hits inline.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generic, Iterable, Mapping, Optional, TypeVar

from ._aside import TOMBSTONE, Seconds, Value, command_name, override_cache_ttl
from ._cached import CachedFunction, KeySpec, P, R, cached
from ._cached_many import CachedManyFunction, K, ManyKeySpec, cached_many
from ._effects import Load, Park, Receive, Send, Steps
from ._flights import NO_ANSWER
from ._front import Front
from .cache import Waiter
from .cluster import ClusterConnection
from .errors import ValkeyError
from .resp3 import Arg, Connection
from .resp3._wakers import current_waker
from .sentinel import SentinelConnection

__all__ = ["TOMBSTONE", "Client", "TypedClient", "override_cache_ttl", "run"]

Loader = Callable[[str], Optional[Value]]
ManyLoader = Callable[[list[str]], Mapping[str, Optional[Value]]]
T = TypeVar("T")

_monotonic = time.monotonic
_INF = float("inf")


def run(steps: Steps[T], connection: Connection) -> T:
    """Drive the algorithm's steps to their end, blocking this thread on each effect."""
    value: Any = None
    error: Optional[Exception] = None
    while True:
        try:
            effect = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value = error = None
        try:
            if type(effect) is Receive:
                timeout = effect.timeout
                value = effect.request.wait(
                    connection.options.socket_timeout if timeout is None else timeout)
            elif type(effect) is Send:
                connection.submit(effect.request, effect.timeout)
            elif type(effect) is Park:
                value = _park(effect.waiter, effect.until)
            elif type(effect) is Load:
                value = effect.fn(effect.arg)
            else:
                raise TypeError(f"not an effect: {effect!r}")
        except Exception as exc:
            error = exc
        except BaseException:  # interrupted: the steps clean up without waiting
            steps.close()
            raise


def _park(waiter: Waiter, until: float) -> bool:
    waker = waiter.waker
    while not waiter.woken:
        if _monotonic() >= until:
            return False
        waker.sleep(until)  # type: ignore[attr-defined]
    return True


def _new_waiter() -> Waiter:
    return Waiter(current_waker())


class _KeeperThread:
    """Runs the marker's keep rounds on a daemon thread."""

    def __init__(self, keep: Callable[[], Steps[Optional[float]]], connection: Connection) -> None:
        self._keep = keep
        self._connection = connection
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="valkeyaside-marker",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        due: Optional[float] = _monotonic()
        while True:
            self._wake.wait(None if due is None else max(0.0, due - _monotonic()))
            self._wake.clear()
            if self._stopped:
                return
            try:
                due = run(self._keep(), self._connection)
            except ValkeyError:  # a round's own errors are retried within it; this is spare
                due = _monotonic() + 1.0

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)


class Client(Front):
    """A Cache-Aside client for Valkey; thread-safe, one per process is plenty.

    Takes the arguments of :class:`valkeyaside._front.Front`.
    """

    connection: Connection
    _transport = Connection
    _cluster_transport = ClusterConnection
    _sentinel_transport = SentinelConnection
    _new_waiter = staticmethod(_new_waiter)
    _keeper = _KeeperThread

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
            and timeout is None
            and entry.plain
            # Aside.prepare's checks, for the common argument types only (cheapest
            # first; an int is finite).
            and key.__class__ is str
            and entry.expires > _monotonic()
            and ((ttl.__class__ is int and ttl > 0) or (ttl.__class__ is float and 0 < ttl < _INF))
        ):
            entry.used = True
            self._hits += 1
            return entry.value  # type: ignore[no-any-return]
        flight, steps, ttl_s, deadline = self._get_steps(key, ttl, fn, timeout, None)
        if flight is not None:  # another thread's get of the key: wait for it to land
            flight.wait()
            answer = self._answer(flight)
            if answer is not NO_ANSWER:
                return answer  # type: ignore[no-any-return]
            steps = self._aside.get(key, ttl_s, fn, deadline)
        assert steps is not None
        return run(steps, self.connection)  # type: ignore[no-any-return]

    def get_many(
        self,
        keys: Iterable[str],
        ttl: Seconds,
        fn: Optional[ManyLoader] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> dict[str, Optional[Value]]:
        """``get`` for many keys: ``{key: value or None}`` in the order given.

        Hits cost no round trip; the other keys' reads, locks and fills each go
        out as one write. ``fn(missing)`` gets exactly the keys this call
        locked, once, and returns a mapping; a key it leaves out is stored as
        None. Keys that others hold are awaited together, as in ``get``.
        """
        found = self._many(keys, ttl, fn, timeout)
        return found if isinstance(found, dict) else run(found, self.connection)

    def cached(
        self,
        ttl: Seconds,
        key: KeySpec = None,
        *,
        serializer: Optional[Callable[[Any], Value]] = None,
        deserializer: Optional[Callable[[Value], Any]] = None,
    ) -> Callable[[Callable[P, R]], CachedFunction[P, R]]:
        """Decorate a function so its results are kept under ``key`` for ``ttl``:

        ``key`` is a template over the arguments (``"user:{user_id}"``), a
        callable of them, or None (the qualified name and the arguments'
        reprs). The function is the loader of its key, so a miss is
        stampede-proof. ``serializer``/``deserializer`` convert objects, as
        in :class:`TypedClient`. The result has ``.key(...)``,
        ``.invalidate(...)`` (DEL) and ``.uncached(...)``, and the function's
        signature (for type checkers too, on Python 3.10+).
        """

        def decorate(func: Callable[P, R]) -> CachedFunction[P, R]:
            return cached(self, func, ttl, key, serializer, deserializer)

        return decorate

    def cached_many(
        self,
        ttl: Seconds,
        key: ManyKeySpec = None,
        *,
        serializer: Optional[Callable[[Any], Value]] = None,
        deserializer: Optional[Callable[[Value], Any]] = None,
    ) -> Callable[[Callable[[list[K]], Mapping[K, Optional[R]]]], CachedManyFunction[K, R]]:
        """Decorate a function of a list of ids that returns ``{id: value}``, so
        each id's value is kept under its own key for ``ttl``, through
        :meth:`get_many`: the result takes any iterable of ids and returns
        ``{id: value or None}`` in the order given, calling the function once,
        with the ids that are missing (an id it leaves out is stored as None;
        as with ``get_many``'s loader, it is called again only for ids whose
        holder died while this call waited).

        ``key`` is a template with one field that the id fills
        (``"product:{}"``), a callable of one id, or None (the qualified name
        and the id's repr). ``serializer``/``deserializer`` as in
        :meth:`cached`. The result has ``.key(id)``, ``.invalidate(ids)``
        (DEL) and ``.uncached(ids)``.
        """

        def decorate(
            func: Callable[[list[K]], Mapping[K, Optional[R]]],
        ) -> CachedManyFunction[K, R]:
            return cached_many(self, func, ttl, key, serializer, deserializer)

        return decorate

    def delete(self, *keys: str) -> int:
        """DEL the keys; they leave the local cache as soon as the reply arrives."""
        return run(self._aside.delete(keys), self.connection)

    def execute(self, *args: Arg) -> Any:
        """Run any command, uncached; the reply as Python values (bulk strings as bytes).

        Commands that would change the shared connection for every other
        caller (SELECT, MULTI, SUBSCRIBE, CLIENT TRACKING, ...) are refused
        with ``ValueError``. RESET resets the connection: the local cache is
        dropped and the next call reconnects.
        """
        if command_name(args) == "RESET":
            # Nothing may follow RESET on that socket; it is closed on the reply,
            # which drops the local cache, and the next call connects afresh.
            return self.connection.call_last(*args)
        return self.connection.call(*args)

    def close(self) -> None:
        """Stop the marker refresher, delete the marker, close the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            run(self._aside.close(), self.connection)
        finally:
            self.connection.close()
            self._aside.cache.flush()


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

