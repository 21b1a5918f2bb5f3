"""Waiting for replies: pipe wakers, their timeouts, stray wakes, threads that
come and go, and fork. The requests here are never written, so nothing but
the waker can end a wait."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest
from helpers import wait_until

from valkeyaside.errors import ConnectionError, TimeoutError
from valkeyaside.resp3 import _wakers
from valkeyaside.resp3._connection import Request
from valkeyaside.resp3._wakers import current_waker

SLACK = 2.0  # on a shared machine a thread may be scheduled late


def _completer(request: Request, after: threading.Event) -> threading.Thread:
    def complete() -> None:
        after.wait(10)
        request.replies.append(b"reply")
        request.complete()

    thread = threading.Thread(target=complete, daemon=True)
    thread.start()
    return thread


def _waiting(request: Request, count: int = 1) -> threading.Event:
    """Set once ``count`` waiters have registered to sleep on the request.

    Registering has no event of its own to wait on, so this looks every
    millisecond (for 10 s at most).
    """
    ready = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 10
        while len(request._sleepers) < count and time.monotonic() < deadline:
            time.sleep(0.001)
        ready.set()

    threading.Thread(target=watch, daemon=True).start()
    return ready


def test_a_sleeping_waiter_is_woken_by_completion() -> None:
    request = Request(b"")
    _completer(request, _waiting(request))
    assert request.wait(10) == [b"reply"]


def test_every_waiter_of_one_request_wakes_one_after_another() -> None:
    request = Request(b"")
    results: list[list[bytes]] = []

    def wait() -> None:
        results.append(request.wait(10))

    waiters = [threading.Thread(target=wait) for _ in range(8)]
    for thread in waiters:
        thread.start()
    _completer(request, _waiting(request, 8)).join(10)
    for thread in waiters:
        thread.join(10)
    assert results == [[b"reply"]] * 8


def test_a_failed_request_raises_its_error_in_the_waiter() -> None:
    request = Request(b"")
    ready = _waiting(request)

    def fail() -> None:
        ready.wait(10)
        request.fail(ConnectionError("lost"))

    threading.Thread(target=fail, daemon=True).start()
    with pytest.raises(ConnectionError, match="lost"):
        request.wait(10)


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_a_wait_times_out_after_its_timeout_not_before(timeout: float) -> None:
    request = Request(b"")
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        request.wait(timeout)
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < timeout + SLACK
    assert request._sleepers == [], "a waiter that gave up is not woken later"


def test_stray_wakes_do_not_end_a_later_wait() -> None:
    waker = current_waker()
    for _ in range(1000):  # more than one read drains
        waker.wake()
    request = Request(b"")
    _completer(request, _waiting(request))
    assert request.wait(10) == [b"reply"]
    with pytest.raises(TimeoutError):
        Request(b"").wait(0.05)  # the strays were drained: a wait still lasts


def test_a_wait_without_timeout_needs_no_watchdog() -> None:
    request = Request(b"")
    _completer(request, _waiting(request))
    assert request.wait(None) == [b"reply"]


def test_the_watchdog_stops_when_no_wait_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wakers, "_IDLE_TICKS", 4)
    with pytest.raises(TimeoutError):
        Request(b"").wait(0.01)

    def watchdogs() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "valkeyaside-timeouts"]

    for thread in watchdogs():
        thread.join(5)
    assert not watchdogs()
    assert not _wakers._watch.running
    with pytest.raises(TimeoutError):  # and starts again when needed
        Request(b"").wait(0.01)


@pytest.mark.skipif(os.name != "posix", reason="tells a pipe by its inode")
def test_threads_that_come_and_go_leave_no_descriptors() -> None:
    # Each thread's waker (its pipe) is closed when the thread ends. The pipes
    # of these threads are what is looked at (still open: the same descriptor,
    # the same pipe), not the process's count of descriptors, which threads
    # left running by other tests change.
    made: list[tuple[int, int]] = []  # (descriptor, inode) of each waker's pipe

    def one_wait() -> None:
        waker = current_waker()
        made.append((waker._read_fd, os.fstat(waker._read_fd).st_ino))
        request = Request(b"")
        _completer(request, _waiting(request))
        request.wait(10)

    def batch() -> None:
        threads = [threading.Thread(target=one_wait) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        gc.collect()

    def still_open(fd: int, inode: int) -> bool:
        try:
            return os.fstat(fd).st_ino == inode
        except OSError:
            return False

    for _ in range(5):
        batch()
    assert len(made) == 250
    # Every pipe closes. Not necessarily by the time join returns: a thread's
    # locals (its waker among them) may be cleared a moment after (three of 250
    # were still open then, once, on Python 3.12), so the test waits for that,
    # with a bound; a waker that never closes fails it.
    wait_until(lambda: not any(still_open(fd, inode) for fd, inode in made), 5 * SLACK,
               "every thread's waker closed")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads running
def test_a_forked_child_sleeps_on_a_pipe_of_its_own() -> None:
    parent = current_waker()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            child = current_waker()
            ok = child is not parent and parent._write_fd == -1
            parent.wake()  # closed: harmless
            request = Request(b"")
            _completer(request, _waiting(request))
            ok = ok and request.wait(10) == [b"reply"]
            os.write(write_fd, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    assert os.read(read_fd, 2) == b"ok"
    os.close(read_fd)
    assert status == 0
    request = Request(b"")  # the parent's own waker still works
    _completer(request, _waiting(request))
    assert request.wait(10) == [b"reply"]
