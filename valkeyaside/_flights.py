"""Callers of one client that miss the same key follow the first one's ``get``.

When many threads or tasks of one client miss one key at once (a stampede
inside the process), only the first runs the algorithm; the others park on
its flight and are handed its value when it lands, without running a step
of their own. A follower goes on its own instead when the flight fails (its
loader raised, it ran out of time, it was cancelled), when its own deadline
comes first, and after a lost link, whose death the flight may wait on.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Protocol, TypeVar

from ._effects import Steps

__all__ = ["Flight", "Flights"]

T = TypeVar("T")


class _Waker(Protocol):
    def wake(self) -> None: ...


class Flight:
    """One caller's ``get`` of a key; ``outcome`` is ``(landed, value)`` once it ends."""

    __slots__ = ("deadline", "followers", "outcome")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.followers: list[_Waker] = []
        self.outcome: Optional[tuple[bool, Any]] = None

    @property
    def landed(self) -> bool:
        """Whether it ended with a value (else: not yet, or it failed)."""
        return self.outcome is not None and self.outcome[0]

    @property
    def value(self) -> Any:
        return None if self.outcome is None else self.outcome[1]

    def pass_on(self) -> None:
        """A woken thread's turn to wake the next follower (see ``Flights``)."""
        try:
            waker = self.followers.pop()
        except IndexError:
            return
        waker.wake()


class Flights:
    """The flights under way in one client, by key (and whether a loader came).

    ``chain``: a landing wakes one follower, which wakes the next
    (``Flight.pass_on``), and so on: threads then take the GIL one after
    another instead of all at once. Tasks are all woken together.
    """

    def __init__(self, chain: bool) -> None:
        self._chain = chain
        self._by_key: dict[tuple[str, bool], Flight] = {}
        self._lock = threading.Lock()

    def lead(self, key: tuple[str, bool], deadline: float,
             waker: Optional[_Waker]) -> tuple[Optional[Flight], bool]:
        """``(flight, True)``: the caller leads it and must ``land`` it. ``(flight,
        False)``: the caller follows it (``waker`` is woken when it lands).
        ``(None, False)``: the caller goes alone (it would wait past its deadline)."""
        with self._lock:
            flight = self._by_key.get(key)
            if flight is None:
                flight = self._by_key[key] = Flight(deadline)
                return flight, True
            if flight.deadline > deadline or waker is None:
                return None, False
            flight.followers.append(waker)
            return flight, False

    def land(self, key: tuple[str, bool], flight: Flight, landed: bool, value: Any) -> None:
        """The leader's ``get`` ended: hand the followers its value, or (``landed``
        False) send them on their own."""
        with self._lock:
            if self._by_key.get(key) is flight:
                del self._by_key[key]
            flight.outcome = (landed, value)
            if self._chain:
                flight.pass_on()
                return
            followers, flight.followers = flight.followers, []
        for waker in followers:
            waker.wake()

    def led(self, key: tuple[str, bool], flight: Flight, steps: Steps[T]) -> Steps[T]:
        """The leader's ``steps``, which land ``flight`` when they end, however."""
        landed = False
        value: Any = None
        try:
            result: T = yield from steps
            value, landed = result, True
            return result
        finally:
            self.land(key, flight, landed, value)

    def ground(self, *_lost: Any) -> None:
        """A link was lost: every follower goes on its own, and the next callers
        do not follow the flights under way (they may wait on what died)."""
        with self._lock:
            flights = list(self._by_key.values())
            self._by_key.clear()
            grounded = []
            for flight in flights:
                if flight.outcome is None:
                    flight.outcome = (False, None)  # the leader may still land it, unfollowed
                    grounded += flight.followers
                    flight.followers = []
        for waker in grounded:
            waker.wake()

    def after_fork(self) -> None:
        """In a forked child: the parent's callers are not here."""
        self._lock = threading.Lock()
        self._by_key = {}
