"""Both front ends behind the threaded client's API, so one test serves both.

``make(front, url, **options)`` returns a ``valkeyaside.Client`` for
``"sync"``, and for ``"async"`` an :class:`AsyncFront`: an ``AsyncClient``
living on an event loop of its own thread, whose blocking methods submit
coroutines to that loop. Many test threads calling it at once become many
tasks on one loop sharing one connection, as in an asyncio service.

A test's loader is a plain function that may block (on a gate, say): the
front hands it to ``get`` as an ``async def`` that runs it in a worker
thread, so the loop keeps serving everyone else meanwhile, and carries an
``override_cache_ttl`` made inside it back into the task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from typing import Any, Callable, Coroutine, Optional, TypeVar, Union

import valkeyaside
from valkeyaside._aside import _NO_OVERRIDE, _cache_ttl_override

FRONTS = ("sync", "async")

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.workers = concurrent.futures.ThreadPoolExecutor(64, "loader")
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: Optional[float] = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self.workers.shutdown(wait=False)


class AsyncFront:
    """The API of ``valkeyaside.Client``, served by an ``AsyncClient``."""

    def __init__(self, url: Optional[str] = None, **options: Any) -> None:
        self.client = valkeyaside.AsyncClient(url, **options)
        self._loop = LoopThread()

    def __getattr__(self, name: str) -> Any:  # connection, options, client_ttl, ...
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return repr(self.client)

    def __enter__(self) -> AsyncFront:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, key: Any, ttl: Any, fn: Any = None, *, timeout: Any = None) -> Any:
        return self._loop.run(self.client.get(key, ttl, self._loader(fn), timeout=timeout))

    def get_many(self, keys: Any, ttl: Any, fn: Any = None, *, timeout: Any = None) -> Any:
        return self._loop.run(self.client.get_many(keys, ttl, self._loader(fn),
                                                   timeout=timeout))

    def delete(self, *keys: Any) -> int:
        return self._loop.run(self.client.delete(*keys))

    def execute(self, *args: Any) -> Any:
        return self._loop.run(self.client.execute(*args))

    def stats(self) -> dict[str, Any]:
        return self.client.stats()

    def close(self) -> None:
        self._loop.run(self.client.aclose())

    def shutdown(self) -> None:
        """Close the client and stop its loop (a test's clean-up)."""
        if self._loop.loop.is_closed():
            return
        try:
            self.close()
        finally:
            self._loop.close()

    def _loader(self, fn: Any) -> Any:
        if not callable(fn):
            return fn  # None, or something get must refuse
        loop = self._loop

        async def loader(key: str) -> Any:
            context = contextvars.copy_context()  # holds the task's "inside a loader" mark
            value = await loop.loop.run_in_executor(loop.workers, context.run, fn, key)
            override = context[_cache_ttl_override]
            if override is not _NO_OVERRIDE:
                _cache_ttl_override.set(override)
            return value

        return loader


Front = Union[valkeyaside.Client, AsyncFront]


def shutdown(client: Any) -> None:
    """Close a client made by :func:`make`, and its loop if it has one."""
    getattr(client, "shutdown", client.close)()


def make(front: str, url: Optional[str] = None, **options: Any) -> Any:
    """A client of the ``front`` kind (``"sync"`` or ``"async"``)."""
    if front == "sync":
        return valkeyaside.Client(url, **options)
    if front == "async":
        return AsyncFront(url, **options)
    raise ValueError(f"no front end {front!r}")


MakeFront = Callable[..., Any]
