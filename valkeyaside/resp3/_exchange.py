"""Matching replies to requests, and routing push frames: no I/O here.

A transport writes each request's bytes and registers the request with
:meth:`Exchange.expect` in the same order, then hands every received chunk
to :meth:`Exchange.receive`. A frame that is not a push belongs to the oldest
request still waiting, and a request whose last reply arrived goes to
``on_complete`` at once. Pushes go to ``on_push`` before any later request
completes, so a reply and an invalidation of the same key are seen in the
order the server sent them; until then they wait, and consecutive
``invalidate`` pushes go as one (a batch that locks many keys this client
reads makes as many pushes, between replies nobody looks at yet). A reply
with nobody waiting is a protocol error.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional, Protocol

from ..errors import ProtocolError
from ._parser import Parser, Push

__all__ = ["Exchange", "Pending"]


class Pending(Protocol):
    """What the exchange needs of a request: how many replies, and where they go."""

    expected: int
    replies: list[Any]


class Exchange:
    """Sans-I/O reply matcher for one connection."""

    __slots__ = ("_on_complete", "_on_push", "_parser", "_waiting")

    def __init__(
        self,
        on_push: Callable[[Push], None],
        on_complete: Callable[[Any], None],
        parser: Optional[Parser] = None,
    ) -> None:
        self._parser = parser if parser is not None else Parser()
        self._on_push = on_push
        self._on_complete = on_complete
        self._waiting: deque[Pending] = deque()

    def expect(self, request: Pending) -> None:
        """Register a request whose bytes are written (or about to be), in write order."""
        self._waiting.append(request)

    @property
    def waiting(self) -> int:
        """How many requests still wait for replies."""
        return len(self._waiting)

    def receive(self, data: bytes) -> None:
        """Consume bytes from the server; callbacks run for each finished frame."""
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        pushes: list[Push] = []  # not yet handed on
        try:
            # frames() raises a protocol error only once the frames before it are out.
            frames = parser.frames()
            while frames:
                for frame in frames:
                    if type(frame) is Push:
                        pushes.append(frame)
                        continue
                    if not waiting:
                        raise ProtocolError(f"a reply nobody asked for: {frame!r:.80}")
                    request = waiting[0]
                    replies = request.replies
                    replies.append(frame)
                    if len(replies) == request.expected:
                        if pushes:
                            self._hand_on(pushes)
                        waiting.popleft()
                        self._on_complete(request)
                frames = parser.frames()
        finally:
            if pushes:  # also those read before a protocol error
                self._hand_on(pushes)

    def _hand_on(self, pushes: list[Push]) -> None:
        """Give ``on_push`` these pushes, in order, each run of invalidations of
        keys as one; empty the list."""
        on_push = self._on_push
        run: list[Push] = []  # consecutive invalidations of keys
        for push in pushes:
            if len(push) == 2 and push[0] == b"invalidate" and type(push[1]) is list:
                run.append(push)
                continue
            if run:
                on_push(_merged(run))
                run = []
            on_push(push)
        if run:
            on_push(_merged(run))
        pushes.clear()

    def drain(self) -> list[Pending]:
        """Forget and return every waiting request (the connection is gone)."""
        pending = list(self._waiting)
        self._waiting.clear()
        return pending


def _merged(run: list[Push]) -> Push:
    """One invalidation of every key of ``run`` (invalidations of key lists)."""
    if len(run) == 1:
        return run[0]
    return Push([b"invalidate", [key for push in run for key in push[1]]])
