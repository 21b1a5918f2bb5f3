"""This client's marker key: proof to other clients that its locks are alive.

The marker is ``valkeyid:`` + 24 random hex characters, created on first need
with ``SET id "" PX client_ttl`` and refreshed every ``client_ttl / 2`` by one
background thread. A placeholder lock holds the marker's name, so a waiter
that finds the marker gone knows the holder died. After a lost connection
the marker is retired: a new one is made on next use, and the old one is
deleted (best effort) by the refresher through the ordinary command path,
never from the reader thread, which must not wait for replies.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Optional

from ..errors import ConnectionError, ValkeyError
from ..resp3 import Connection
from ._scripts import DELETE_IF_HOLDER

__all__ = ["PLACEHOLDER_PREFIX", "Marker"]

log = logging.getLogger("valkeyaside")

# Releases waiting for a connection, at most; beyond, placeholders just expire.
_MAX_PENDING = 1000

#: Placeholders (lock values) begin with this; the same prefix as Go's valkeyaside.
PLACEHOLDER_PREFIX = "valkeyid:"


def new_marker_id() -> str:
    return PLACEHOLDER_PREFIX + secrets.token_hex(12)


class Marker:
    """Creates, refreshes, retires and deletes this client's marker key.

    One keeper thread per client (started on first need, stopped by
    ``close()``) refreshes the current marker every ``client_ttl / 2``, and
    does the clean-up that must not happen on the reader thread: deleting
    retired markers and releasing locks whose release could not be sent.
    """

    def __init__(self, connection: Connection, client_ttl: float) -> None:
        self._connection = connection
        self._ttl_ms = max(1, int(client_ttl * 1000))
        self._interval = client_ttl / 2
        self._init_state()
        connection.add_disconnect_handler(self._on_disconnect)
        connection.add_fork_handler(self._init_state)

    def _init_state(self) -> None:
        # Also run in a forked child: the parent's keeper thread was not copied,
        # and the parent keeps its own marker alive.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._id: Optional[str] = None
        self._next_refresh = 0.0
        self._retired: list[str] = []  # markers to delete
        self._releases: list[tuple[str, str]] = []  # (key, placeholder) to release
        self._keeper: Optional[threading.Thread] = None
        self._closed = False

    def ensure(self, timeout: Optional[float] = None) -> str:
        """The marker id, creating the key (and starting the keeper) if there is none."""
        marker = self._id
        if marker is not None:
            return marker
        candidate = new_marker_id()
        self._connection.call("SET", candidate, "", "PX", self._ttl_ms, timeout=timeout)
        with self._lock:
            winner = None if self._closed else self._id
            if not self._closed and winner is None:
                self._id = winner = candidate
                self._next_refresh = time.monotonic() + self._interval
                self._start_keeper()
        if winner != candidate:  # closed meanwhile, or another thread's marker won
            self._delete(candidate)
        if winner is None:
            raise ConnectionError("the client is closed")
        return winner

    def release_later(self, key: str, placeholder: str) -> None:
        """Have the keeper delete ``key`` if it still holds ``placeholder`` (after a
        lost connection, when the release could not be queued behind the lock)."""
        with self._lock:
            if self._closed or len(self._releases) >= _MAX_PENDING:
                return  # the placeholder expires with its ttl, the marker sooner
            self._releases.append((key, placeholder))
            self._start_keeper()
        self._wake.set()

    def _start_keeper(self) -> None:
        if self._keeper is None:  # caller holds _lock
            self._keeper = threading.Thread(
                target=self._keep, name="valkeyaside-marker", daemon=True
            )
            self._keeper.start()

    def _keep(self) -> None:
        while True:
            marker = self._id
            wait = None if marker is None else max(0.0, self._next_refresh - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            if self._closed:
                return
            self._clean_up()
            marker = self._id
            if marker is not None and time.monotonic() >= self._next_refresh:
                try:
                    self._connection.call("SET", marker, "", "PX", self._ttl_ms)
                    self._next_refresh = time.monotonic() + self._interval
                except ValkeyError as exc:
                    self._next_refresh = time.monotonic() + min(1.0, self._interval)
                    log.debug("marker refresh failed, retrying: %s", exc)

    def _clean_up(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
            releases, self._releases = self._releases, []
        try:
            while retired:
                self._connection.call("DEL", retired[-1])
                retired.pop()
            while releases:
                key, placeholder = releases[-1]
                DELETE_IF_HOLDER.run(self._connection, [key], [placeholder])
                releases.pop()
        except ValkeyError as exc:  # try again on the next round
            log.debug("marker clean-up failed, retrying: %s", exc)
            with self._lock:
                self._retired[:0] = retired
                self._releases[:0] = releases
            self._next_refresh = min(self._next_refresh, time.monotonic() + 1.0)

    def _delete(self, marker: str) -> None:
        try:
            self._connection.call("DEL", marker)
        except ValkeyError as exc:  # it expires within client_ttl anyway
            log.debug("could not delete a marker: %s", exc)

    def _on_disconnect(self, cause: BaseException) -> None:
        # On the reader thread: no I/O here; the keeper deletes the old marker.
        with self._lock:
            if self._id is not None:
                self._retired.append(self._id)
                self._id = None
        self._wake.set()

    def close(self) -> None:
        """Stop the keeper and delete the marker (and any retired one)."""
        with self._lock:
            self._closed = True
            if self._id is not None:
                self._retired.append(self._id)
                self._id = None
            keeper = self._keeper
        self._wake.set()
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(5)
        for marker in self._retired:
            self._delete(marker)
        self._retired = []
