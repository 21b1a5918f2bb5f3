"""One multiplexed RESP3 connection, shared by many threads.

Callers queue requests; whoever finds no write in progress writes everything
queued in one go (auto-pipelining). One reader thread per socket feeds an
:class:`Exchange`, which routes pushes to the handlers and completes the
oldest waiting request with each reply. Waiting callers sleep on pipe wakers
(see ``_wakers``), which let a woken thread run at once. When the socket is
lost, every waiting request fails with :class:`ConnectionError`, the
disconnect handlers run once, and the next call connects again (with bounded
backoff).

A link that hears nothing from its server is judged by a :class:`HealthPolicy`
(``_health``): PINGed when silent, closed when dead. The reader thread is its
timer: its receive is bounded in the kernel (``SO_RCVTIMEO``), so a receive
that finds nothing for a while returns to ask the policy, and while bytes
flow the policy costs one clock read per receive and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol, Sequence

from ..errors import ConnectionError, ResponseError, TimeoutError
from ._base import ConnectionBase, then_die
from ._encoder import Arg, encode_command, encode_commands
from ._exchange import Exchange
from ._handshake import check_handshake, handshake_commands, handshake_error
from ._health import Action
from ._options import ConnectionOptions
from ._parser import NEED_DATA, Parser, Push
from ._stream import Stream, open_stream
from ._wakers import Waker, current_waker

__all__ = ["Batch", "Connection", "Request", "Route"]

_RECV_SIZE = 65536
_PING = encode_command("PING")
_ASKING = encode_command("ASKING")
_monotonic = time.monotonic


class Route(Protocol):
    """How a cluster transport follows ``MOVED``/``ASK`` (and retries ``TRYAGAIN``)."""

    def redirected(self, request: Request) -> bool:
        """True when ``request``'s replies redirect it and it was sent again."""


class Request:
    """Commands written together; their replies complete it together.

    ``on_reply`` (if given) runs on the reader thread the moment the last
    reply arrives, before any later frame is looked at: the place for work
    that must keep the stream's order, such as storing a cached read.
    """

    __slots__ = (
        "_sleepers", "done", "error", "expected", "key", "link", "on_reply", "payload",
        "replies", "route",
    )

    def __init__(
        self,
        payload: bytes,
        expected: int = 1,
        on_reply: Optional[Callable[[Request], None]] = None,
        key: Optional[str] = None,
    ) -> None:
        self.payload = payload
        self.expected = expected
        self.on_reply = on_reply
        #: The key whose hash slot decides which cluster node the request goes to.
        self.key = key
        #: Set by a cluster transport: follows redirections before the request completes.
        self.route: Optional[Route] = None
        self.replies: list[Any] = []
        self.error: Optional[BaseException] = None
        self.link: Any = None  # the link that answered (a _Link of either transport)
        self.done = False
        self._sleepers: list[Waker] = []  # of the threads waiting (one, or a single flight)

    @property
    def answered(self) -> bool:
        """Whether its replies are all in (and it did not fail): no wait needed."""
        return self.done and self.error is None

    def parts_or_self(self) -> list[Request]:
        """The requests a caller waits on: a batch's parts, or this one."""
        return [self]

    def asking_form(self) -> Optional[tuple[bytes, int]]:
        """The payload and reply count to send after an ``ASK`` redirection
        (``ASKING`` first), or None when this request cannot follow one."""
        return (_ASKING + self.payload, 2) if self.expected == 1 else None

    def complete(self) -> None:
        route = self.route
        if route is not None and route.redirected(self):
            return  # sent again, elsewhere or later: it completes from there
        if self.on_reply is not None:
            try:
                self.on_reply(self)
            except BaseException as exc:  # the waiter learns of it; the stream goes on
                self.error = exc
        self._finish()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        # Done first, then wake: a waiter registers first, then looks at done.
        self.done = True
        for sleeper in self._sleepers[:1]:
            sleeper.wake()  # the first; as each waiter leaves, it wakes the next

    def wait(self, timeout: Optional[float]) -> list[Any]:
        """The replies, once all have arrived; raises on a lost connection or timeout."""
        if not self.done:
            waker = current_waker()
            sleepers = self._sleepers
            sleepers.append(waker)
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not self.done:
                    if deadline is not None and time.monotonic() >= deadline:
                        # The request stays queued: its late replies are read and dropped.
                        raise TimeoutError(f"no reply within {timeout} s")
                    waker.sleep(deadline)
            finally:
                # Waiters of one request (a single flight) wake one another in
                # turn, so the thread that completed it wakes only one: each
                # wake lets the woken thread take the GIL from the waker.
                sleepers.remove(waker)
                if self.done:
                    for sleeper in sleepers[:1]:
                        sleeper.wake()
        if self.error is not None:
            raise self.error
        return self.replies


