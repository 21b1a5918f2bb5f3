"""Callers parked until a key changes: woken by invalidations, not by polling."""

from __future__ import annotations

import threading
from typing import Iterable, Optional, Protocol

__all__ = ["Waiter", "Waiters", "Waker"]


class Waker(Protocol):
    """How a parked caller is woken: a thread's pipe, or a task's future."""

    def wake(self) -> None: ...


class Waiter:
    """One parked call; it may watch several keys and is woken once.

    Its ``waker`` belongs to the thread or task that parks (``Park``): a
    thread sleeps on its pipe (see ``resp3._wakers``), a task on a future.
    """

    __slots__ = ("keys", "waker", "woken")

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        self.keys: list[str] = []
        self.woken = False

    def wake(self) -> None:
        if not self.woken:
            self.woken = True  # first: the sleeper looks at it after each wake
            self.waker.wake()


class Waiters:
    """Registry of waiters by key."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many keys have waiters."""
        return len(self._by_key)

    def after_fork(self) -> None:
        """In a forked child: the parent's threads, and whatever they held, are gone."""
        self._lock = threading.Lock()
        self._by_key.clear()

    def watch(self, waiter: Waiter, key: str) -> None:
        """Wake ``waiter`` when ``key`` is invalidated (register before reading ``key``)."""
        self.watch_many(waiter, [key])

    def watch_many(self, waiter: Waiter, keys: list[str]) -> None:
        """``watch`` each of ``keys``."""
        by_key = self._by_key
        with self._lock:
            for key in keys:
                group = by_key.get(key)
                if group is None:
                    by_key[key] = {waiter}
                else:
                    group.add(waiter)
            waiter.keys += keys

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
