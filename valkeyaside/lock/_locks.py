"""Placeholder locks: take a missing key, fill it only while holding it, release it."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Optional, TypeVar

from .._effects import Receive, Steps, keyed, receive_all, send_all
from ..errors import ResponseError
from ..resp3 import Arg, Request, encode_command
from ..resp3._encoder import encode_args
from ..resp3._transport import Transport
from ._marker import Marker
from ._scripts import ACQUIRE, DELETE_IF_HOLDER, SET_IF_HOLDER, SET_IF_HOLDER_MANY

__all__ = ["Locks"]

log = logging.getLogger("valkeyaside")
T = TypeVar("T")

#: ``SET ... NX GET`` came with Redis 7.0; older servers lock with the Lua script.
_SET_NX_GET_SINCE = (7, 0)
#: ``SET key value IFEQ old`` came with Valkey 8.1: many keys filled without Lua.
_SET_IFEQ_SINCE = (8, 1)
_SET_NO_KEY = b"*7\r\n$3\r\nSET\r\n$0\r\n\r\n"  # how the lock command begins, keyless
#: How a fill begins: EVALSHA of the fill script, on one key (its name follows).
_FILL = b"*7\r\n" + encode_args("EVALSHA", SET_IF_HOLDER.sha, 1)
#: The most keys one call of the many-key fill script stores: a bound on how
#: long the script holds the server (about a microsecond a key).
FILL_CHUNK = 1000
#: The most locks one transaction of many keys takes, for the same reason.
LOCK_CHUNK = 1000
_MULTI = encode_command("MULTI")
_EXEC = encode_command("EXEC")


def _chunks(items: list[T], size: int) -> list[list[T]]:
    """``items`` in runs of at most ``size``, in order."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _transactions(payloads: list[bytes], timeout: Optional[float]) -> Steps[list[Any]]:
    """Run the commands in ``MULTI``/``EXEC`` transactions of up to ``LOCK_CHUNK``,
    all in one write: each command's reply, error replies as values (a command
    refused as it was queued gets its refusal; the others, the ``EXECABORT``).

    Why a transaction: a lock invalidates the read just made of its key, and
    the server sends this client the invalidations of a transaction together,
    after it, instead of one between each pair of replies: a cold ``get_many``
    of 100 keys then costs the server about 0.7x the CPU (and takes 0.87x the
    time), and the client drops the keys in one pass.
    """
    chunks = _chunks(payloads, LOCK_CHUNK)
    requests = [Request(b"".join([_MULTI, *chunk, _EXEC]), len(chunk) + 2) for chunk in chunks]
    yield from send_all(requests, timeout)
    replies: list[Any] = []
    for request, chunk in zip(requests, chunks):
        replies += _ran((yield from receive_all([request], timeout)), len(chunk))
    return replies


def _ran(answer: list[Any], count: int) -> list[Any]:
    """Each command's reply from a transaction's answer (``MULTI``'s, each command's
    ``QUEUED``, ``EXEC``'s): error replies as values; a command refused as it
    was queued gets its refusal, the others the ``EXECABORT``."""
    result = answer[-1]
    if type(result) is list and len(result) == count:
        return result
    error = result if type(result) is ResponseError else ResponseError(
        f"ERR the transaction did not run: {result!r}")
    return [reply if type(reply) is ResponseError else error for reply in answer[1:-1]]


def _send_with(requests: list[Request], behind: Optional[Request],
               unsent: Callable[[], None]) -> Steps[None]:
    """Write ``requests`` and ``behind`` (if any) in one write, and await ``behind``
    (see ``Locks.fill_many``); ``unsent`` runs when the write could not be made."""
    try:
        yield from send_all(requests if behind is None else [*requests, behind])
    except BaseException:
        unsent()
        raise
    if behind is not None:  # on a cluster a batch goes part by part: await those
        for part in behind.parts_or_self():
            if not part.done:  # a done one's error would be ignored anyway
                with contextlib.suppress(Exception):
                    yield Receive(part, None)


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if type(reply) is ResponseError:
            raise reply


