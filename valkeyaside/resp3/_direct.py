"""Sockets that a calling thread uses alone, for one read-only command at a time.

A shared ``Connection`` carries every thread's commands over one socket that
a reader thread reads, so each reply costs two thread hand-overs: the reader
wakes, then it wakes the caller. When several threads call over a cluster's
several links, a reply mostly wakes one caller, and those hand-overs become
most of what a command costs (README, "Valkey Cluster"). A ``DirectPool``
keeps up to ``size`` plain sockets to one server: a thread takes an idle one,
writes its command, reads the reply itself and puts the socket back. It never
waits for a socket: when all are busy, the command goes to the shared link.

Only commands that change nothing come here (``DIRECT_COMMANDS``), which is
what makes the shortcut safe:

- the sockets have no tracking, and these replies are never kept locally;
- a caller's own writes went over the shared link and were answered before
  it asks anything else (every call waits for its reply), so the server has
  applied them;
- whatever goes wrong before the reply is read (no socket could be made, the
  server closed an idle one) is answered with ``MISSED``, and the command is
  sent again on the shared link, which connects, follows redirections and
  reports errors as for any other command: reading twice is harmless.

Only a silent server is reported from here, as the shared link would report
it (``_health``): ``ConnectionError`` when nothing arrives for
``health_check_interval`` + 1 s, or ``TimeoutError`` at ``socket_timeout`` if
that comes first.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Optional

from ..errors import ConnectionError, TimeoutError
from ._connection import _read_replies
from ._encoder import encode_commands
from ._handshake import check_handshake, handshake_commands
from ._health import PING_TIMEOUT
from ._options import ConnectionOptions
from ._parser import Parser
from ._stream import Stream, open_stream

__all__ = ["DIRECT_COMMANDS", "MISSED", "DirectPool"]

log = logging.getLogger("valkeyaside")

#: Read-only commands whose first argument is their key, and which never block.
DIRECT_COMMANDS = frozenset({
    "GET", "MGET", "GETRANGE", "SUBSTR", "STRLEN", "GETBIT", "BITCOUNT", "BITPOS", "LCS",
    "EXISTS", "TYPE", "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME", "DUMP",
    "HGET", "HMGET", "HGETALL", "HEXISTS", "HLEN", "HKEYS", "HVALS", "HSTRLEN", "HRANDFIELD",
    "LRANGE", "LINDEX", "LLEN", "LPOS",
    "SMEMBERS", "SISMEMBER", "SMISMEMBER", "SCARD", "SRANDMEMBER",
    "ZRANGE", "ZRANGEBYSCORE", "ZRANGEBYLEX", "ZREVRANGE", "ZREVRANGEBYSCORE",
    "ZREVRANGEBYLEX", "ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZRANK", "ZREVRANK",
    "ZRANDMEMBER", "XRANGE", "XREVRANGE", "XLEN", "GEOPOS", "GEODIST", "GEOHASH",
})

#: What ``DirectPool.call`` returns when the command must go to the shared link.
MISSED: Any = object()

#: After a socket could not be made, none is tried for this long (a refusing
#: server must not cost every call a failed connect).
RETRY_AFTER = 1.0


class _DirectLink:
    __slots__ = ("parser", "stream")

    def __init__(self, stream: Stream, parser: Parser) -> None:
        self.stream = stream
        self.parser = parser


class DirectPool:
    """Up to ``size`` untracked sockets to one server, each used by one thread
    at a time; made on first need, with the shared link's handshake (``AUTH``,
    ``SETNAME``, ``SELECT``) but without its connect commands (tracking)."""

    def __init__(self, options: ConnectionOptions, size: int) -> None:
        self.options = options
        self.size = size
        self._idle: list[_DirectLink] = []
        self._made = 0
        self._lock = threading.Lock()
        self._closed = False
        self._retry_at = 0.0
        self._limit, self._silent_is_dead = _receive_limit(options)

    def __repr__(self) -> str:
        return f"<DirectPool {self.options.address} {len(self._idle)}/{self._made} idle>"

    def call(self, payload: bytes) -> Any:
        """The reply to the one command in ``payload`` (an error reply as a
        value), or ``MISSED`` when it was not answered here."""
        try:
            link: Optional[_DirectLink] = self._idle.pop()
        except IndexError:
            link = self._make()
        if link is None:
            return MISSED
        try:
            link.stream.sendall(payload)
            reply = _read_replies(link.stream, link.parser, 1)[0]
        except BaseException as exc:
            self._discard(link)  # out of step with its server now
            if isinstance(exc, (BlockingIOError, socket.timeout)):
                if self._silent_is_dead:
                    raise ConnectionError(f"{self.options.address} sent nothing for "
                                          f"{self._limit:g} s: taken for dead") from exc
                raise TimeoutError(f"{self.options.address} did not answer within "
                                   f"{self._limit:g} s") from exc
            if isinstance(exc, OSError):
                return MISSED
            raise
        if self._closed:
            self._discard(link)
        else:
            self._idle.append(link)
        return reply

    def close(self) -> None:
        """Close the idle sockets; those in use are closed as they come back."""
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())

    def _make(self) -> Optional[_DirectLink]:
        with self._lock:
            if self._closed or self._made >= self.size or time.monotonic() < self._retry_at:
                return None
            self._made += 1
        try:
            return self._open()
        except Exception as exc:
            log.debug("no direct socket to %s: %s", self.options.address, exc)
            with self._lock:
                self._made -= 1
                self._retry_at = time.monotonic() + RETRY_AFTER
            return None

    def _open(self) -> _DirectLink:
        options = self.options
        stream = open_stream(options, options.connect_timeout)
        try:
            commands = handshake_commands(options)
            parser = Parser()
            stream.sendall(encode_commands(commands))
            check_handshake(options, (), _read_replies(stream, parser, len(commands)))
            stream.serve(options.socket_timeout)
            # A read must end when the server is silent; where the kernel cannot
            # bound it, this socket is not worth having.
            if self._limit is not None and not stream.recv_limit(self._limit):
                raise OSError("cannot bound a receive on this platform")
        except BaseException:
            stream.close()
            raise
        return _DirectLink(stream, parser)

    def _discard(self, link: _DirectLink) -> None:
        link.stream.close()
        with self._lock:
            self._made -= 1


def _receive_limit(options: ConnectionOptions) -> tuple[Optional[float], bool]:
    """How long a direct socket waits for its reply, and whether running out of
    it means a dead server (the shared link's silence rule: a ``PING`` after
    ``health_check_interval``, unanswered within 1 s) rather than an overdue
    reply (``socket_timeout``)."""
    overdue = options.socket_timeout
    interval = options.health_check_interval
    if interval is None:
        return overdue, False
    silent = interval + (PING_TIMEOUT if overdue is None else min(PING_TIMEOUT, overdue))
    if overdue is not None and overdue <= silent:
        return overdue, False
    return silent, True
