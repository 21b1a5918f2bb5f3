"""Callers of one client that miss the same key wait for the first one's ``get``.

When many threads or tasks of one client miss one key at once (a stampede
inside the process), only the first runs the algorithm; the others park on
its flight instead of each parking on the key. The flight lands when that
get has ended and, if it filled the key, once the value the fill handed over
is kept locally (or the key changed meanwhile). Landing looks at the local
cache once for all the followers: a fresh entry is their ``answer``, a hit
like any other (as fresh as the invalidations this client has applied, at
a moment inside each follower's call); otherwise (the get failed, its fill
was refused, the key was invalidated) each runs the algorithm itself. A
follower never takes the first caller's value as such: that value may
predate a write that the follower must see.

A caller whose deadline comes before the flight's goes alone, and a lost
link lands every flight (what it waits on may have died with the link).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional, Protocol, TypeVar

from ._effects import Steps
from .cache import Entry, TrackedCache, Waiter

__all__ = ["Flight", "Flights"]

T = TypeVar("T")

#: A flight's ``answer`` when its key had no fresh local entry as it landed.
NO_ANSWER: Any = object()


class _Settable(Protocol):
    """A following task's future (duck-typed: this module does no I/O)."""

    def done(self) -> bool: ...

    def set_result(self, result: None) -> None: ...


class _Gate:
    """What the threads that follow one flight sleep on: one pipe, from which each
    reads a byte. Landing writes a byte per thread in one write, so the lander
    wakes them all at once; a write to each thread's own pipe would hand the
    GIL to every woken thread in turn, and wait to get it back, before waking
    the next. The last of the lander and the sleepers to be done closes it."""

    __slots__ = ("_lock", "_read_fd", "_sleepers", "_users", "_write_fd")

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self._lock = threading.Lock()
        self._sleepers = 0
        self._users = 1  # the lander

    def enter(self) -> None:
        """One more thread will ``wait`` (called under the flights' lock)."""
        with self._lock:
            self._sleepers += 1
            self._users += 1

    def wait(self) -> None:
        """Sleep until ``open``."""
        try:
            os.read(self._read_fd, 1)
        finally:
            self._leave()

    def open(self) -> None:
        """Wake every thread that entered (once)."""
        try:
            unsent = self._sleepers
            while unsent > 0:  # a signal may cut a long write short
                unsent -= os.write(self._write_fd, b"!" * unsent)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users:
                return
        os.close(self._read_fd)
        os.close(self._write_fd)


class Flight:
    """One caller's ``get`` of a key; ``landed`` once its followers may look again."""

    __slots__ = ("answer", "deadline", "followers", "gate", "landed", "watcher")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.followers: list[_Settable] = []  # the futures of following tasks
        self.gate: Optional[_Gate] = None  # what following threads sleep on
        self.landed = False
        #: Once landed: the key's fresh local value then, or ``NO_ANSWER``.
        self.answer: Any = NO_ANSWER
        #: Once followed: the waiter that lands it early (see ``Flights.answered``).
        self.watcher: Optional[Waiter] = None

    def wait(self) -> None:
        """Sleep until landed (a thread that ``Flights.lead`` made a follower)."""
        assert self.gate is not None
        self.gate.wait()


class _Landing:
    """The waker of a waiter that lands a flight when its key's fill is settled."""

    __slots__ = ("flight", "flights", "key")

    def __init__(self, flights: Flights, key: tuple[str, bool], flight: Flight) -> None:
        self.flights = flights
        self.key = key
        self.flight = flight

    def wake(self) -> None:
        self.flights.land(self.key, self.flight)


class _Answered(_Landing):
    """The waker of a waiter that lands a flight early, if its key changed to a
    fresh local entry (see ``Flights.answered``)."""

    __slots__ = ()

    def wake(self) -> None:
        self.flights.answered(self.key, self.flight)


