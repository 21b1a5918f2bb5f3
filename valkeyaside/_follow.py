"""What asyncio tasks that follow another task's ``get`` await (see ``_flights``).

A stampede lands a thousand followers at once. Each awaiting a future of its
own, the landing would make a handle per task (``set_result`` schedules the
task's wake-up), and the loop would run them one by one before the tasks
could resume: measured, the landing alone took longer than the server's
round trip. So a follower awaits a ``Follow``, a future-like object (the
protocol asyncio's tasks accept: ``_asyncio_future_blocking``, ``get_loop``,
``add_done_callback``, ``result``, ``cancel``), and the ``Resumer`` of its
client resumes every task whose ``Follow`` was settled within one callback
of the loop, each in the task's own context.

A ``Follow`` is awaited by one task only, once; cancelling that task cancels
it, and the task is resumed (with ``CancelledError``) through the same path.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable, Generator, Optional

__all__ = ["Follow", "Resumer"]

_PENDING, _SETTLED, _CANCELLED = range(3)


class Resumer:
    """Resumes the tasks of one event loop whose ``Follow`` was settled or
    cancelled: all that are due, in one callback of the loop."""

    __slots__ = ("_due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: list[Follow] = []

    def due(self, follow: Follow) -> None:
        if not self._due:
            self.loop.call_soon(self._resume)
        self._due.append(follow)

    def _resume(self) -> None:
        due, self._due = self._due, []
        for done, follow in enumerate(due, 1):
            wake, follow._wake = follow._wake, None
            if wake is None:  # settled before its task awaited it: nobody to resume
                continue
            try:
                follow._context.run(wake, follow)
            except (SystemExit, KeyboardInterrupt):
                for rest in due[done:]:  # still resumed, as the loop's own handles are
                    self.due(rest)
                raise
            except BaseException as exc:  # as the loop reports a failed callback
                self.loop.call_exception_handler(
                    {"message": "resuming a task that followed a get failed", "exception": exc})


class Follow:
    """Settled (``set_result``) when the flight its task follows lands."""

    __slots__ = ("_asyncio_future_blocking", "_cancel_message", "_context", "_resumer",
                 "_state", "_wake")

    def __init__(self, resumer: Resumer) -> None:
        self._resumer = resumer
        self._state = _PENDING
        self._wake: Optional[Callable[[Follow], object]] = None  # the awaiting task's
        self._context: contextvars.Context = _NO_CONTEXT
        self._cancel_message: Any = None
        self._asyncio_future_blocking = False  # set by ``__await__``, cleared by the task

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._resumer.loop

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def add_done_callback(self, fn: Callable[[Follow], object], *,
                          context: Optional[contextvars.Context] = None) -> None:
        """The awaiting task's wake-up (a task adds it as it starts to wait; added
        once done, it is called soon, as a future's would be)."""
        self._wake = fn
        self._context = contextvars.copy_context() if context is None else context
        if self._state != _PENDING:
            self._resumer.due(self)

    def result(self) -> None:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(*(() if self._cancel_message is None
                                           else (self._cancel_message,)))
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("the flight has not landed")

    def set_result(self, _result: None) -> None:
        if self._state == _PENDING:
            self._state = _SETTLED
            self._resumer.due(self)

    def cancel(self, msg: Any = None) -> bool:
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._cancel_message = msg
        self._resumer.due(self)
        return True

    def __await__(self) -> Generator[Follow, None, None]:
        if self._state == _PENDING:
            self._asyncio_future_blocking = True
            yield self  # the task adds its wake-up, and sleeps until resumed
        if self._state != _SETTLED:  # (a cancelled one was raised in the task already)
            self.result()


_NO_CONTEXT = contextvars.Context()