class _Release(Request):
    """A queued delete-if-holder; if its link dies first, the keeper sends it."""

    __slots__ = ("_key", "_marker", "_placeholder")

    def __init__(self, key: str, placeholder: str, marker: Marker) -> None:
        super().__init__(encode_command("EVAL", DELETE_IF_HOLDER.source, 1, key, placeholder),
                         key=key)
        self._key = key
        self._placeholder = placeholder
        self._marker = marker

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self._marker.release_later(self._key, self._placeholder)


class Locks:
    """The lock operations of ``get``, over one connection.

    ``use_lua_lock``: True or False force the mode; None chooses it from the
    server's version (HELLO), and switches to Lua for good when a server that
    hid its version refuses ``SET ... NX GET`` as a syntax error.
    """

    def __init__(self, transport: Transport, marker: Marker,
                 use_lua_lock: Optional[bool], sharded: bool = False) -> None:
        self._transport = transport
        #: Keys live on several nodes: each key's command is a request of its own.
        self._sharded = sharded
        self.marker = marker
        self.use_lua_lock = use_lua_lock
        self._refused_set_nx_get = False
        self._refused_ifeq = False
        # Every new connection knows the fill script at once: a fill answered
        # NOSCRIPT is retried as EVAL, after the read written behind it (see
        # ``fill_many``), which would then find the placeholder, not the value.
        for script in (SET_IF_HOLDER, SET_IF_HOLDER_MANY):
            transport.add_connect_command("SCRIPT", "LOAD", script.source, optional=True)

    @property
    def lua(self) -> bool:
        """Whether the next lock is taken with the Lua script."""
        if self.use_lua_lock is not None:
            return self.use_lua_lock
        if self._refused_set_nx_get:
            return True
        version = self._transport.server_version
        return bool(version) and version < _SET_NX_GET_SINCE  # type: ignore[operator]

    @property
    def ifeq(self) -> bool:
        """Whether a fill of many keys on one server is a ``SET ... IFEQ`` per key
        (Valkey 8.1+), rather than a call of the many-key script."""
        if self._refused_ifeq or self._transport.server_name != "valkey":
            return False
        version = self._transport.server_version
        return bool(version) and version >= _SET_IFEQ_SINCE  # type: ignore[operator]

    def acquire(self, key: str, marker: str, ttl_ms: int,
                timeout: Optional[float]) -> Steps[object]:
        """Try to lock ``key`` with ``marker`` (from ``self.marker.ensure()``): None
        when we hold it, else the key's current value."""
        return (yield from self.acquire_many([key], marker, ttl_ms, timeout))[0]

    def acquire_many(self, keys: list[str], marker: str, ttl_ms: int,
                     timeout: Optional[float]) -> Steps[list[object]]:
        """Try to lock each key, all in one write (on one server, several keys as
        one transaction: see ``_transactions``): per key, None when we hold it,
        else its current value."""
        try:
            if not self.lua:
                # Only the key differs: encode the rest once.
                rest = encode_command("SET", "", marker, "NX", "GET", "PX", ttl_ms)[
                    len(_SET_NO_KEY):]
                payloads = [b"*7\r\n$3\r\nSET\r\n$%d\r\n%s\r\n%s" % (len(data), data, rest)
                            for data in map(str.encode, keys)]
                if self._sharded or len(keys) == 1:
                    requests = keyed(payloads, keys, self._sharded)
                    yield from send_all(requests, timeout)
                    replies = yield from receive_all(requests, timeout)
                else:
                    replies = yield from _transactions(payloads, timeout)
                refused = [reply for reply in replies if type(reply) is ResponseError]
                if not refused:
                    return replies
                if self.use_lua_lock is not None or "syntax" not in str(refused[0]).lower():
                    raise refused[0]
                self._refused_set_nx_get = True
                log.warning("the server refused SET NX GET (%s): locking with Lua from now "
                            "on", refused[0])
            replies = yield from ACQUIRE.run_many([([key], [marker, ttl_ms]) for key in keys],
                                                  timeout)
            for reply in replies:
                if type(reply) is ResponseError:
                    raise reply
        except BaseException:
            # Timed out, failed or abandoned: a lock command may still run, so
            # queue the releases behind them on the same connection; do not wait.
            for key in keys:
                self.release_soon(key, marker)
            raise
        return [None if reply is False else reply for reply in replies]  # Lua false: nil

    def release_soon(self, key: str, placeholder: str) -> None:
        """Queue a delete-if-holder on the live connection, without waiting (best effort).

        With no live connection there is nothing to queue behind: the marker's
        keeper sends the release once it can.
        """
        request = _Release(key, placeholder, self.marker)
        if not self._transport.submit_nowait(request):
            self.marker.release_later(key, placeholder)

    def fill_many(self, fills: list[tuple[str, bytes, int]], marker: str,
                  behind: Optional[Request] = None,
                  unsent: Callable[[], None] = lambda: None) -> Steps[list[bool]]:
        """Store each ``(key, value, ttl_ms)`` only while the key still holds our
        placeholder, all in one write: per key, whether it was stored. An error
        reply is raised once all are in. ``behind``: a request written right
        after the fills, in the same write; ``unsent`` runs when that write
        could not be made. It is awaited first (its errors are its own, not the
        fill's): answered after the fills, it then completes before this caller
        is woken, so whatever its completion wakes does not wait for this
        caller to run first."""
        if not self._sharded and len(fills) > 1 and self.ifeq:
            stored = yield from self._fill_ifeq(fills, marker, behind, unsent)
            if stored is not None:
                return stored
            behind = None  # it went out behind the refused fills
        if self._sharded or len(fills) == 1:  # a call per key, routed by it
            script = SET_IF_HOLDER
            calls: list[tuple[list[Arg], list[Arg]]] = [
                ([key], [marker, value, ttl_ms]) for key, value, ttl_ms in fills]
            requests = keyed(_fill_payloads(fills, marker), [key for key, _, _ in fills],
                             self._sharded)
        else:  # one server: a call per chunk of keys
            script = SET_IF_HOLDER_MANY
            chunks = _chunks(fills, FILL_CHUNK)
            calls = [([key for key, _, _ in chunk],
                      [marker, *(arg for _, value, ttl_ms in chunk for arg in (value, ttl_ms))])
                     for chunk in chunks]
            requests = [Request(_fill_many_payload(chunk, marker)) for chunk in chunks]
        yield from _send_with(requests, behind, unsent)
        replies = yield from script.replies(calls, requests)
        _raise_first_error(replies)
        if script is SET_IF_HOLDER:
            return [reply == "OK" for reply in replies]
        return [flag == 1 for flags in replies for flag in flags]

    def transaction_fill(self, fills: list[tuple[str, bytes, int]],
                         marker: str) -> Optional[bytes]:
        """The fills as commands for a transaction of ``fill_in``, when this
        server takes them so: one server, ``SET ... IFEQ`` (a script's own
        ``GET`` would be tracked inside it, and its ``SET`` then invalidate
        that), at most ``FILL_CHUNK`` keys (a bound on how long one transaction
        holds the server). Else None: ``fill_many``."""
        if self._sharded or not 1 < len(fills) <= FILL_CHUNK or not self.ifeq:
            return None
        return b"".join(_ifeq_payloads(fills, marker))

    def fill_in(self, transaction: Request, fills: list[tuple[str, bytes, int]], marker: str,
                unsent: Callable[[], None]) -> Steps[list[bool]]:
        """``fill_many`` with the fills written inside ``transaction`` (a
        ``FilledRead`` of ``transaction_fill``'s commands): one write, one reply;
        per key, whether it was stored. A server that refuses ``IFEQ`` (a proxy
        hid its version) gets the fills again with the script."""
        yield from _send_with([transaction], None, unsent)
        answer = yield from receive_all([transaction])
        replies = _ran(answer[1:], len(fills) + 1)[:-1]  # after CLIENT CACHING; not EXISTS
        if self._refused(replies):
            return (yield from self.fill_many(fills, marker))
        _raise_first_error(replies)
        return [reply == "OK" for reply in replies]

    def _refused(self, replies: list[Any]) -> bool:
        """Whether the server refused ``SET ... IFEQ`` among these replies of fills (a
        proxy hid an older server's version): fill with the script from then on."""
        refused = [reply for reply in replies if type(reply) is ResponseError]
        if refused and "syntax" in str(refused[0]).lower():
            self._refused_ifeq = True
            log.warning("the server refused SET IFEQ (%s): filling with Lua from now on",
                        refused[0])
            return True
        return False

    def _fill_ifeq(self, fills: list[tuple[str, bytes, int]], marker: str,
                   behind: Optional[Request],
                   unsent: Callable[[], None]) -> Steps[Optional[list[bool]]]:
        """``fill_many`` as ``SET key value IFEQ marker PX ttl_ms`` per key, in one
        request: for 100 keys, about 0.85x of the server's CPU that the script
        costs (0.92x of a cold ``get_many``'s time).
        None when the server refused the option (a proxy hid an older server's
        version): fill with the script from then on."""
        requests = [Request(b"".join(_ifeq_payloads(fills, marker)), len(fills))]
        yield from _send_with(requests, behind, unsent)
        replies = yield from receive_all(requests)
        if self._refused(replies):
            return None
        _raise_first_error(replies)
        return [reply == "OK" for reply in replies]

    def release_many(self, keys: list[str], placeholder: str) -> Steps[None]:
        """``release`` each key, all in one write; an error reply is raised."""
        _raise_first_error((yield from DELETE_IF_HOLDER.run_many(
            [([key], [placeholder]) for key in keys])))

    def release(self, key: str, placeholder: str, timeout: Optional[float]) -> Steps[bool]:
        """Delete ``key`` only while it still holds ``placeholder``."""
        return bool((yield from DELETE_IF_HOLDER.run([key], [placeholder], timeout)) == 1)