class Flights:
    """The flights under way in one client, by key (and whether a loader came)."""

    def __init__(self, cache: TrackedCache) -> None:
        self._cache = cache
        self._by_key: dict[tuple[str, bool], Flight] = {}
        self._lock = threading.Lock()

    def lead(self, key: tuple[str, bool], deadline: float,
             future: Optional[_Settable]) -> tuple[Optional[Flight], bool]:
        """``(flight, True)``: the caller leads it (its steps go through ``led``).
        ``(flight, False)``: the caller follows it: a task's ``future`` gets its
        result when it lands, or, with no future (a thread), ``flight.wait()``
        returns.
        ``(None, False)``: the caller goes alone (its deadline is first)."""
        with self._lock:
            flight = self._by_key.get(key)
            if flight is None:
                flight = self._by_key[key] = Flight(deadline)
                return flight, True
            if flight.deadline > deadline:
                return None, False
            first = not flight.followers and flight.gate is None
            if future is not None:
                flight.followers.append(future)
            else:
                if flight.gate is None:
                    flight.gate = _Gate()
                flight.gate.enter()
        if first:
            self._watch(key, flight)
        return flight, False

    def led(self, key: tuple[str, bool], flight: Flight, steps: Steps[T]) -> Steps[T]:
        """The leader's ``steps``; once they end, however, the flight lands, as
        soon as a fill of the key by this client has handed its value over."""
        try:
            return (yield from steps)
        finally:
            cache = self._cache
            landing = Waiter(_Landing(self, key, flight))
            cache.waiters.watch(landing, key[0])  # before looking: no wake is missed
            if not cache.is_filling(key[0]):
                cache.waiters.forget(landing)
                self.land(key, flight)

    def _watch(self, key: tuple[str, bool], flight: Flight) -> None:
        """Have ``answered`` look when ``key`` next changes (the first follower
        asks, so a get that nobody follows costs nothing)."""
        watcher = flight.watcher = Waiter(_Answered(self, key, flight))
        waiters = self._cache.waiters
        waiters.watch(watcher, key[0])
        if flight.landed:  # meanwhile (``land`` marks it, then forgets the watcher)
            waiters.forget(watcher)

    def answered(self, key: tuple[str, bool], flight: Flight) -> None:
        """``key`` changed while ``flight`` is followed, where frames are read. A
        fresh local entry now is the value a fill of this client handed over:
        the flight lands at once, before its leader's steps end (the leader's
        thread or task need not run first). Anything else (the leader's lock
        invalidated its read, say) waits for the next change."""
        if self._fresh(key[0]) is not None:
            self.land(key, flight)
        elif not flight.landed:
            self._watch(key, flight)

    def _fresh(self, key: str) -> Optional[Entry]:
        """The key's local entry, if it is a final answer not yet expired."""
        entry = self._cache.store.entries.get(key)
        if entry is not None and entry.plain and entry.expires > time.monotonic():
            return entry
        return None

    def land(self, key: tuple[str, bool], flight: Flight, look: bool = True) -> None:
        """Give the followers the key's fresh local value, if any (unless not
        ``look``), and wake them (once; later calls do nothing)."""
        with self._lock:
            if self._by_key.get(key) is flight:
                del self._by_key[key]
            if flight.landed:
                return
            flight.landed = True
            followers, flight.followers = flight.followers, []
            gate = flight.gate
        if flight.watcher is not None:  # after ``landed``: see ``_watch``
            self._cache.waiters.forget(flight.watcher)
        entry = self._fresh(key[0]) if look else None
        if entry is not None:
            entry.used = True
            flight.answer = entry.value
        if gate is not None:
            gate.open()
        for future in followers:
            if not future.done():  # else its task was cancelled
                future.set_result(None)

    def ground(self, *_lost: Any) -> None:
        """A link was lost: every flight lands now, with no answer (what the
        cache holds may miss an invalidation, until it is flushed), and the next
        callers do not follow the gets under way (they may wait on what died
        with it)."""
        with self._lock:
            flights = list(self._by_key.items())
        for key, flight in flights:
            self.land(key, flight, look=False)

    def after_fork(self) -> None:
        """In a forked child: the parent's callers are not here."""
        self._lock = threading.Lock()
        self._by_key = {}
