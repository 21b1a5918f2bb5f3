"""The asyncio Sentinel transport: an ``AsyncConnection`` whose every new
link goes to the primary the sentinels name, and a watcher task that follows
``+switch-master`` (see ``_core``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Optional

from .._topology import Topology
from ..errors import TimeoutError, ValkeyError
from ..resp3 import Request
from ..resp3._aio import AsyncConnection, _Link, receive
from ._core import ROLE, WATCH_IDLE, Chat, SentinelState, where

__all__ = ["AsyncSentinelConnection"]

_READ_SIZE = 65536
_Pipe = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncSentinelConnection(SentinelState, AsyncConnection):
    """An :class:`~valkeyaside.resp3._aio.AsyncConnection` to the primary that
    the sentinels name, followed across failovers.

    ``primary``: the address of the last link made; ``watching``: the
    sentinel whose ``+switch-master`` messages a task follows (it starts with
    the first connection and stops on :meth:`close`).
    """

    def __init__(self, topology: Topology) -> None:
        super().__init__(self._setup(topology))
        self._watcher: Optional[asyncio.Task[None]] = None

    async def close(self) -> None:
        """Stop the watcher, then close the connection as ``AsyncConnection`` does."""
        self._closed = True
        watcher = self._watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await super().close()

    # -- connecting ------------------------------------------------------------

    async def _open_link(self, deadline: Optional[float]) -> _Link:
        if self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_loop())
        search = self._search(None if deadline is None else deadline - time.monotonic())
        while True:
            step = search.next()
            await asyncio.sleep(step.pause)
            ends = None if step.timeout is None else time.monotonic() + step.timeout
            try:
                if step.primary is not None:
                    self._aim(step.primary)
                    link = await super()._open_link(ends)
                    self.primary = search.found()
                    return link
                chat = Chat(self._sentinel_options, step.sentinel, search.question)
                pipe = await self._ask(chat, step.timeout)
                pipe[1].close()
                search.heard(chat.answer())
            except (OSError, ValkeyError) as exc:
                search.failed(exc)

    async def _handshake(self, link: _Link, deadline: Optional[float]) -> None:
        await super()._handshake(link, deadline)
        request = Request(ROLE)
        link.submit(request)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._check_primary((await receive(request, timeout))[0])

    async def _ask(self, chat: Chat, timeout: Optional[float], keep: bool = False) -> _Pipe:
        """Connect to the chat's sentinel and write its payload; then read the
        replies, unless ``keep`` (the watcher reads on)."""
        try:
            return await asyncio.wait_for(self._chat(chat, keep), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"sentinel {where(chat.sentinel)} did not answer within "
                               f"{timeout} s") from None

    async def _chat(self, chat: Chat, keep: bool) -> _Pipe:
        options = chat.options
        context = options.tls_context()
        reader, writer = await asyncio.open_connection(
            options.host, options.port, ssl=context,
            server_hostname=options.host if context is not None else None)
        try:
            writer.write(chat.payload)
            while not keep and not chat.done:
                chat.feed(await reader.read(_READ_SIZE))
        except BaseException:
            writer.close()
            raise
        return reader, writer

    # -- the watcher task --------------------------------------------------------

    async def _watch_loop(self) -> None:
        watch = self._watch
        while not self._closed:
            await asyncio.sleep(watch.pause())
            try:
                reader, writer = await self._ask(watch.begin(),
                                                 self._sentinel_options.connect_timeout, True)
            except (OSError, ValkeyError) as exc:
                watch.lost(exc, self._closed)
                continue
            try:
                await self._listen(reader, writer)
            except (OSError, ValkeyError) as exc:
                watch.lost(exc, self._closed)
            finally:
                writer.close()

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        watch = self._watch
        while not self._closed:
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), WATCH_IDLE)
            except asyncio.TimeoutError:
                writer.write(watch.silent())
                continue
            for address in watch.feed(data):
                self._follow(address)
