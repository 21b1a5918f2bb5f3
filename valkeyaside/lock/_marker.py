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
from typing import Optional

from ..errors import ConnectionError, ValkeyError
from ..resp3 import Connection

__all__ = ["PLACEHOLDER_PREFIX", "Marker"]

log = logging.getLogger("valkeyaside")

#: Placeholders (lock values) begin with this; the same prefix as Go's valkeyaside.
PLACEHOLDER_PREFIX = "valkeyid:"


def new_marker_id() -> str:
    return PLACEHOLDER_PREFIX + secrets.token_hex(12)


class Marker:
    """Creates, refreshes, retires and deletes this client's marker key."""

    def __init__(self, connection: Connection, client_ttl: float) -> None:
        self._connection = connection
        self._ttl_ms = max(1, int(client_ttl * 1000))
        self._interval = client_ttl / 2
        self._lock = threading.Lock()
        self._id: Optional[str] = None
        self._stop = threading.Event()
        self._refresher: Optional[threading.Thread] = None
        connection.add_disconnect_handler(self._on_disconnect)
        connection.add_fork_handler(self._after_fork)

    @property
    def current(self) -> Optional[str]:
        """The live marker id, or None before first use and after a lost connection."""
        return self._id

    def ensure(self, timeout: Optional[float] = None) -> str:
        """The marker id, creating the key (and its refresher) if there is none."""
        marker = self._id
        if marker is not None:
            return marker
        candidate = new_marker_id()
        self._connection.call("SET", candidate, "", "PX", self._ttl_ms, timeout=timeout)
        with self._lock:
            closed = self._stop.is_set()
            winner = self._id
            if not closed and winner is None:
                self._id = winner = candidate
                self._refresher = threading.Thread(
                    target=self._refresh, args=(candidate,), name="valkeyaside-marker",
                    daemon=True,
                )
                self._refresher.start()
        if winner != candidate:  # closed meanwhile, or another thread's marker won
            self._delete(candidate)
        if winner is None:
            raise ConnectionError("the client is closed")
        return winner

    def _refresh(self, marker: str) -> None:
        while not self._stop.wait(self._interval):
            if self._id != marker:
                break  # retired after a lost connection
            try:
                self._connection.call("SET", marker, "", "PX", self._ttl_ms)
            except ValkeyError as exc:
                log.debug("marker refresh failed, retrying in %.1f s: %s", self._interval, exc)
        if self._id != marker:
            self._delete(marker)

    def _delete(self, marker: str) -> None:
        try:
            self._connection.call("DEL", marker)
        except ValkeyError as exc:  # it expires within client_ttl anyway
            log.debug("could not delete retired marker: %s", exc)

    def _after_fork(self) -> None:
        # The refresher thread was not copied; the parent keeps refreshing its marker.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher = None
        self._id = None

    def _on_disconnect(self, cause: BaseException) -> None:
        # On the reader thread: only forget; the refresher notices and deletes it.
        with self._lock:
            self._id = None

    def close(self) -> None:
        """Stop the refresher and delete the marker."""
        with self._lock:
            self._stop.set()
            marker, self._id = self._id, None
            refresher = self._refresher
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(5)
        if marker is not None:
            self._delete(marker)
