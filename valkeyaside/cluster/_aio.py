"""A Valkey Cluster as one asyncio transport: an ``AsyncConnection`` per primary.

The asyncio twin of ``_connection``: the router (``_router``) decides, this
module sends. A redirected request is sent on at once when its node's link
is up, else by a task that connects first (or after the retry's backoff);
a task refreshes the slot map every few seconds, and at once after a
``MOVED`` or a lost link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Optional

from .._topology import Address, Topology
from ..errors import ResponseError, ValkeyError
from ..resp3 import Arg, ConnectionOptions, Request, encode_command
from ..resp3._aio import AsyncConnection, receive
from ._router import REFRESH_PAUSE, RETIRE_GRACE, Router, command_key

__all__ = ["AsyncClusterConnection"]

log = logging.getLogger("valkeyaside")


class AsyncClusterConnection(Router[AsyncConnection]):
    """The asyncio cluster transport: what ``AsyncClient`` talks to on a cluster."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self._discovering: Optional[asyncio.Lock] = None
        self._wake: Optional[asyncio.Event] = None
        self._refresher: Optional[asyncio.Task[None]] = None
        self._tasks: set[asyncio.Task[Any]] = set()  # resends under way (kept from the GC)

    def _new_node(self, options: ConnectionOptions) -> AsyncConnection:
        return AsyncConnection(options)

    # -- sending -------------------------------------------------------------------

    async def submit(self, request: Request, timeout: Optional[float] = None) -> None:
        """Queue ``request`` for its node (a batch: one write per node), connecting
        (and the first time, learning the slot map) if need be."""
        if self._map is None:
            await self._discover(timeout)
        for address, part in self.plan(request):
            await self.node(address).submit(part, timeout)

    async def call(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """One command, to the node of its key (keyless: the first primary); an
        error reply is raised."""
        request = Request(encode_command(*args), key=command_key(args))
        await self.submit(request, timeout)
        replies = await receive(request, self.options.socket_timeout if timeout is None
                                else timeout)
        if type(replies[0]) is ResponseError:
            raise replies[0]
        return replies[0]

    async def call_each_primary(self, *args: Arg,
                                timeout: Optional[float] = None) -> dict[Address, Any]:
        """One command on every primary, all sent before any reply is awaited:
        ``{(host, port): reply}``, error replies as values. A ``PING`` this way
        is a fence: every invalidation sent before it has been applied."""
        if self._map is None:
            await self._discover(timeout)
        requests = self.each_primary(args)
        for address, request in requests.items():
            await self.node(address).submit(request, timeout)
        wait = self.options.socket_timeout if timeout is None else timeout
        return {address: (await receive(request, wait))[0]
                for address, request in requests.items()}

    async def call_last(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        raise ValueError("RESET is not supported on a cluster: close the client instead")

    def resend(self, request: Request, address: Address, delay: float) -> None:
        if delay <= 0:
            node = self._nodes.get(address)
            if node is not None and node.submit_nowait(request):
                return
        self._spawn(self._send_later(request, address, delay))

    async def _send_later(self, request: Request, address: Address, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await self.node(address).submit(request, self.options.connect_timeout)
        except BaseException as exc:
            request.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the slot map --------------------------------------------------------------

    async def _discover(self, timeout: Optional[float]) -> None:
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        async with self._discovering:
            if self._map is None:
                await self._refresh(timeout)
            if self._refresher is None and not self._closed:
                self._wake = asyncio.Event()
                self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh(self, timeout: Optional[float] = None) -> None:
        steps = self.refreshing()
        with contextlib.suppress(StopIteration):
            address, query = next(steps)
            while True:
                address, query = steps.send(await self._ask(address, query, timeout))

    async def _ask(self, address: Address, query: tuple[str, ...],
                   timeout: Optional[float]) -> Any:
        try:
            return await self.node(address).call(*query, timeout=timeout)
        except ValkeyError as exc:
            return exc

    def want_refresh(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _refresh_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.refresh_interval())
            wake.clear()
            try:
                await self._refresh()
            except ValkeyError as exc:
                log.debug("cluster slot map refresh failed: %s", exc)
            await asyncio.sleep(REFRESH_PAUSE)  # paces a storm of requests for refresh

    def _retire(self, address: Address) -> None:
        node = self._nodes.pop(address, None)
        if node is not None:  # its calls in flight are answered first (MOVED, mostly)
            self._retiring.append(node)
            self._spawn(self._close_later(node))

    async def _close_later(self, node: AsyncConnection) -> None:
        await asyncio.sleep(RETIRE_GRACE)
        with contextlib.suppress(ValueError):
            self._retiring.remove(node)
        await node.close()

    async def close(self) -> None:
        """Close every node's connection and stop the refresher."""
        self._closed = True
        refresher = self._refresher
        if refresher is not None and refresher is not asyncio.current_task():
            refresher.cancel()
        for node in [*self._nodes.values(), *self._retiring]:
            await node.close()
        for task in list(self._tasks):
            task.cancel()
