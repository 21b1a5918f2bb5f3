"""One load per key and marker at a time within a client.

Every placeholder of a client carries its marker id, so the server's
set-if-holder check cannot tell two loads of one key under one marker apart:
if the first load's placeholder were deleted and a second load locked the key
again, the first could still fill its older value. Such loads therefore take
turns inside the client, each finishing its fill or release first. Loads
under different markers (the marker changes after a lost connection) need
not wait for each other: the check tells them apart.

The gates never block: a caller whose turn it is not parks its waiter (an
effect its driver performs) and is woken when the turn is handed to it.
"""

from __future__ import annotations

import threading
from collections import deque

from ..cache import Waiter

__all__ = ["KeyGates"]


class KeyGates:
    """A queue per key, made on first use and dropped when empty; its head holds the turn."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Waiter]] = {}

    def __len__(self) -> int:
        """How many keys have a load in turn or waiting."""
        return len(self._queues)

    def enter(self, key: str, waiter: Waiter) -> bool:
        """Queue ``waiter`` for ``key``'s turn; True when it has the turn at once."""
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = deque((waiter,))
                return True
            queue.append(waiter)
            return False

    def holds(self, key: str, waiter: Waiter) -> bool:
        queue = self._queues.get(key)
        return queue is not None and queue[0] is waiter

    def leave(self, key: str, waiter: Waiter) -> None:
        """Give up the turn, or the place in the queue; the next in line is woken."""
        with self._lock:
            queue = self._queues[key]
            had_turn = queue[0] is waiter
            queue.remove(waiter)
            if not queue:
                del self._queues[key]
                return
            successor = queue[0] if had_turn else None
        if successor is not None:
            successor.wake()

    def after_fork(self) -> None:
        """In a forked child: other threads' turns are gone with them."""
        self._lock = threading.Lock()
        self._queues.clear()
