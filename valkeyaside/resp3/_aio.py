"""One multiplexed RESP3 connection for asyncio, shared by every task of a loop.

The same :class:`Request` objects and :class:`Exchange` as the threaded
connection, over an :class:`asyncio.Protocol` (it measures faster than
streams: no reader task, no extra copies). ``data_received`` feeds the
exchange, so push frames are applied before any later reply is looked at and
a request's ``on_reply`` runs the moment its reply is read. Requests made in
one loop iteration go out in one write (auto-pipelining). A write that the
server does not drain within ``socket_timeout`` kills the link. When the
link is lost, every waiting request fails with :class:`ConnectionError`, the
disconnect handlers run once, and the next call connects again (with bounded
backoff).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Optional

from ..errors import ConnectionError, ResponseError, TimeoutError
from ._base import ConnectionBase, then_die
from ._connection import Batch, Request
from ._encoder import Arg, encode_command, encode_commands
from ._exchange import Exchange
from ._handshake import check_handshake, handshake_commands, handshake_error
from ._health import Action
from ._options import ConnectionOptions
from ._stream import _keepalive as keepalive

__all__ = ["AsyncConnection", "receive"]

_PING = encode_command("PING")
#: How long after the policy's next check falls due the loop runs it.
_CHECK_GRACE = 0.05


class _Tasks:
    """The tasks awaiting one request, woken together: ``Request`` wakes its
    first sleeper only (threads wake one another in turn), and this is it."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        futures, self.futures = self.futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)


def _expire(future: asyncio.Future[None], timeout: float, request: Request) -> None:
    if future.done():
        return
    link = request.link
    if isinstance(link, _Link) and link.stalled_write is not None:
        link.stalled()  # its bytes never left: the link's fault, not a slow reply
    else:
        future.set_exception(TimeoutError(f"no reply within {timeout} s"))


async def receive(request: Request, timeout: Optional[float]) -> list[Any]:
    """The replies of ``request`` once all have arrived; raises its error, or
    TimeoutError. Cancelling leaves the request queued: its replies are read
    and dropped, so later requests still get their own."""
    if not request.done:
        link = request.link
        if type(link) is _Link:
            # Before the future and the timer are made: they are made while
            # the server answers, not before the request is on its way (a
            # write never completes a request at once: the transport reports
            # a failure on a later turn of the loop).
            link.flush_if_last()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        sleepers = request._sleepers
        if sleepers:
            tasks: _Tasks = sleepers[0]  # type: ignore[assignment]
        else:
            tasks = _Tasks()
            sleepers.append(tasks)  # type: ignore[arg-type]
        tasks.futures.append(future)
        timer = None if timeout is None else loop.call_later(timeout, _expire, future, timeout,
                                                             request)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
    if request.error is not None:
        raise request.error
    return request.replies


