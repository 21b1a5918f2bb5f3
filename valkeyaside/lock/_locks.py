"""Placeholder locks: take a missing key, fill it only while holding it, release it."""

from __future__ import annotations

import contextlib
from typing import Optional

from ..errors import ValkeyError
from ..resp3 import Connection, Request, encode_command
from ._marker import Marker
from ._scripts import ACQUIRE, DELETE_IF_HOLDER, SET_IF_HOLDER

__all__ = ["Locks"]


class Locks:
    """The lock operations of ``get``, over one connection."""

    def __init__(self, connection: Connection, client_ttl: float, use_lua_lock: bool) -> None:
        self._connection = connection
        self.marker = Marker(connection, client_ttl)
        self.use_lua_lock = use_lua_lock

    def acquire(self, key: str, marker: str, ttl_ms: int, timeout: Optional[float]) -> object:
        """Try to lock ``key`` with ``marker`` (from ``self.marker.ensure()``): None
        when we hold it, else the key's current value."""
        try:
            if self.use_lua_lock:
                reply = ACQUIRE.run(self._connection, [key], [marker, ttl_ms], timeout)
                if reply is False:  # Lua false, as a RESP3 client may see it
                    reply = None
            else:
                reply = self._connection.call(
                    "SET", key, marker, "NX", "GET", "PX", ttl_ms, timeout=timeout
                )
        except BaseException:
            # Timed out or interrupted: the lock command may still run, so queue
            # the release behind it on the same connection and do not wait.
            self.release_soon(key, marker)
            raise
        return reply

    def release_soon(self, key: str, placeholder: str) -> None:
        """Queue a delete-if-holder on the live connection, without waiting (best effort).

        With no live connection there is nothing to queue behind: the marker's
        keeper sends the release once it can.
        """
        if not self._connection.connected:
            self.marker.release_later(key, placeholder)
            return
        request = Request(encode_command("EVAL", DELETE_IF_HOLDER.source, 1, key, placeholder))
        with contextlib.suppress(ValkeyError):
            self._connection.submit(request)

    def fill(self, key: str, marker: str, value: bytes, ttl_ms: int,
             timeout: Optional[float]) -> bool:
        """Store ``value`` only while ``key`` still holds our placeholder."""
        reply = SET_IF_HOLDER.run(self._connection, [key], [marker, value, ttl_ms], timeout)
        return bool(reply == "OK")

    def release(self, key: str, placeholder: str, timeout: Optional[float]) -> bool:
        """Delete ``key`` only while it still holds ``placeholder``."""
        return bool(DELETE_IF_HOLDER.run(self._connection, [key], [placeholder], timeout) == 1)

    def close(self) -> None:
        self.marker.close()
