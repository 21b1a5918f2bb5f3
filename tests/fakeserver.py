"""A scripted fake RESP3 server, for what a real server will not send.

It listens on 127.0.0.1 on a free port and serves each connection on a
thread of its own. It answers the client's handshake (``HELLO 3`` with a
RESP3 map saying ``proto 3``, ``+OK`` to ``SELECT`` and ``CLIENT ...``; both
can be changed) and
then, for every other command, plays the next scripted action, or answers
like a tiny server when the script is empty (``PING`` -> ``+PONG``, ``ECHO x``
-> ``x``, anything else -> ``+OK``).

    with FakeServer() as server:
        server.reply_next(b"@garbage\\r\\n")       # the next command's answer
        server.reply_next(SILENT)                  # no answer at all
        server.reply_next(b"$10\\r\\nhal", close=True)  # then close the socket
        server.send(b">2\\r\\n...")                # unsolicited, on the newest connection

Every command received (handshake included) is kept in ``commands``, as a
list of ``bytes`` arguments; ``wait_for`` awaits a condition on the server's
state without polling.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from typing import Callable, Deque, Dict, List, Optional, Tuple, Union

__all__ = ["HELLO_REPLY", "SILENT", "FakeConnection", "FakeServer", "bulk", "hello_map"]

IO_TIMEOUT = 10.0


class _Silent:
    def __repr__(self) -> str:
        return "SILENT"


#: A scripted action: read the command, answer nothing.
SILENT = _Silent()

Action = Tuple[Union[bytes, _Silent], bool]  # (what to send, close afterwards)


def bulk(data: Union[bytes, str]) -> bytes:
    """A RESP bulk string."""
    raw = data.encode() if isinstance(data, str) else data
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def hello_map(proto: int = 3) -> bytes:
    """What a Valkey server answers to ``HELLO 3``: a RESP3 map."""
    fields = [
        (bulk("server"), bulk("fake")),
        (bulk("version"), bulk("9.0.0")),
        (bulk("proto"), b":%d\r\n" % proto),
        (bulk("id"), b":1\r\n"),
        (bulk("mode"), bulk("standalone")),
        (bulk("role"), bulk("master")),
        (bulk("modules"), b"*0\r\n"),
    ]
    return b"%%%d\r\n" % len(fields) + b"".join(k + v for k, v in fields)


HELLO_REPLY = hello_map()


class _CommandReader:
    """Splits what a client sends into commands (arrays of bulk strings)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_command(self) -> Optional[List[bytes]]:
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[:1] != b"*":
            raise ValueError(f"not a command array: {bytes(buf[:40])!r}")
        count = int(buf[1:end])
        pos = end + 2
        args: List[bytes] = []
        for _ in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            if buf[pos : pos + 1] != b"$":
                raise ValueError(f"not a bulk string argument: {bytes(buf[pos:pos + 40])!r}")
            length = int(buf[pos + 1 : end])
            start = end + 2
            if len(buf) < start + length + 2:
                return None
            args.append(bytes(buf[start : start + length]))
            pos = start + length + 2
        del buf[:pos]
        return args


class FakeConnection:
    """One accepted client connection."""

    def __init__(self, server: FakeServer, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self.closed = False  # set once the client hung up or we closed it
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeServer:
    """A loopback server that answers the handshake, then plays a script."""

    def __init__(
        self,
        hello_reply: Optional[bytes] = HELLO_REPLY,
        handshake_replies: Optional[Dict[bytes, bytes]] = None,
    ) -> None:
        """``hello_reply``: what ``HELLO`` gets (``None``: no answer at all);
        ``handshake_replies``: answers for ``SELECT`` / ``CLIENT`` instead of ``+OK``."""
        self.hello_reply = hello_reply
        self.handshake_replies = dict(handshake_replies or {})
        #: Sent before every unscripted answer (a push frame, say).
        self.before_reply = b""
        self.commands: List[List[bytes]] = []
        self.connections: List[FakeConnection] = []
        self._script: Deque[Action] = collections.deque()
        self._state = threading.Condition()
        self._threads: List[threading.Thread] = []
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"fakeserver-{self.port}", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    # -- scripting

    def reply_next(self, data: Union[bytes, _Silent], *, close: bool = False) -> None:
        """Answer the next (not yet answered) command with ``data`` (or SILENT)."""
        with self._state:
            self._script.append((data, close))

    def send(self, data: bytes) -> None:
        """Send bytes now, unasked, on the newest connection."""
        with self._state:
            connection = self.connections[-1]
        connection.send(data)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` (read under the server's lock) holds."""
        with self._state:
            if not self._state.wait_for(predicate, timeout):
                raise AssertionError(f"the fake server did not reach {predicate} in {timeout} s")

    def wait_for_commands(self, count: int, timeout: float = 5.0) -> None:
        self.wait_for(lambda: len(self.commands) >= count, timeout)

    def names(self) -> List[bytes]:
        """The upper-cased names of the commands received so far."""
        with self._state:
            return [command[0].upper() for command in self.commands]

    # -- serving

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._state:
                if self._closed:
                    sock.close()
                    return
                connection = FakeConnection(self, sock, len(self.connections))
                self.connections.append(connection)
                thread = threading.Thread(
                    target=self._serve, args=(connection,), name="fakeserver-conn", daemon=True
                )
                self._threads.append(thread)
                self._state.notify_all()
            thread.start()

    def _serve(self, connection: FakeConnection) -> None:
        reader = _CommandReader()
        sock = connection.sock
        sock.settimeout(IO_TIMEOUT)
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                reader.feed(data)
                while True:
                    command = reader.next_command()
                    if command is None:
                        break
                    if not self._answer(connection, command):
                        return
        except (OSError, ValueError):
            pass
        finally:
            connection.close()
            with self._state:
                connection.closed = True
                self._state.notify_all()

    def _answer(self, connection: FakeConnection, command: List[bytes]) -> bool:
        """Answer one command; False once the connection is to be closed."""
        name = command[0].upper()
        with self._state:
            self.commands.append(command)
            self._state.notify_all()
            handshake = name in (b"HELLO", b"SELECT", b"CLIENT", b"SCRIPT")
            action: Optional[Action] = None
            if not handshake and self._script:
                action = self._script.popleft()
        if handshake:
            if name == b"HELLO":
                if self.hello_reply is not None:
                    connection.send(self.hello_reply)
            else:
                connection.send(self.handshake_replies.get(name, b"+OK\r\n"))
            return True
        if action is None:
            if name == b"PING":
                answer = b"+PONG\r\n"
            elif name == b"ECHO" and len(command) == 2:
                answer = bulk(command[1])
            else:
                answer = b"+OK\r\n"
            connection.send(self.before_reply + answer)
            return True
        data, close = action
        if isinstance(data, bytes):
            connection.send(data)
        return not close

    def close(self) -> None:
        with self._state:
            self._closed = True
            connections = list(self.connections)
            threads = list(self._threads)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in connections:
            connection.close()
        self._acceptor.join(5)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
