"""The asyncio front end: ``await AsyncClient.get(key, ttl, fn)`` and friends.

The algorithm lives in ``_aside``, as for the threaded ``Client``; this
module drives its steps by awaiting (``run``), keeps the marker alive in a
task, and answers hits inline. Cancelling a task anywhere inside a call
closes its steps, whose clean-up is synchronous: a lock it held is released
(queued behind the lock command), its waiters and single-flight entries are
forgotten, and the connection keeps every reply matched to its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from typing import (
    Any,
    Awaitable,
    Callable,
    Generic,
    Iterable,
    Mapping,
    Optional,
    TypeVar,
    Union,
)

from ._aside import TOMBSTONE, Seconds, Value, command_name, override_cache_ttl
from ._cached import AsyncCachedFunction, KeySpec, P, R, cached_async
from ._cached_many import AsyncCachedManyFunction, K, ManyKeySpec, cached_many_async
from ._effects import Load, Park, Receive, Send, Steps
from ._flights import NO_ANSWER
from ._follow import Follow, Resumer
from ._front import Front
from .cache import Waiter
from .cluster import AsyncClusterConnection
from .errors import ValkeyError
from .resp3 import Arg
from .resp3._aio import AsyncConnection, receive
from .sentinel import AsyncSentinelConnection

__all__ = ["TOMBSTONE", "AsyncClient", "AsyncTypedClient", "override_cache_ttl", "run"]

AsyncLoader = Callable[[str], Union[Optional[Value], Awaitable[Optional[Value]]]]
AsyncManyLoader = Callable[
    [list[str]],
    Union[Mapping[str, Optional[Value]], Awaitable[Mapping[str, Optional[Value]]]],
]
T = TypeVar("T")

_monotonic = time.monotonic
_INF = float("inf")


async def run(steps: Steps[T], connection: AsyncConnection) -> T:
    """Drive the algorithm's steps to their end, awaiting each effect."""
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
                request = effect.request
                if request.answered:
                    value = request.replies
                else:
                    timeout = effect.timeout
                    value = await receive(
                        request, connection.options.socket_timeout if timeout is None else timeout)
            elif type(effect) is Send:
                await connection.submit(effect.request, effect.timeout)
            elif type(effect) is Park:
                value = await _park(effect.waiter, effect.until)
            elif type(effect) is Load:
                value = effect.fn(effect.arg)
                if inspect.isawaitable(value):
                    value = await value
            else:
                raise TypeError(f"not an effect: {effect!r}")
        except Exception as exc:
            error = exc
        except BaseException:  # cancelled: the steps clean up without awaiting
            steps.close()
            raise


