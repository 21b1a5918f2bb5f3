"""This client's marker key: proof to other clients that its locks are alive.

The marker is ``valkeyid:`` + 24 random hex characters, created on first need
with ``SET id "" PX client_ttl`` and refreshed every ``client_ttl / 2`` by one
background keeper (a thread, or a task). A placeholder lock holds the marker's name, so a waiter
that finds the marker gone knows the holder died. After a lost connection
the marker is retired: a new one is made on next use, and the old one is
deleted (best effort) by the refresher through the ordinary command path,
never where frames are read, which must not wait for replies.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Callable, Optional, Protocol

from .._effects import Steps, command, roundtrip
from ..errors import ConnectionError, ResponseError, ValkeyError
from ..resp3 import Request, encode_command
from ..resp3._transport import Transport
from ._scripts import DELETE_IF_HOLDER

__all__ = ["PLACEHOLDER_PREFIX", "Keeper", "Marker", "StartKeeper"]

log = logging.getLogger("valkeyaside")

# Ids drawn, at most, for one whose cluster node is reachable.
_NEW_ID_DRAWS = 16

# Releases waiting for a connection, at most; beyond, placeholders just expire.
_MAX_PENDING = 1000

#: Placeholders (lock values) begin with this; the same prefix as Go's valkeyaside.
PLACEHOLDER_PREFIX = "valkeyid:"


def new_marker_id() -> str:
    return PLACEHOLDER_PREFIX + secrets.token_hex(12)


def _anywhere(key: str) -> bool:
    return True


class Keeper(Protocol):
    """A background loop (a thread, or a task) that runs ``Marker.keep`` rounds."""

    def poke(self) -> None:
        """Run a round now (from the loop's own thread, or the reader)."""

    def stop(self) -> None:
        """End the loop; a round in progress is abandoned or awaited."""


#: Starts a keeper that runs ``keep()`` rounds: each returns when the next is
#: due (``time.monotonic()``), or None to wait for a poke.
StartKeeper = Callable[[Callable[[], Steps[Optional[float]]]], Keeper]


class Marker:
    """Creates, refreshes, retires and deletes this client's marker key.

    One keeper per client (started on first need, stopped by ``close()``)
    refreshes the current marker every ``client_ttl / 2``, and does the
    clean-up that must not happen where frames are read: deleting retired
    markers and releasing locks whose release could not be sent.
    """

    def __init__(self, transport: Transport, client_ttl: float, start_keeper: StartKeeper) -> None:
        # A cluster says which node would store a key: a new marker's id is
        # drawn until its node is reachable (after its node's loss: rotation).
        self._reachable: Callable[[str], bool] = getattr(transport, "reachable", _anywhere)
        self._ttl_ms = max(1, int(client_ttl * 1000))
        self._interval = client_ttl / 2
        self._start = start_keeper
        self._init_state()
        transport.add_disconnect_handler(self._on_disconnect)
        transport.add_fork_handler(self._init_state)

    def _init_state(self) -> None:
        # Also run in a forked child: the parent's keeper thread was not copied,
        # and the parent keeps its own marker alive.
        self._lock = threading.Lock()
        self._id: Optional[str] = None
        self._link: Any = None  # the link that stored the marker
        self._next_refresh = 0.0
        self._retired: list[str] = []  # markers to delete
        self._releases: list[tuple[str, str]] = []  # (key, placeholder) to release
        self._keeper: Optional[Keeper] = None
        self._closed = False

    @property
    def keeper(self) -> Optional[Keeper]:
        """The keeper started for this marker, if any (stopped by ``close``)."""
        return self._keeper

    @property
    def current(self) -> Optional[str]:
        """The live marker id, if one was made since the last lost connection."""
        return self._id

    def ensure(self, timeout: Optional[float] = None) -> Steps[str]:
        """The marker id, creating the key (and starting the keeper) if there is none."""
        marker = self._id
        if marker is not None:
            return marker
        candidate = new_marker_id()
        for _ in range(_NEW_ID_DRAWS):
            if self._reachable(candidate):
                break
            candidate = new_marker_id()
        link = yield from self._store(candidate, timeout)
        with self._lock:
            winner = None if self._closed else self._id
            if not self._closed and winner is None:
                self._id = winner = candidate
                self._link = link
                self._next_refresh = time.monotonic() + self._interval
                self._start_keeper()
        if winner != candidate:  # closed meanwhile, or another caller's marker won
            yield from self._delete(candidate)
        if winner is None:
            raise ConnectionError("the client is closed")
        return winner

    def _store(self, marker: str, timeout: Optional[float] = None) -> Steps[Any]:
        """``SET marker "" PX client_ttl``: the link that stored it."""
        request = Request(encode_command("SET", marker, "", "PX", self._ttl_ms), key=marker)
        reply = (yield from roundtrip(request, timeout))[0]
        if type(reply) is ResponseError:
            raise reply
        return request.link

    def release_later(self, key: str, placeholder: str) -> None:
        """Have the keeper delete ``key`` if it still holds ``placeholder`` (after a
        lost connection, when the release could not be queued behind the lock)."""
        with self._lock:
            if self._closed or len(self._releases) >= _MAX_PENDING:
                return  # the placeholder expires with its ttl, the marker sooner
            self._releases.append((key, placeholder))
            self._start_keeper()
        self._poke()

    def _start_keeper(self) -> None:
        if self._keeper is None:  # caller holds _lock
            self._keeper = self._start(self.keep)

    def _poke(self) -> None:
        keeper = self._keeper
        if keeper is not None:
            keeper.poke()

    def keep(self) -> Steps[Optional[float]]:
        """One round of the keeper: clean up, refresh if due; when the next is due."""
        if self._closed:
            return None
        yield from self._clean_up()
        marker = self._id
        if marker is None:
            return None
        if time.monotonic() >= self._next_refresh:
            try:
                self._link = yield from self._store(marker)
                self._next_refresh = time.monotonic() + self._interval
            except ValkeyError as exc:
                self._next_refresh = time.monotonic() + min(1.0, self._interval)
                log.debug("marker refresh failed, retrying: %s", exc)
        return self._next_refresh

    def _clean_up(self) -> Steps[None]:
        with self._lock:
            retired, self._retired = self._retired, []
            releases, self._releases = self._releases, []
        try:
            while retired:
                yield from command("DEL", retired[-1], key=retired[-1])
                retired.pop()
            while releases:
                key, placeholder = releases[-1]
                yield from DELETE_IF_HOLDER.run([key], [placeholder])
                releases.pop()
        except ValkeyError as exc:  # try again on the next round
            log.debug("marker clean-up failed, retrying: %s", exc)
            self._requeue(retired, releases)
            self._next_refresh = min(self._next_refresh, time.monotonic() + 1.0)
        except BaseException:  # abandoned (the client closes): close() deletes the rest
            self._requeue(retired, releases)
            raise

    def _requeue(self, retired: list[str], releases: list[tuple[str, str]]) -> None:
        with self._lock:
            self._retired[:0] = retired
            self._releases[:0] = releases

    def _delete(self, marker: str) -> Steps[None]:
        try:
            yield from command("DEL", marker, key=marker)
        except ValkeyError as exc:  # it expires within client_ttl anyway
            log.debug("could not delete a marker: %s", exc)

    def _on_disconnect(self, cause: BaseException,
                       still_good: Optional[Callable[[Any, str], bool]] = None) -> None:
        # Where frames are read: no I/O here; the keeper deletes the old marker.
        # On a cluster only the loss of the marker's own node (or slot) retires it.
        with self._lock:
            marker = self._id
            if marker is not None and still_good is not None and still_good(self._link, marker):
                return
            if self._id is not None:
                self._retired.append(self._id)
                self._id = None
        self._poke()

    def close(self) -> Steps[None]:
        """Stop the keeper and delete the marker (and any retired one)."""
        with self._lock:
            self._closed = True
            if self._id is not None:
                self._retired.append(self._id)
                self._id = None
            keeper = self._keeper
        if keeper is not None:
            keeper.stop()
        retired, self._retired = self._retired, []
        for marker in retired:
            yield from self._delete(marker)
