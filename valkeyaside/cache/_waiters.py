"""Callers parked until a key changes: woken by invalidations, not by polling."""

from __future__ import annotations

import threading
import time
from typing import Iterable, Optional

from ..resp3._wakers import current_waker

__all__ = ["Waiter", "Waiters"]


class Waiter:
    """One waiting call; it may watch several keys and is woken once.

    Made by the thread that waits: it sleeps on that thread's waker, so the
    push that wakes it leaves the GIL free for it (see ``resp3._wakers``).
    """

    __slots__ = ("_waker", "keys", "woken")

    def __init__(self) -> None:
        self._waker = current_waker()
        self.keys: list[str] = []
        self.woken = False

    def wake(self) -> None:
        if not self.woken:
            self.woken = True  # first: the sleeper looks at it after each wake
            self._waker.wake()

    def wait(self, timeout: float) -> bool:
        """True when woken, False when ``timeout`` seconds passed first."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self.woken:
            if time.monotonic() >= deadline:
                return False
            self._waker.sleep(deadline)
        return True


class Waiters:
    """Registry of waiters by key."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child: the parent's threads, and whatever they held, are gone."""
        self._lock = threading.Lock()
        self._by_key.clear()

    def watch(self, waiter: Waiter, key: str) -> None:
        """Wake ``waiter`` when ``key`` is invalidated (register before reading ``key``)."""
        with self._lock:
            self._by_key.setdefault(key, set()).add(waiter)
            waiter.keys.append(key)

    def forget(self, waiter: Waiter) -> None:
        with self._lock:
            for key in waiter.keys:
                group = self._by_key.get(key)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._by_key[key]
            waiter.keys.clear()

    def _pop(self, key: str) -> Optional[set[Waiter]]:
        return self._by_key.pop(key, None)

    def wake(self, keys: Optional[Iterable[str]]) -> None:
        """Wake the waiters of ``keys``; ``None`` wakes everyone."""
        with self._lock:
            if keys is None:
                groups = list(self._by_key.values())
                self._by_key.clear()
            else:
                groups = [group for group in map(self._pop, keys) if group]
        for group in groups:
            for waiter in group:
                waiter.wake()
