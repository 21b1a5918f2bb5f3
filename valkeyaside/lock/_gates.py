"""One load per key and marker at a time within a client.

Every placeholder of a client carries its marker id, so the server's
set-if-holder check cannot tell two loads of one key under one marker apart:
if the first load's placeholder were deleted and a second load locked the key
again, the first could still fill its older value. So a caller that finds a
load of its key under its marker already running in this client does not
lock: it waits for that load's fill like any other lock waiter. Loads under
different markers (the marker changes after a lost connection) need not wait
for each other: the check tells them apart.
"""

from __future__ import annotations

import threading

__all__ = ["KeyGates"]


class KeyGates:
    """The turns (marker and key) whose load is running in this client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    def __len__(self) -> int:
        """How many loads are running."""
        return len(self._busy)

    def enter(self, turn: str) -> bool:
        """Take ``turn``; False when a load holds it already."""
        return not self.enter_many([turn])

    def enter_many(self, turns: list[str]) -> set[str]:
        """Take each of ``turns`` (distinct) that is free; return the others, which
        loads hold already."""
        busy = self._busy
        with self._lock:
            taken = busy.intersection(turns)
            busy.update(turns)
        return taken

    def leave(self, turn: str) -> None:
        self.leave_many([turn])

    def leave_many(self, turns: list[str]) -> None:
        with self._lock:
            self._busy.difference_update(turns)

    def after_fork(self) -> None:
        """In a forked child: other threads' loads are gone with them."""
        self._lock = threading.Lock()
        self._busy.clear()
