"""Waking a sleeping thread without holding the GIL.

A thread that waits for a reply sleeps in ``os.read`` on a pipe of its own;
the thread that completes the request wakes it by writing one byte. The point
is *when* the wake happens: ``os.write`` releases the GIL before entering the
kernel, so the woken thread can take the GIL and run at once. Releasing a
lock instead wakes the sleeper while the waker still holds the GIL; on a busy
machine the woken thread then runs only to block again on the GIL, a wasted
pair of context switches for every reply (four threads sharing one
connection do about a quarter more round trips per second with pipes).

A pipe cannot time out, so one process-wide watchdog thread wakes the
sleepers whose deadline has passed, looking every few milliseconds while any
sleeper has a deadline, and stopping after a second without one. Timeouts
are therefore honoured to within a few milliseconds.

Each thread makes its pipe the first time it sleeps and keeps it for its
life (two descriptors, closed with it). A stray byte (a wake that came after
the sleeper gave up) only ends a later sleep early, so sleepers always check
what they wait for and sleep again. After ``fork`` the child makes new pipes:
it must not read bytes meant for its parent's threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import Optional

__all__ = ["Waker", "current_waker"]

_TICK = 0.005  # how often the watchdog looks for overdue sleepers
_IDLE_TICKS = 200  # it stops after this many looks with no sleeper on a deadline


class Waker:
    """One thread's pipe: it sleeps on the read end; any thread wakes it through the other."""

    __slots__ = ("__weakref__", "_read_fd", "_write_fd", "deadline")

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # older Windows Pythons
            os.set_blocking(self._write_fd, False)  # a waker never blocks
        #: When the current sleep must end (time.monotonic()); None: no limit.
        self.deadline: Optional[float] = None
        _wakers.add(self)

    def wake(self) -> None:
        """Wake the owner, or make its next sleep return at once."""
        fd = self._write_fd
        if fd >= 0:  # not closed (after fork): the number may belong to another file now
            try:  # noqa: SIM105 (contextlib.suppress costs more on this hot path)
                os.write(fd, b"!")
            except OSError:
                pass  # full of unread wakes: it wakes anyway

    def sleep(self, deadline: Optional[float]) -> None:
        """Sleep until woken or (about) ``deadline``; only the owning thread calls it.

        The caller checks what it waits for and its deadline, and sleeps
        again: a stray wake from an earlier wait can end a sleep early.
        """
        if deadline is None:
            os.read(self._read_fd, 64)  # every wake queued so far
            return
        self.deadline = deadline
        _sleeping.add(self)  # before looking at the watchdog: see _watchdog
        if not _watch.running:
            _watch.start()
        try:
            os.read(self._read_fd, 64)
        finally:
            _sleeping.discard(self)
            self.deadline = None

    def close(self) -> None:
        read_fd, write_fd = self._read_fd, self._write_fd
        self._read_fd = self._write_fd = -1
        for fd in (read_fd, write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, os may be gone
            self.close()


class _Watch:
    """The watchdog's state; replaced in a child after fork."""

    def __init__(self) -> None:
        self.running = False
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.running:
                return
            self.running = True
        threading.Thread(target=_watchdog, args=(self,), name="valkeyaside-timeouts",
                         daemon=True).start()


def _watchdog(watch: _Watch) -> None:
    """Wake every sleeper whose deadline has passed; stop when none has had one for a while."""
    idle = 0
    while True:
        time.sleep(_TICK)
        now = time.monotonic()
        sleepers = list(_sleeping)
        for waker in sleepers:
            deadline = waker.deadline
            if deadline is not None and deadline <= now:
                waker.wake()
        idle = 0 if sleepers else idle + 1
        if idle >= _IDLE_TICKS:
            with watch.lock:
                watch.running = False
                # A sleeper joins _sleeping, then looks at ``running``: one
                # that looked before this line set it is seen here.
                if _sleeping:
                    watch.running = True
                    idle = 0
                    continue
            return


_wakers: weakref.WeakSet[Waker] = weakref.WeakSet()  # all, to close in a forked child
_sleeping: set[Waker] = set()  # those asleep with a deadline: the watchdog's to look at
_watch = _Watch()
_local = threading.local()


def current_waker() -> Waker:
    """The calling thread's waker, made on first use."""
    try:
        return _local.waker  # type: ignore[no-any-return]
    except AttributeError:
        waker = _local.waker = Waker()
        return waker


def _forget_after_fork() -> None:
    """In a forked child: the parent's pipes carry the parent's wakes."""
    global _local, _watch
    for waker in list(_wakers):
        waker.close()
    _sleeping.clear()
    _local = threading.local()
    _watch = _Watch()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
