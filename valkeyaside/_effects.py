"""What the shared algorithm asks of a front end: the effects it yields.

The cache-aside algorithm (``_aside``), the tracked cache and the locks are
written once, as generators that do no I/O and never block. Wherever they
need the outside world they yield one of the effects below; a driver
performs it and sends the result back in (or throws the error in). The
threaded ``Client`` drives them by blocking (``client.run``); the
``AsyncClient`` by awaiting (``aio.run``). That is the whole difference
between the two front ends.

Abandoning a generator (a cancelled task, an interrupted thread) closes it:
``GeneratorExit`` is raised where it paused, and its clean-up must then be
synchronous (queue a release, forget a waiter), never another effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Optional, TypeVar, Union

from .errors import ResponseError
from .resp3 import Arg, Batch, Request, encode_command

if TYPE_CHECKING:
    from .cache import Waiter

__all__ = [
    "Effect", "Load", "Park", "Receive", "Send", "Steps", "command", "keyed", "receive_all",
    "roundtrip", "send_all",
]

T = TypeVar("T")


class Send:
    """Write ``request`` on the connection, connecting first if need be.

    ``timeout`` bounds connecting. Sends back ``None``.
    """

    __slots__ = ("request", "timeout")

    def __init__(self, request: Request, timeout: Optional[float]) -> None:
        self.request = request
        self.timeout = timeout


class Receive:
    """Wait for ``request``'s replies; sends back the list, or throws its error.

    ``timeout`` ``None`` means the connection's ``socket_timeout``.
    """

    __slots__ = ("request", "timeout")

    def __init__(self, request: Request, timeout: Optional[float]) -> None:
        self.request = request
        self.timeout = timeout


class Park:
    """Sleep until ``waiter`` is woken or ``until`` (``time.monotonic()``) passes.

    Sends back True when woken, False when the time ran out first.
    """

    __slots__ = ("until", "waiter")

    def __init__(self, waiter: Waiter, until: float) -> None:
        self.waiter = waiter
        self.until = until


class Load:
    """Call the loader: ``fn(arg)``; sends back its value (awaited, if it is awaitable)."""

    __slots__ = ("arg", "fn")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg


Effect = Union[Send, Receive, Park, Load]
#: A step of the algorithm: a generator of effects that returns a ``T``.
Steps = Generator[Effect, Any, T]


def send_all(requests: list[Request], timeout: Optional[float] = None) -> Steps[None]:
    """Send ``requests`` in one write."""
    yield Send(requests[0] if len(requests) == 1 else Batch(requests), timeout)


def keyed(payloads: list[bytes], keys: list[str], sharded: bool) -> list[Request]:
    """Commands on one key each, to be written together: one request for them all
    (a reply per command, in order), or, when keys live on several nodes
    (``sharded``), one request per command, which goes to its key's node."""
    if sharded:
        return [Request(payload, key=key) for payload, key in zip(payloads, keys)]
    return [Request(b"".join(payloads), len(payloads))]


def receive_all(requests: list[Request], timeout: Optional[float] = None) -> Steps[list[Any]]:
    """The replies of the requests, in order (error replies as values)."""
    replies: list[Any] = []
    for request in requests:
        if request.answered:  # the rest of a batch, usually: no effect
            replies += request.replies
        else:
            replies += yield Receive(request, timeout)
    return replies


def roundtrip(request: Request, timeout: Optional[float] = None) -> Steps[list[Any]]:
    """Send ``request`` and return its replies (error replies as values)."""
    yield Send(request, timeout)
    replies: list[Any] = yield Receive(request, timeout)
    return replies


def command(*args: Arg, timeout: Optional[float] = None, key: Optional[str] = None) -> Steps[Any]:
    """One command's reply; an error reply is raised. ``key``: the key it works on
    (on a cluster, its slot's node gets the command)."""
    replies = yield from roundtrip(Request(encode_command(*args), key=key), timeout)
    reply = replies[0]
    if type(reply) is ResponseError:
        raise reply
    return reply
