"""What every connection keeps, threaded or asyncio: handlers, handshake, backoff."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional, TypeVar

from ..errors import ConnectionError
from ._encoder import Arg
from ._handshake import ConnectCommand, Handshake
from ._health import HealthPolicy
from ._options import ConnectionOptions
from ._parser import Push

__all__ = ["ConnectionBase", "DisconnectHandler", "PushHandler", "then_die"]

log = logging.getLogger("valkeyaside")

PushHandler = Callable[[Push], None]
DisconnectHandler = Callable[[BaseException], None]

BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0

_R = TypeVar("_R")


class ConnectionBase:
    """The handlers a connection runs and what it learnt of its server.

    Push and disconnect handlers run where frames are read (a reader thread,
    or the event loop): they must be quick and must not wait for a reply.
    """

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        self._push_handlers: list[PushHandler] = []
        self._disconnect_handlers: list[DisconnectHandler] = []
        self._connect_commands: list[ConnectCommand] = []
        self._fork_handlers: list[Callable[[], None]] = []
        self._generation = 0
        self._failures = 0
        self._last_failure = 0.0
        self._closed = False
        self._link: Any = None  # the live socket's link, of the transport's own kind
        #: When a link is PINGed, and when it is dead (see ``_health``).
        self.health_policy = HealthPolicy(options.socket_timeout, options.health_check_interval)
        #: What the server said in the last handshake (None before the first connection).
        self.handshake: Optional[Handshake] = None

    # -- configuration -------------------------------------------------------

    def add_push_handler(self, handler: PushHandler) -> None:
        """Call ``handler(push)`` for every push frame, where frames are read."""
        self._push_handlers.append(handler)

    def add_disconnect_handler(self, handler: DisconnectHandler) -> None:
        """Call ``handler(cause)`` once for every lost connection, where frames are read."""
        self._disconnect_handlers.append(handler)

    def add_fork_handler(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` first thing in a forked child, before the disconnect
        handlers: the place to replace locks another thread may have held."""
        self._fork_handlers.append(handler)

    def add_connect_command(self, *args: Arg, optional: bool = False) -> None:
        """Send this command after the handshake of every new connection.

        A refusal (an error reply) fails the connection, unless ``optional``:
        then it is recorded in :attr:`refused_connect_commands` and the
        connection is made anyway.
        """
        self._connect_commands.append(ConnectCommand(args, optional))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "idle")
        return f"<{type(self).__name__} {self.options.address} {state}>"

    # -- state ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and bool(link.alive)

    @property
    def link(self) -> Any:
        """The current socket's link (alive or not), None before the first."""
        return self._link

    @property
    def server_version(self) -> Optional[tuple[int, ...]]:
        """The version the server gave in the last handshake, ``(7, 2, 4)``;
        None before the first connection, ``()`` if it gave none."""
        handshake = self.handshake
        return None if handshake is None else handshake.version

    @property
    def server_name(self) -> Optional[str]:
        """``"valkey"`` or ``"redis"`` (as HELLO said it) after a connection, else None."""
        handshake = self.handshake
        return None if handshake is None else handshake.server

    @property
    def refused_connect_commands(self) -> tuple[tuple[Arg, ...], ...]:
        """The optional connect commands the server refused in the last handshake."""
        handshake = self.handshake
        return () if handshake is None else tuple(cmd.args for cmd, _ in handshake.refused)

    @property
    def failing(self) -> bool:
        """Whether the last attempt to connect failed (and none succeeded since)."""
        return self._failures > 0

    @property
    def generation(self) -> int:
        """Counts connections made; changes whenever a new socket replaces a lost one."""
        return self._generation

    # -- for the transports ------------------------------------------------------

    def _connect_deadline(
        self, timeout: Optional[float]
    ) -> tuple[Optional[float], Optional[float]]:
        """How long connecting may take (``connect_timeout``, or ``timeout`` if
        shorter) and the monotonic deadline that gives; None: unbounded."""
        limit = self.options.connect_timeout
        if timeout is not None:
            limit = timeout if limit is None else min(limit, timeout)
        return limit, None if limit is None else time.monotonic() + limit

    def _handshook(self, handshake: Handshake) -> None:
        for command, refusal in handshake.refused:
            log.info("%s refused %s while connecting: %s", self.options.address,
                     " ".join(str(part) for part in command.args[:3]), refusal)
        self.handshake = handshake

    def _backoff_until(self, deadline: Optional[float]) -> float:
        """After failed attempts, when the next may start (50 ms doubling to 1 s);
        ConnectionError when that is past ``deadline``."""
        if not self._failures:
            return 0.0
        delay: float = min(BACKOFF_FIRST * 2.0 ** (self._failures - 1), BACKOFF_MAX)
        resume = self._last_failure + delay
        if deadline is not None and resume >= deadline:
            raise ConnectionError(
                f"cannot connect to {self.options.address}: still backing off after "
                f"{self._failures} failed attempts"
            )
        return resume

    def _attempted(self, ok: bool) -> None:
        if ok:
            self._failures = 0
        else:
            self._failures += 1
            self._last_failure = time.monotonic()

    def _lost(self, cause: BaseException) -> ConnectionError:
        """The error that fails a lost link's requests: ``cause`` itself if it is
        a ConnectionError already, else one that names the server and wraps it."""
        if isinstance(cause, ConnectionError):
            return cause
        error = ConnectionError(f"connection to {self.options.address} lost: {cause}")
        error.__cause__ = cause
        return error

    def _dispatch_push(self, push: Push) -> None:
        for handler in self._push_handlers:
            handler(push)

    def _link_died(self, cause: BaseException) -> None:
        if not self._closed:
            log.info("connection to %s lost: %s", self.options.address, cause)
        for handler in self._disconnect_handlers:
            try:
                handler(cause)
            except Exception:  # one handler's bug must not hide the loss from the others
                log.exception("disconnect handler failed")


def then_die(
    on_reply: Optional[Callable[[_R], None]], die: Callable[[BaseException], None]
) -> Callable[[_R], None]:
    """``on_reply``, then ``die``: for a request that ends its link (RESET)."""
    def finish(request: _R) -> None:
        if on_reply is not None:
            on_reply(request)
        die(ConnectionResetError("connection reset on request"))

    return finish
