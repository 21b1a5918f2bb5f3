"""One load per key and marker at a time within a client.

Every placeholder of a client carries its marker id, so the server's
set-if-holder check cannot tell two loads of one key under one marker apart:
if the first load's placeholder were deleted and a second load locked the key
again, the first could still fill its older value. Such loads therefore take
turns inside the client, each finishing its fill or release first. Loads
under different markers (the marker changes after a lost connection) need
not wait for each other: the check tells them apart.
"""

from __future__ import annotations

import threading
from typing import Optional

__all__ = ["KeyGates"]


class KeyGates:
    """A lock per key, made on first use and dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[str, list[object]] = {}  # key -> [lock, holders and waiters]

    def enter(self, key: str, timeout: Optional[float]) -> bool:
        """Wait for the key's turn; False when ``timeout`` passed first."""
        with self._lock:
            gate = self._gates.get(key)
            if gate is None:
                gate = self._gates[key] = [threading.Lock(), 0]
            gate[1] += 1  # type: ignore[operator]
        lock: threading.Lock = gate[0]  # type: ignore[assignment]
        if lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            return True
        self._leave(key, gate)
        return False

    def exit(self, key: str) -> None:
        with self._lock:
            gate = self._gates[key]
        gate[0].release()  # type: ignore[attr-defined]
        self._leave(key, gate)

    def _leave(self, key: str, gate: list[object]) -> None:
        with self._lock:
            gate[1] -= 1  # type: ignore[operator]
            if not gate[1]:
                del self._gates[key]

    def after_fork(self) -> None:
        """In a forked child: other threads' turns are gone with them."""
        self.__init__()  # type: ignore[misc]
