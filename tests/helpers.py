"""What the client tests share: loaders that count and hold, background calls,
polling for state that has no event, the server's command counts.

The fixtures that make clients (``make_client``, ``client``, ``lua``, ``raw``)
are in conftest.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from server import RawConnection

from valkeyaside import Client

__all__ = ["Background", "Loader", "MakeClient", "command_calls", "diff", "disconnected",
           "wait_until", "waiting"]

#: ``make_client(url=None, **options)``: a client of the front end under test.
MakeClient = Callable[..., Any]


class Loader:
    """A loader that counts its calls; with a gate, it holds the lock until the gate opens."""

    def __init__(self, value: Any = "loaded", gate: Optional[threading.Event] = None) -> None:
        self.value = value
        self.gate = gate
        self.calls = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Any:
        with self._lock:
            self.calls += 1
        self.started.set()
        if self.gate is not None and not self.gate.wait(20):
            raise AssertionError("the gate of the loader was never opened")
        return self.value


class Background:
    """Run a call in a thread; ``result()`` returns its value or raises its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._call = call
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:
            self._error = exc
        self.finished_at = time.monotonic()

    def result(self, timeout: float = 10.0) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the call did not return within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; return the seconds it took. For state with no event
    to wait on (server-side expiry, a client's counters)."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)
    return time.monotonic() - start


def waiting(client: Client, count: int = 1, timeout: float = 10.0) -> None:
    """Return once ``client`` has parked ``count`` waits on a placeholder."""
    wait_until(
        lambda: client.stats()["lock_waits"] >= count,
        timeout,
        f"{count} lock wait(s) on {client!r}",
    )


def disconnected(client: Client) -> threading.Event:
    """An event set once ``client`` has seen its connection drop (after the cache flush)."""
    lost = threading.Event()
    client.connection.add_disconnect_handler(lambda _cause: lost.set())
    return lost


def command_calls(raw: RawConnection) -> dict[str, int]:
    """calls per command, from INFO commandstats."""
    info = raw.execute("INFO", "commandstats").decode()
    calls = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            stats = dict(field.split("=", 1) for field in fields.split(","))
            calls[name[len("cmdstat_") :]] = int(stats["calls"])
    return calls


def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two ``command_calls``, without the second INFO."""
    changed = {name: calls - before.get(name, 0) for name, calls in after.items()}
    changed["info"] -= 1
    return {name: calls for name, calls in changed.items() if calls}