class _TaskWaker:
    """Wakes a parked task: the future it awaits, if any."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Optional[asyncio.Future[None]] = None

    def wake(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)


def _new_waiter() -> Waiter:
    return Waiter(_TaskWaker())


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _park(waiter: Waiter, until: float) -> bool:
    if waiter.woken:
        return True
    delay = until - _monotonic()
    if delay <= 0:
        return False
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    waker: _TaskWaker = waiter.waker  # type: ignore[assignment]
    waker.future = future
    timer = loop.call_later(delay, _settle, future)
    try:
        await future
    finally:
        timer.cancel()
        waker.future = None
    return waiter.woken


#: How long ``aclose`` waits for the keeper's task to end.
_KEEPER_STOP_WAIT = 1.0


class _KeeperTask:
    """Runs the marker's keep rounds in a task of the client's loop."""

    def __init__(self, keep: Callable[[], Steps[Optional[float]]],
                 connection: AsyncConnection) -> None:
        self._keep = keep
        self._connection = connection
        self._poked = asyncio.Event()
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        due: Optional[float] = _monotonic()
        # Checked as well as cancelled: before 3.12 ``wait_for`` can swallow a
        # cancellation that comes as its wait ends.
        while not self._stopped:
            if not self._poked.is_set():
                delay = None if due is None else max(0.0, due - _monotonic())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), delay)
                if self._stopped:
                    return
            self._poked.clear()
            try:
                due = await run(self._keep(), self._connection)
            except ValkeyError:  # a round's own errors are retried within it; this is spare
                due = _monotonic() + 1.0

    def poke(self) -> None:
        self._poked.set()

    def stop(self) -> None:
        self._stopped = True
        self._poked.set()
        self._task.cancel()

    async def stopped(self) -> None:
        """Wait (a little, at most) until the task has ended after ``stop``: a
        round it was in cleans up while the loop still runs."""
        await asyncio.wait([self._task], timeout=_KEEPER_STOP_WAIT)


class AsyncClient(Front):
    """A Cache-Aside client for asyncio; one per event loop, shared by its tasks.

    Takes the arguments of :class:`valkeyaside.Client` (see ``_front.Front``).
    It belongs to the loop it is first used in: a call from another loop
    raises ``RuntimeError``. Close it with ``await client.aclose()`` or
    ``async with``.
    """

    connection: AsyncConnection
    _transport = AsyncConnection
    _cluster_transport = AsyncClusterConnection
    _sentinel_transport = AsyncSentinelConnection
    _new_waiter = staticmethod(_new_waiter)
    _keeper = _KeeperTask
    _loop: Optional[asyncio.AbstractEventLoop] = None
    _resumer: Resumer  # with the loop

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._resumer = Resumer(loop)
        elif loop is not self._loop:
            raise RuntimeError(f"{self!r} belongs to another event loop; make one client "
                               "per loop")

    async def get(
        self,
        key: str,
        ttl: Seconds,
        fn: Optional[AsyncLoader] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> Optional[Value]:
        """The value of ``key``, from the local cache, the server, or ``fn(key)``.

        ``fn`` may be a plain function or an ``async def``; it runs in at most
        one caller across all clients while the key is missing, and the others
        wait (up to ``min(timeout, ttl)``) for its result. Returns ``None``
        when the key is absent and there is no ``fn``, or when ``fn`` returned
        ``None`` (remembered for ``negative_ttl``, else ``ttl``).
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
        self._check_loop()
        follow = Follow(self._resumer)
        flight, steps, ttl_s, deadline = self._get_steps(key, ttl, fn, timeout, follow)
        if flight is not None:  # another task's get of the key: wait for it to land
            if not flight.landed:
                await follow
            answer = self._answer(flight)
            if answer is not NO_ANSWER:
                return answer  # type: ignore[no-any-return]
            steps = self._aside.get(key, ttl_s, fn, deadline)
        assert steps is not None
        return await run(steps, self.connection)

    async def get_many(
        self,
        keys: Iterable[str],
        ttl: Seconds,
        fn: Optional[AsyncManyLoader] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> dict[str, Optional[Value]]:
        """``get`` for many keys, as :meth:`valkeyaside.Client.get_many`; ``fn`` may
        be an ``async def``."""
        found = self._many(keys, ttl, fn, timeout)
        if isinstance(found, dict):
            return found
        self._check_loop()
        return await run(found, self.connection)

    def cached(
        self,
        ttl: Seconds,
        key: KeySpec = None,
        *,
        serializer: Optional[Callable[[Any], Value]] = None,
        deserializer: Optional[Callable[[Value], Any]] = None,
    ) -> Callable[[Callable[P, Awaitable[R]]], AsyncCachedFunction[P, R]]:
        """Decorate an ``async def`` (or plain) function, as
        :meth:`valkeyaside.Client.cached`; calling it and ``.invalidate`` are awaited."""

        def decorate(func: Callable[P, Awaitable[R]]) -> AsyncCachedFunction[P, R]:
            return cached_async(self, func, ttl, key, serializer, deserializer)

        return decorate

    def cached_many(
        self,
        ttl: Seconds,
        key: ManyKeySpec = None,
        *,
        serializer: Optional[Callable[[Any], Value]] = None,
        deserializer: Optional[Callable[[Value], Any]] = None,
    ) -> Callable[[Callable[[list[K]], Awaitable[Mapping[K, Optional[R]]]]],
                  AsyncCachedManyFunction[K, R]]:
        """Decorate an ``async def`` (or plain) function of a list of ids, as
        :meth:`valkeyaside.Client.cached_many`; calling it and ``.invalidate``
        are awaited."""

        def decorate(
            func: Callable[[list[K]], Awaitable[Mapping[K, Optional[R]]]],
        ) -> AsyncCachedManyFunction[K, R]:
            return cached_many_async(self, func, ttl, key, serializer, deserializer)

        return decorate

    async def delete(self, *keys: str) -> int:
        """DEL the keys; they leave the local cache as soon as the reply arrives."""
        self._check_loop()
        return await run(self._aside.delete(keys), self.connection)

    async def execute(self, *args: Arg) -> Any:
        """Run any command, uncached, as :meth:`valkeyaside.Client.execute` does."""
        name = command_name(args)
        self._check_loop()
        if name == "RESET":
            return await self.connection.call_last(*args)
        return await self.connection.call(*args)

    async def aclose(self) -> None:
        """Stop the marker's keeper, delete the marker, close the connection."""
        if self._closed:
            return
        self._closed = True
        marker = self._aside.locks.marker
        try:
            await run(self._aside.close(), self.connection)
        finally:
            await self.connection.close()
            self._aside.cache.flush()
            keeper = marker.keeper
            if isinstance(keeper, _KeeperTask):
                keeper.stop()  # stopped by close already, unless that failed first
                await keeper.stopped()


class AsyncTypedClient(Generic[T]):
    """``get`` for objects, awaited: as :class:`valkeyaside.TypedClient`."""

    def __init__(
        self,
        client: AsyncClient,
        serializer: Callable[[T], Value],
        deserializer: Callable[[Value], T],
    ) -> None:
        self.client = client
        self._serializer = serializer
        self._deserializer = deserializer

    async def get(
        self,
        key: str,
        ttl: Seconds,
        fn: Optional[Callable[[str], Union[Optional[T], Awaitable[Optional[T]]]]] = None,
        *,
        timeout: Optional[Seconds] = None,
    ) -> Optional[T]:
        loader: Optional[AsyncLoader] = None
        if fn is not None:
            load = fn
            serialize = self._serializer

            async def loader(k: str) -> Optional[Value]:
                obj = load(k)
                if inspect.isawaitable(obj):
                    obj = await obj
                return None if obj is None else serialize(obj)

        raw = await self.client.get(key, ttl, loader, timeout=timeout)
        return None if raw is None else self._deserializer(raw)

    async def delete(self, *keys: str) -> int:
        return await self.client.delete(*keys)
