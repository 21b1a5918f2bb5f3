"""Byte streams under a connection: a plain socket, or TLS over one.

Both offer ``sendall``, ``recv`` and ``close``, and allow one thread to send
while another receives. Once connected, a stream blocks without a Python
timeout: Python polls before every call on a socket that has one, which
doubles the system calls of a round trip. Sends are bounded by the kernel
instead (``SO_SNDTIMEO``). Reads may be bounded the same way
(``SO_RCVTIMEO``, :meth:`recv_limit`): a receive that finds nothing for that
long raises :class:`BlockingIOError` (or :class:`socket.timeout`), which is
how the reader notices a silent server without a timer of its own and
without any cost while bytes flow. Closing the stream wakes a blocked reader.

TLS runs through an :class:`ssl.SSLObject` over memory buffers, under a lock
of its own, because one OpenSSL connection must not be used by two threads at
once; the socket I/O itself happens outside that lock, so a blocked write
never stops the reader from draining replies.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import sys
import threading
from typing import Optional, Protocol

from ._options import ConnectionOptions

__all__ = ["Stream", "open_stream"]

_RECV_SIZE = 65536


class Stream(Protocol):
    def sendall(self, data: bytes) -> None: ...
    def recv(self, size: int) -> bytes: ...
    def serve(self, send_timeout: Optional[float]) -> None: ...
    def recv_limit(self, seconds: Optional[float]) -> bool: ...
    def close(self) -> None: ...


class _PlainStream:
    __slots__ = ("_sock", "recv", "sendall")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sendall = sock.sendall
        self.recv = sock.recv

    def serve(self, send_timeout: Optional[float]) -> None:
        _serve(self._sock, send_timeout)

    def recv_limit(self, seconds: Optional[float]) -> bool:
        return _recv_limit(self._sock, seconds)

    def close(self) -> None:
        _close_socket(self._sock)


class _TLSStream:
    __slots__ = ("_incoming", "_outgoing", "_send_lock", "_sock", "_tls", "_tls_lock")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()  # keeps TLS records in the order they were made

    def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush_outgoing()
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    raise ConnectionResetError(
                        "connection closed during the TLS handshake"
                    ) from None
                self._incoming.write(data)
            else:
                self._flush_outgoing()
                return

    def _flush_outgoing(self) -> None:
        with self._send_lock:
            with self._tls_lock:
                data = self._outgoing.read()
            if data:
                self._sock.sendall(data)

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            with self._tls_lock:
                self._tls.write(data)
                records = self._outgoing.read()
            self._sock.sendall(records)

    def recv(self, size: int) -> bytes:
        while True:
            with self._tls_lock:
                try:
                    return self._tls.read(size)
                except ssl.SSLWantReadError:
                    pending_out = self._outgoing.pending
                except ssl.SSLZeroReturnError:
                    return b""
            if pending_out:  # post-handshake messages the peer expects answered
                self._flush_outgoing()
            data = self._sock.recv(_RECV_SIZE)
            if not data:
                return b""
            with self._tls_lock:
                self._incoming.write(data)

    def serve(self, send_timeout: Optional[float]) -> None:
        _serve(self._sock, send_timeout)

    def recv_limit(self, seconds: Optional[float]) -> bool:
        return _recv_limit(self._sock, seconds)

    def close(self) -> None:
        _close_socket(self._sock)


def _serve(sock: socket.socket, send_timeout: Optional[float]) -> None:
    """After the handshake: block without polling; the kernel bounds each send.

    Where the platform refuses ``SO_SNDTIMEO``, the socket keeps a Python
    timeout instead: slower, but a stalled server still cannot hang a writer.
    """
    if send_timeout is None:
        sock.settimeout(None)
        return
    try:
        # Never 0: to the kernel a zero timeout means none.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        _timeval(max(send_timeout, 0.001)))
    except OSError:
        sock.settimeout(send_timeout)
        return
    sock.settimeout(None)


def _recv_limit(sock: socket.socket, seconds: Optional[float]) -> bool:
    """Bound each receive to ``seconds`` in the kernel (None: no bound); False
    where the platform refuses (or the socket keeps a Python timeout)."""
    if sock.gettimeout() is not None:
        return False  # _serve fell back to a Python timeout: that one bounds reads
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        _timeval(0.0 if seconds is None else max(seconds, 0.001)))
    except OSError:
        return False
    return True


def _timeval(seconds: float) -> bytes:
    """``seconds`` as the kernel takes SO_SNDTIMEO/SO_RCVTIMEO (0: no limit)."""
    if sys.platform == "win32":
        return struct.pack("=L", round(seconds * 1e3))  # a DWORD of ms
    return struct.pack("@ll", *divmod(round(seconds * 1e6), 10**6))  # a timeval


def _close_socket(sock: socket.socket) -> None:
    # shutdown wakes a thread blocked in recv on this socket; close alone may not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _keepalive(sock: socket.socket) -> None:
    """Let the kernel notice a silently vanished server within about 30 s, so a
    half-open connection cannot keep serving an idle cache that gets no pushes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def open_stream(options: ConnectionOptions, timeout: Optional[float]) -> Stream:
    """Connect (TCP, Unix socket, or TLS over TCP) within ``timeout`` seconds."""
    if options.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(options.unix_path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection(
            (options.host, options.port), timeout=timeout
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(sock)
    context = options.tls_context()
    if context is None:
        return _PlainStream(sock)
    try:
        stream = _TLSStream(sock, context, options.host)
        stream.handshake()
    except BaseException:
        sock.close()
        raise
    return stream
