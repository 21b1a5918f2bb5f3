"""What the shared algorithm needs of a connection, threaded or asyncio."""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from ._connection import Request
from ._encoder import Arg
from ._options import ConnectionOptions
from ._parser import Push

__all__ = ["Transport"]


class Transport(Protocol):
    """A multiplexed RESP3 connection that reconnects on demand.

    Requests are written by the drivers (``Send``); the core only queues
    work that must not wait (``submit_nowait``) and registers handlers, which
    run where frames are read (the reader thread, or the event loop) and must
    neither block nor wait for a reply.
    """

    options: ConnectionOptions

    @property
    def connected(self) -> bool: ...

    @property
    def server_version(self) -> Optional[tuple[int, ...]]: ...

    @property
    def server_name(self) -> Optional[str]:
        """``"valkey"`` or ``"redis"``, as the last handshake said; None before one."""

    def submit_nowait(self, request: Request) -> bool:
        """Queue ``request`` on the live link without waiting; False when there is none."""

    def add_push_handler(self, handler: Callable[[Push], None]) -> None: ...

    def add_disconnect_handler(self, handler: Callable[[BaseException], None]) -> None: ...

    def add_fork_handler(self, handler: Callable[[], None]) -> None: ...

    def add_connect_command(self, *args: Arg, optional: bool = False) -> None: ...