class _Link(asyncio.Protocol):
    """One live socket: its exchange, its outbox and its write watchdog."""

    def __init__(self, owner: AsyncConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self.exchange = Exchange(owner._dispatch_push, Request.complete)
        self.transport: Optional[asyncio.Transport] = None
        self.error: Optional[ConnectionError] = None
        self.retiring = False  # a request that ends the link (RESET) is queued
        self._outbox: list[bytes] = []
        self._flush: Optional[asyncio.Handle] = None  # the end-of-iteration write
        #: Set while the server does not drain our writes (``pause_writing``).
        self.stalled_write: Optional[asyncio.TimerHandle] = None
        # What the health policy is fed (see ``_health``).
        self._health = owner.health_policy
        self._last_read = time.monotonic()
        self._busy_since = 0.0
        self._ping_sent: Optional[float] = None
        self._health_check: Optional[asyncio.TimerHandle] = None

    @property
    def owner(self) -> AsyncConnection:
        """The connection this link belongs to."""
        return self._owner

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def usable(self) -> bool:
        return self.error is None and not self.retiring and self.transport is not None

    # -- writing ------------------------------------------------------------------

    def submit(self, request: Request, last: bool = False) -> bool:
        """Queue the request for this iteration's write; False when the link is dead."""
        if self.error is not None or self.retiring:
            return False
        if last:
            self.retiring = True
            request.on_reply = then_die(request.on_reply, self.die)
        request.link = self
        if isinstance(request, Batch):
            _link_parts(request, self)  # what its parts' waiters look at (``receive``)
        exchange = self.exchange
        if not exchange.waiting:
            self._busy_since = time.monotonic()
        exchange.expect(request)
        outbox = self._outbox
        outbox.append(request.payload)
        if len(outbox) == 1:
            self._flush = self._loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        """Write what is queued (also run at the end of the loop iteration)."""
        if self._flush is not None:
            self._flush.cancel()  # when called before its turn
            self._flush = None
        outbox, self._outbox = self._outbox, []
        if self.error is None and outbox and self.transport is not None:
            self.transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def flush_if_last(self) -> None:
        """Write now, as a task starts to wait, if nothing else is left to run in
        this loop iteration: no other request can be made in it, so this is the
        write that ends it, sent a turn of the loop sooner (while the loop goes
        round, the server already answers). The loop's queue of ready callbacks
        tells (CPython's asyncio; elsewhere the write waits for its turn)."""
        if self._flush is None:
            return
        ready = getattr(self._loop, "_ready", None)
        if ready is not None and len(ready) == 1 and ready[0] is self._flush:
            self.flush()

    def pause_writing(self) -> None:
        # The server stopped reading: it has socket_timeout to start again.
        limit = self._owner.options.socket_timeout
        if limit is not None and self.stalled_write is None:
            self.stalled_write = self._loop.call_later(limit, self.stalled)

    def resume_writing(self) -> None:
        if self.stalled_write is not None:
            self.stalled_write.cancel()
            self.stalled_write = None

    def stalled(self) -> None:
        self.die(socket.timeout(f"a write stalled for over {self._owner.options.socket_timeout}"
                                " s (the server stopped reading)"))

    # -- health -------------------------------------------------------------------

    def _schedule_check(self, delay: Optional[float]) -> None:
        tick = self._health.tick
        if tick is not None:
            delay = tick if delay is None else min(delay, tick)
        if delay is not None:
            # A little after it falls due: a call whose own timeout ends about
            # then times out first, and what it queues (a release behind its
            # lock) is written before the link is closed, as on the threaded one.
            self._health_check = self._loop.call_later(max(delay, 0.0) + _CHECK_GRACE,
                                                       self._check_health)

    def _check_health(self) -> None:
        """Ask the policy (see ``_health``) and act on its verdict."""
        self._health_check = None
        if self.error is not None:
            return
        now = time.monotonic()
        busy_since = self._busy_since if self.exchange.waiting else None
        verdict = self._health.check(now, self._last_read, busy_since, self._ping_sent)
        if verdict.action is Action.DEAD and self.stalled_write is None:
            self.die(socket.timeout(verdict.reason))
            return
        if verdict.action is Action.PING and self.submit(Request(_PING, on_reply=self._pong)):
            self._ping_sent = now
        self._schedule_check(None if verdict.next_check is None else verdict.next_check - now)

    def _pong(self, _request: Request) -> None:
        self._ping_sent = None

    # -- reading ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The health timer starts with the socket: a link whose connect fails
        # never dies (no handlers run for it), so a timer started earlier would
        # outlive it and later report it lost, as if it were the live link.
        self._last_read = time.monotonic()
        if self._health.active:
            self._schedule_check(self._health.tick)

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        try:
            self.exchange.receive(data)
        except Exception as exc:  # a protocol error: the stream cannot be trusted
            self.die(exc)

    def eof_received(self) -> bool:
        self.die(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.die(exc or ConnectionResetError("the server closed the connection"))

    def die(self, cause: BaseException) -> None:
        """Fail every waiting request, close the socket, tell the handlers (once)."""
        if self.error is not None:
            return
        error = self.error = self._owner._lost(cause)
        pending = self.exchange.drain()
        self._outbox = []  # a flush still to come writes nothing
        self.resume_writing()
        if self._health_check is not None:
            self._health_check.cancel()
        if self.transport is not None:
            self.transport.abort()
        # Handlers first (they flush the cache), then wake the callers.
        self._owner._link_died(cause)
        for request in pending:
            request.fail(error)  # type: ignore[attr-defined]


def _link_parts(batch: Batch, link: _Link) -> None:
    """Tell a batch's parts (and theirs) the link they are written on."""
    for part in batch.parts:
        part.link = link
        if isinstance(part, Batch):
            _link_parts(part, link)


class AsyncConnection(ConnectionBase):
    """A RESP3 connection that the tasks of one event loop share; it reconnects on demand."""

    def __init__(self, options: ConnectionOptions) -> None:
        super().__init__(options)
        self._link: Optional[_Link] = None
        self._connecting: Optional[asyncio.Lock] = None

    # -- calls ---------------------------------------------------------------

    async def submit(self, request: Request, timeout: Optional[float] = None,
                     last: bool = False) -> None:
        """Queue a request for this iteration's write, connecting first if needed
        (``timeout`` bounds that, below ``connect_timeout``); await ``receive``."""
        link = self._link
        if link is None or not link.usable:
            link = await self._connect(timeout)
        if not link.submit(request, last):  # lost just now, before anything was written
            link = await self._connect(timeout)
            if not link.submit(request, last):
                raise link.error or ConnectionError("connection lost")

    def submit_nowait(self, request: Request) -> bool:
        """Write ``request`` on the live link now, never connecting; False when there
        is none. Now, not at the end of the loop iteration: a release queued behind
        a lock command must reach the socket before the link can be lost, as the
        threaded connection's does."""
        link = self._link
        if link is None or not link.usable or not link.submit(request):
            return False
        link.flush()
        return True

    async def call(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """Send one command and return its reply; an error reply is raised."""
        return await self._call(args, timeout, last=False)

    async def call_last(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """Send a command that ends the connection's state (RESET): nothing is sent
        after it on this socket, which is closed when the reply arrives."""
        return await self._call(args, timeout, last=True)

    async def _call(self, args: tuple[Arg, ...], timeout: Optional[float], last: bool) -> Any:
        request = Request(encode_command(*args))
        await self.submit(request, timeout, last)
        replies = await receive(request, self.options.socket_timeout if timeout is None
                                else timeout)
        reply = replies[0]
        if type(reply) is ResponseError:
            raise reply
        return reply

    async def close(self) -> None:
        """Close the socket; waiting calls fail; later calls raise ConnectionError."""
        self._closed = True
        link = self._link
        if link is not None:
            link.die(ConnectionError("the connection was closed"))

    # -- connecting ------------------------------------------------------------

    async def _connect(self, timeout: Optional[float]) -> _Link:
        limit, deadline = self._connect_deadline(timeout)
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        try:
            await asyncio.wait_for(self._connecting.acquire(), limit)
        except asyncio.TimeoutError:
            raise TimeoutError(f"connecting to {self.options.address} timed out") from None
        try:
            if self._closed:
                raise ConnectionError("the connection was closed")
            link = self._link
            if link is not None and link.usable:
                return link  # another task connected meanwhile
            resume = self._backoff_until(deadline)
            if resume:
                await asyncio.sleep(max(0.0, resume - time.monotonic()))
            try:
                link = await self._open_link(deadline)
            except BaseException:
                self._attempted(False)
                raise
            self._attempted(True)
            self._link = link
            return link
        finally:
            self._connecting.release()

    async def _open_link(self, deadline: Optional[float]) -> _Link:
        options = self.options
        loop = asyncio.get_running_loop()
        link = _Link(self, loop)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"connecting to {options.address} timed out")
        try:
            if options.unix_path is not None:
                opening = loop.create_unix_connection(lambda: link, options.unix_path)
            else:
                context = options.tls_context()
                opening = loop.create_connection(
                    lambda: link, options.host, options.port, ssl=context,
                    server_hostname=options.host if context is not None else None)
            await asyncio.wait_for(opening, remaining)
        except asyncio.TimeoutError:
            raise TimeoutError(f"connecting to {options.address} timed out") from None
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {options.address}: {exc}") from exc
        try:
            sock = link.transport.get_extra_info("socket") if link.transport else None
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    keepalive(sock)
                except OSError as exc:  # the server closed it at once (a node dying)
                    raise ConnectionError(
                        f"connection to {options.address} lost as it was made: {exc}") from exc
            await self._handshake(link, deadline)
        except BaseException as exc:
            link.die(exc)
            raise
        self._generation += 1
        return link

    async def _handshake(self, link: _Link, deadline: Optional[float]) -> None:
        options = self.options
        connect_commands = list(self._connect_commands)
        commands = handshake_commands(options, connect_commands)
        request = Request(encode_commands(commands), len(commands))
        link.submit(request)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            replies = await receive(request, timeout)
        except TimeoutError:
            raise TimeoutError(f"{options.address} did not answer the handshake in time") \
                from None
        except ConnectionError as exc:
            cause = exc.__cause__ or exc
            error = handshake_error(options, cause)
            if error is cause:
                raise
            raise error from cause
        self._handshook(check_handshake(options, connect_commands, replies))