def _fill_payloads(fills: list[tuple[str, bytes, int]], marker: str) -> list[bytes]:
    """The fill script's ``EVALSHA`` for each ``(key, value, ttl_ms)``, encoded as
    ``encode_command`` would: what the fills share (the script, the marker,
    usually the TTL) encoded once."""
    marker_arg = encode_args(marker)
    ttl_args: dict[int, bytes] = {}
    payloads = []
    for key, value, ttl_ms in fills:
        ttl_arg = ttl_args.get(ttl_ms)
        if ttl_arg is None:
            ttl_arg = ttl_args[ttl_ms] = encode_args(ttl_ms)
        data = key.encode()
        payloads.append(b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n%s" % (
            _FILL, len(data), data, marker_arg, len(value), value, ttl_arg))
    return payloads


def _ifeq_payloads(fills: list[tuple[str, bytes, int]], marker: str) -> list[bytes]:
    """``SET key value IFEQ marker PX ttl_ms`` for each ``(key, value, ttl_ms)``,
    encoded as ``encode_command`` would, with what follows the value (the same
    for every key of one TTL) encoded once per TTL."""
    tails: dict[int, bytes] = {}
    payloads = []
    for key, value, ttl_ms in fills:
        tail = tails.get(ttl_ms)
        if tail is None:
            tail = tails[ttl_ms] = encode_args("IFEQ", marker, "PX", ttl_ms)
        data = key.encode()
        payloads.append(b"*7\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (
            len(data), data, len(value), value, tail))
    return payloads


def _fill_many_payload(fills: list[tuple[str, bytes, int]], marker: str) -> bytes:
    """The many-key fill script's ``EVALSHA`` for ``fills``, encoded as
    ``encode_command`` would (keys first, then the marker and each value and
    TTL), with the marker and each distinct TTL encoded once."""
    ttl_args: dict[int, bytes] = {}
    keys = []
    args = [encode_args(marker)]
    for key, value, ttl_ms in fills:
        data = key.encode()
        keys.append(b"$%d\r\n%s\r\n" % (len(data), data))
        ttl_arg = ttl_args.get(ttl_ms)
        if ttl_arg is None:
            ttl_arg = ttl_args[ttl_ms] = encode_args(ttl_ms)
        args.append(b"$%d\r\n%s\r\n%s" % (len(value), value, ttl_arg))
    count = len(fills)
    return b"".join([b"*%d\r\n" % (4 + 3 * count),
                     encode_args("EVALSHA", SET_IF_HOLDER_MANY.sha, count), *keys, *args])