class Batch(Request):
    """Requests written as one: the exchange sees one request, and each part is
    completed (its ``on_reply`` run, its waiters woken) in order as the replies
    arrive together."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Request], payload: Optional[bytes] = None,
                 expected: Optional[int] = None) -> None:
        super().__init__(b"".join(part.payload for part in parts) if payload is None else payload,
                         sum(part.expected for part in parts) if expected is None else expected,
                         _hand_out)
        self.parts = parts

    def parts_or_self(self) -> list[Request]:
        return self.parts

    def sendable_parts(self) -> list[Request]:
        """The parts, each in a form that can be sent by itself (to another node);
        a part that is a batch gives its own."""
        if not any(isinstance(part, Batch) for part in self.parts):
            return self.parts
        return [sendable for part in self.parts for sendable in (
            part.sendable_parts() if isinstance(part, Batch) else [part])]

    def hand_out(self) -> None:
        """Give each part its replies and complete it."""
        replies = self.replies
        start = 0
        for part in self.parts:
            part.link = self.link
            part.replies = replies[start:start + part.expected]
            start += part.expected
            part.complete()

    def fail(self, error: BaseException) -> None:
        for part in self.parts:
            if not part.done:
                part.fail(error)
        super().fail(error)


def _hand_out(batch: Request) -> None:
    assert isinstance(batch, Batch)
    batch.hand_out()


class WriteHold:
    """Links whose writes are held back together (a cluster's node links).

    A reader that wakes several callers holds its own link's writes, so that
    what they send next goes out in one write. On a cluster the next request
    of a woken caller usually goes to another node: while any reader of the
    group is waking callers, every link of the group queues without writing,
    and the last reader to finish writes out every link's queue.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holding = 0
        self.links: set[_Link] = set()

    def hold(self) -> None:
        with self._lock:
            self.holding += 1

    def release(self) -> None:
        with self._lock:
            self.holding -= 1
            last = self.holding == 0
        if last:
            for link in list(self.links):
                link.write_if_idle()


class _Link:
    """One live socket: its writer queue, its exchange and its reader thread."""

    def __init__(self, owner: Connection, stream: Stream, parser: Parser, generation: int) -> None:
        self._owner = owner
        self.stream = stream
        self.generation = generation
        self.exchange = Exchange(owner._dispatch_push, Request.complete, parser)
        self._lock = threading.Lock()
        self._outbox: list[bytes] = []
        self._writing = False
        self.error: Optional[ConnectionError] = None
        self.torn_down = threading.Event()  # set once die() has run its handlers
        self.hold = owner.write_hold
        if self.hold is not None:
            self.hold.links.add(self)
        # Set once a request that ends the link (RESET) is queued: nothing may
        # follow it on this socket; the link dies when its reply arrives.
        self.retiring = False
        # What the health policy is fed (time.monotonic()): the last byte read,
        # when the exchange last went from no request waiting to one, and the
        # health PING still unanswered.
        self.last_read = _monotonic()
        self.busy_since = 0.0
        self.ping_sent: Optional[float] = None
        self.reader = threading.Thread(
            target=self._read_loop, name=f"valkeyaside-reader-{generation}", daemon=True
        )

    @property
    def owner(self) -> Connection:
        """The connection this link belongs to."""
        return self._owner

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def usable(self) -> bool:
        return self.error is None and not self.retiring

    def submit(self, request: Request, last: bool = False) -> bool:
        """Queue the request and write, unless another thread is writing already.

        False when the link was already dead: nothing was sent, so the caller
        may safely send it on a new connection. ``last``: nothing may follow
        this request on the link, which dies when its reply arrives (RESET).
        """
        with self._lock:
            if self.error is not None or self.retiring:
                return False
            if last:
                self.retiring = True
                request.on_reply = then_die(request.on_reply, self.die)
            request.link = self
            if not self.exchange.waiting:
                self.busy_since = _monotonic()
            self.exchange.expect(request)
            self._outbox.append(request.payload)
            if self._writing:
                return True  # the writing thread picks this up before it stops
            hold = self.hold
            if hold is not None and hold.holding:
                # Another node's reader wakes callers: it writes this when done
                # (it decrements before it looks at our queue, under our lock).
                return True
            self._writing = True
        self._write_queued()
        return True

    def write_if_idle(self) -> None:
        """Write what is queued, unless a write is under way (see ``WriteHold``)."""
        with self._lock:
            if self._writing or not self._outbox or self.error is not None:
                return
            self._writing = True
        self._write_queued()

    def _write_queued(self) -> None:
        while True:
            with self._lock:
                outbox = self._outbox
                if not outbox or self.error is not None:
                    self._writing = False
                    return
                self._outbox = []
            try:
                self.stream.sendall(outbox[0] if len(outbox) == 1 else b"".join(outbox))
            except BaseException as exc:
                # A partial write leaves the stream unusable: fail everything on it.
                with self._lock:
                    self._writing = False
                cause: BaseException = exc
                if isinstance(exc, BlockingIOError):  # SO_SNDTIMEO ran out
                    cause = socket.timeout(
                        f"a write stalled for over {self._owner.options.socket_timeout} s "
                        "(the server stopped reading)")
                    cause.__cause__ = exc
                self.die(cause)
                return

    def _read_loop(self) -> None:
        recv = self.stream.recv
        receive = self.exchange.receive
        exchange = self.exchange
        lock = self._lock
        monotonic = _monotonic
        health = self._owner.health_policy
        tick = health.tick
        # How long a receive may find nothing before the policy is asked;
        # None: no bound (no rule is on, or the platform has no SO_RCVTIMEO
        # and a Python timeout on the socket bounds receives instead).
        limit = tick if tick is not None and self.stream.recv_limit(tick) else None
        try:
            while self.error is None:
                try:
                    data = recv(_RECV_SIZE)
                except (BlockingIOError, socket.timeout):
                    # Nothing read for a while: the policy's turn.
                    if health.active:
                        limit = self._check_health(limit)
                    continue
                self.last_read = monotonic()
                if limit is not None and tick is not None and limit > tick:
                    limit = tick if self.stream.recv_limit(tick) else None
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                # Hold writes back while these replies wake their callers: when
                # several were woken, the requests they send next then go out
                # together, in one write (and the server answers them in one).
                with lock:
                    hold = not self._writing
                    self._writing = True
                if not hold:
                    receive(data)  # a caller is writing; it writes what is queued
                    continue
                group = self.hold
                if group is not None:
                    group.hold()
                waiting = exchange.waiting
                try:
                    receive(data)
                except BaseException:
                    with lock:
                        self._writing = False
                    if group is not None:
                        group.release()
                    raise
                if waiting - exchange.waiting > 1:
                    _yield_cpu()  # the callers just woken run now, and queue
                self._write_queued()
                if group is not None:
                    group.release()  # the last reader writes every link's queue
        except BaseException as exc:
            self.die(exc)

    def _check_health(self, limit: Optional[float]) -> Optional[float]:
        """Ask the policy, act on its verdict; return the receive bound now set."""
        now = _monotonic()
        with self._lock:
            busy_since = self.busy_since if self.exchange.waiting else None
            writing = self._writing
        verdict = self._owner.health_policy.check(now, self.last_read, busy_since, self.ping_sent)
        if verdict.action is Action.DEAD:
            if not writing:
                raise socket.timeout(verdict.reason)
            # A write in progress has its own bound (SO_SNDTIMEO): a server that
            # stopped reading fails it, with the better message. Look again soon.
            verdict = dataclasses.replace(verdict, action=Action.NOTHING, next_check=now + 0.05)
        if verdict.action is Action.PING and self.submit(Request(_PING, on_reply=self._pong)):
            self.ping_sent = now
        if limit is None or verdict.next_check is None:
            return limit
        wait = max(verdict.next_check - _monotonic(), 0.001)
        return wait if self.stream.recv_limit(wait) else None

    def _pong(self, _request: Request) -> None:
        self.ping_sent = None

    def die(self, cause: BaseException) -> None:
        """Fail every waiting request, close the socket, tell the handlers (once)."""
        with self._lock:
            if self.error is not None:
                return
            error = self.error = self._owner._lost(cause)
            pending = self.exchange.drain()
            self._outbox = []
        if self.hold is not None:
            self.hold.links.discard(self)
        self.stream.close()
        # Handlers first (they flush the cache), then wake the callers: a woken
        # caller may reconnect at once and must find nothing left from this link.
        try:
            self._owner._link_died(cause)
        finally:
            self.torn_down.set()
        for request in pending:
            request.fail(error)  # type: ignore[attr-defined]


class Connection(ConnectionBase):
    """A RESP3 connection that many threads share; it reconnects on demand.

    Push and disconnect handlers run on the reader thread: they must be quick
    and must not wait for a reply (that would stop the reader).
    """

    #: Set by a cluster on its node connections: their links hold writes together.
    write_hold: Optional[WriteHold] = None

    def __init__(self, options: ConnectionOptions) -> None:
        super().__init__(options)
        self._connect_lock = threading.Lock()
        self._link: Optional[_Link] = None
        _live_connections.add(self)

    # -- calls ---------------------------------------------------------------

    def submit(self, request: Request, timeout: Optional[float] = None) -> None:
        """Write a request (connecting first if needed); wait on it with ``request.wait``.

        ``timeout`` bounds connecting, below ``connect_timeout``, when a
        connection has to be made first.
        """
        self._submit(request, timeout, last=False)

    def submit_nowait(self, request: Request) -> bool:
        """Queue ``request`` on the live link, never connecting; False when there is none."""
        link = self._link
        return link is not None and link.submit(request)

    def _submit(self, request: Request, timeout: Optional[float], last: bool) -> None:
        link = self._link
        if link is None or not link.usable:
            link = self._connect(timeout)
        if not link.submit(request, last):  # lost just now, before anything was written
            link = self._connect(timeout)
            if not link.submit(request, last):
                raise link.error or ConnectionError("connection lost")

    def call(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """Send one command and return its reply; an error reply is raised."""
        request = Request(encode_command(*args))
        self._submit(request, timeout, last=False)
        return _first_reply(request, self.options.socket_timeout if timeout is None else timeout)

    def call_last(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """Send a command that ends the connection's state (RESET): nothing else is
        sent after it on this socket, which is closed when the reply arrives; the
        next call connects afresh (handshake, SELECT, tracking)."""
        request = Request(encode_command(*args))
        self._submit(request, timeout, last=True)
        return _first_reply(request, self.options.socket_timeout if timeout is None else timeout)

    def call_many(
        self, commands: Sequence[tuple[Arg, ...]], timeout: Optional[float] = None
    ) -> list[Any]:
        """Send commands in one write; return their replies, error replies as values."""
        request = Request(encode_commands(list(commands)), len(commands))
        self.submit(request, timeout)
        return request.wait(self.options.socket_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Close the socket; waiting calls fail; later calls raise ConnectionError."""
        with self._connect_lock:
            self._closed = True
            link = self._link
        if link is not None:
            link.die(ConnectionError("the connection was closed"))
            if link.reader is not threading.current_thread() and link.reader.is_alive():
                link.reader.join(5)

    # -- internals -----------------------------------------------------------

    def _connect(self, timeout: Optional[float]) -> _Link:
        limit, deadline = self._connect_deadline(timeout)
        if not self._connect_lock.acquire(True, -1 if limit is None else limit):
            raise TimeoutError(f"connecting to {self.options.address} timed out")
        try:
            if self._closed:
                raise ConnectionError("the connection was closed")
            link = self._link
            if link is not None and link.usable:
                return link  # another thread connected meanwhile
            if link is not None and link.error is not None:
                # Let the lost link's handlers (the cache flush) finish first:
                # nothing may be read over a new socket while old entries stand.
                link.torn_down.wait(None if deadline is None else deadline - time.monotonic())
            resume = self._backoff_until(deadline)
            if resume:
                time.sleep(max(0.0, resume - time.monotonic()))
            try:
                link = self._open_link(None if deadline is None else deadline - time.monotonic())
            except BaseException:
                self._attempted(False)
                raise
            self._attempted(True)
            self._link = link
            link.reader.start()
            return link
        finally:
            self._connect_lock.release()

    def _open_link(self, timeout: Optional[float]) -> _Link:
        options = self.options
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"connecting to {options.address} timed out")
        try:
            stream = open_stream(options, timeout)
        except socket.timeout as exc:
            raise TimeoutError(f"connecting to {options.address} timed out") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {options.address}: {exc}") from exc
        try:
            parser = self._handshake(stream)
            stream.serve(options.socket_timeout)
        except BaseException:
            stream.close()
            raise
        self._generation += 1
        return _Link(self, stream, parser, self._generation)

    def _handshake(self, stream: Stream) -> Parser:
        """HELLO 3 (with AUTH and SETNAME), SELECT, then the connect commands."""
        options = self.options
        connect_commands = list(self._connect_commands)
        commands = handshake_commands(options, connect_commands)
        parser = Parser()
        try:
            stream.sendall(encode_commands(commands))
            replies = _read_replies(stream, parser, len(commands))
        except Exception as exc:
            error = handshake_error(options, exc)
            if error is exc:
                raise
            raise error from exc
        self._handshook(check_handshake(options, connect_commands, replies))
        return parser

    def _after_fork(self) -> None:
        """In a forked child: the parent's socket and threads are not ours."""
        self._connect_lock = threading.Lock()
        for reinit in self._fork_handlers:
            reinit()
        link, self._link = self._link, None
        if link is not None and link.error is None:
            # Don't close or shut the socket down: the parent still uses it.
            link.error = ConnectionError("connection inherited across fork")
            for handler in self._disconnect_handlers:
                handler(link.error)


_live_connections: weakref.WeakSet[Connection] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for connection in list(_live_connections):
        connection._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _sleep_zero() -> None:
    time.sleep(0)


# Lets other threads run now (both release the GIL meanwhile).
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", _sleep_zero)


def _first_reply(request: Request, timeout: Optional[float]) -> Any:
    reply = request.wait(timeout)[0]
    if type(reply) is ResponseError:
        raise reply
    return reply


def _read_replies(stream: Stream, parser: Parser, count: int) -> list[Any]:
    replies: list[Any] = []
    while len(replies) < count:
        frame = parser.next_frame()
        if frame is NEED_DATA:
            data = stream.recv(_RECV_SIZE)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            parser.feed(data)
        elif type(frame) is not Push:
            replies.append(frame)
    return replies
