"""A fault-injecting TCP proxy between a client and a server, for the fault tests.

``FaultProxy(upstream_port)`` listens on 127.0.0.1 (loopback only) and
forwards every accepted connection to the upstream server, one thread per
direction: ``"c2s"`` (client to server) and ``"s2c"`` (server to client).
The test steers the bytes while they flow:

- ``delay(seconds)``: hold every chunk that long before forwarding it;
- ``stall()`` / ``resume()``: stop forwarding (without closing), then go on;
- ``drop()``: read and silently discard the bytes (``resume()`` ends it);
- ``split_writes(n)``: forward n bytes per write (1: every byte on its own);
- ``reset()``: close both sides at once with a TCP RST (``SO_LINGER`` 0);
  ``reset(after_bytes=n)`` first forwards n more bytes, to cut mid-frame;
- ``on_pattern(regex, action)``: run an action (reset, stall, drop, or any
  callable taking the :class:`ProxyConnection`) when bytes matching the
  pattern pass, just before the match or just after the chunk holding it;
- ``connections``: the live proxied connections, each with its own
  ``reset()``, byte counters and ``wait_closed()``.

Faults set on the proxy apply to every connection, current and future;
``clear()`` lifts them all. Sockets are non-blocking and every wait is
bounded, so ``close()`` ends every thread promptly. Standard library only.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
from typing import Callable, Optional, Union

__all__ = ["DIRECTIONS", "FaultProxy", "ProxyConnection", "Trigger"]

DIRECTIONS = ("c2s", "s2c")
MAX_CONNECTIONS = 64
CHUNK = 65536
POLL = 0.05  # how often a waiting thread looks at the proxy's state again
CONNECT_TIMEOUT = 5.0
JOIN_TIMEOUT = 5.0
TAIL = 1024  # bytes kept from earlier chunks, so a pattern may span two chunks

Action = Union[str, Callable[["ProxyConnection"], None]]
_RST = struct.pack("ii", 1, 0)


def _directions(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return DIRECTIONS
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'c2s', 's2c' or 'both', not {direction!r}")
    return (direction,)


def _other(direction: str) -> str:
    return "s2c" if direction == "c2s" else "c2s"


class _Faults:
    """What the proxy does to the bytes of one direction."""

    __slots__ = ("delay", "dropping", "split", "split_pause", "stalled")

    def __init__(self) -> None:
        self.delay = 0.0
        self.stalled = False
        self.dropping = False
        self.split = 0
        self.split_pause = 0.0


class Trigger:
    """An armed pattern: fires ``action`` when matching bytes pass.

    ``fired`` is set on the first firing; ``hits`` counts them and
    ``connections`` lists where they happened. ``times`` firings disarm it
    (``None``: never).
    """

    def __init__(
        self,
        pattern: re.Pattern[bytes],
        direction: str,
        action: Action,
        when: str,
        times: Optional[int],
    ) -> None:
        self.pattern = pattern
        self.direction = direction
        self.action = action
        self.when = when
        self.remaining = times
        self.hits = 0
        self.fired = threading.Event()
        self.connections: list[ProxyConnection] = []

    @property
    def armed(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def wait(self, timeout: float) -> bool:
        """True once the trigger fired, False if ``timeout`` seconds passed first."""
        return self.fired.wait(timeout)


class ProxyConnection:
    """One proxied client connection and its upstream twin."""

    def __init__(
        self, proxy: FaultProxy, number: int, client: socket.socket, upstream: socket.socket
    ) -> None:
        self.proxy = proxy
        self.number = number
        self._sockets = {"c2s": (client, upstream), "s2c": (upstream, client)}
        self._client = client
        self._upstream = upstream
        self.forwarded = {"c2s": 0, "s2c": 0}
        self.dropped = {"c2s": 0, "s2c": 0}
        self.writes = {"c2s": 0, "s2c": 0}  # how many writes carried the forwarded bytes
        self.was_reset = False
        self._cut: dict[str, Optional[int]] = {"c2s": None, "s2c": None}
        self._tail = {"c2s": b"", "s2c": b""}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._eof = {"c2s": False, "s2c": False}
        self.held = {"c2s": False, "s2c": False}  # guarded by the proxy's condition
        self._threads = [
            threading.Thread(
                target=self._pump,
                args=(direction,),
                daemon=True,
                name=f"faultproxy-{proxy.port}-{number}-{direction}",
            )
            for direction in DIRECTIONS
        ]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return (
            f"<ProxyConnection #{self.number} {state} c2s={self.forwarded['c2s']} "
            f"s2c={self.forwarded['s2c']}>"
        )

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    # -- control

    def reset(self, after_bytes: Optional[int] = None, direction: str = "s2c") -> None:
        """RST both sides now, or after forwarding ``after_bytes`` more bytes in ``direction``."""
        if after_bytes is None or after_bytes <= 0:
            self._abort()
            return
        with self._lock:
            for one in _directions(direction):
                self._cut[one] = after_bytes

    def close(self) -> None:
        """Close both sides gracefully (FIN)."""
        self._finish(rst=False)

    # -- pumping

    def _pump(self, direction: str) -> None:
        source, _ = self._sockets[direction]
        try:
            while not self.closed:
                try:
                    readable, _, _ = select.select([source], [], [], POLL)
                    if not readable:
                        continue
                    data = source.recv(CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    self._half_close(direction)
                    return
                self._handle(direction, data)
        except (OSError, ValueError):  # a reset side, or a socket closed under us
            self._abort()
        finally:
            self.proxy._pump_ended(self)

    def _handle(self, direction: str, data: bytes) -> None:
        """Forward one received chunk, firing the triggers that match within it."""
        tail = self._tail[direction]
        text = tail + data
        self._tail[direction] = text[-TAIL:]
        position = 0  # in ``data``: forwarded up to here
        boundary = len(tail)  # in ``text``: a match must end past this to count
        while True:
            found = self.proxy._next_match(direction, text, boundary, len(tail), len(data))
            if found is None:
                break
            trigger, cut, match_end = found
            # Acting after a chunk: hold the other direction meanwhile, so no
            # reply to that chunk slips through before the action.
            after = trigger.when == "after"
            if after:
                self.proxy._hold(self, _other(direction), True)
            try:
                if cut > position:
                    if not self._forward(direction, data[position:cut]):
                        return
                    position = cut
                self.proxy._fire(trigger, self)
            finally:
                if after:
                    self.proxy._hold(self, _other(direction), False)
            boundary = match_end
            if self.closed:
                return
        if position < len(data):
            self._forward(direction, data[position:])

    def _forward(self, direction: str, data: bytes) -> bool:
        """Send ``data`` on under the current faults; False once the connection is gone."""
        proxy = self.proxy
        faults = proxy._faults[direction]
        _, target = self._sockets[direction]
        if not proxy._wait_unstalled(direction, self):
            return False
        if faults.dropping:
            self.dropped[direction] += len(data)
            return True
        if faults.delay > 0 and not proxy._wait_delay(direction, self, time.monotonic()):
            return False
        while data:
            if not proxy._wait_unstalled(direction, self):
                return False
            if faults.dropping:
                self.dropped[direction] += len(data)
                return True
            size = len(data) if faults.split <= 0 else faults.split
            with self._lock:
                cut = self._cut[direction]
            if cut is not None:
                size = min(size, cut)
            piece, data = data[:size], data[size:]
            # Counted first: once the peer has the bytes, the counters show them.
            self.forwarded[direction] += len(piece)
            self.writes[direction] += 1
            self._send_all(target, piece)
            if cut is not None:
                with self._lock:
                    left = self._cut[direction]
                    if left is not None:
                        self._cut[direction] = left = left - len(piece)
                if left is not None and left <= 0:
                    self._abort()
                    return False
            pause = faults.split_pause if data and faults.split > 0 else 0.0
            if pause > 0 and self._closed.wait(pause):
                return False
        return not self.closed

    def _send_all(self, target: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed:
                raise ConnectionAbortedError("the proxied connection was closed")
            try:
                sent = target.send(view)
            except BlockingIOError:
                select.select([], [target], [], POLL)
                continue
            view = view[sent:]

    # -- ending

    def _half_close(self, direction: str) -> None:
        """The source sent FIN: pass it on; close when both directions ended."""
        _, target = self._sockets[direction]
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with self._lock:
            self._eof[direction] = True
            both = all(self._eof.values())
        if both:
            self._finish(rst=False)

    def _abort(self) -> None:
        self._finish(rst=True)

    def _finish(self, *, rst: bool) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self.was_reset = rst
        for sock in (self._client, self._upstream):
            if rst:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy._wake()

    def _join(self, timeout: float) -> None:
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current and thread.is_alive():
                thread.join(timeout)


class FaultProxy:
    """A loopback TCP proxy in front of ``upstream_host:upstream_port`` with faults on demand.

    Properties: ``port``, ``url`` (``valkey://127.0.0.1:PORT``), ``accepted``
    (connections accepted so far), ``connections`` (live ones, oldest first).
    ``refuse(True)`` resets every new connection at once (a server that is down).
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if upstream_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to the loopback interface")
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self._faults = {direction: _Faults() for direction in DIRECTIONS}
        self._triggers: list[Trigger] = []
        self._cond = threading.Condition()
        self._live: list[ProxyConnection] = []
        self._all: list[ProxyConnection] = []
        self._refusing = False
        self._closing = threading.Event()
        self.accepted = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL * 4)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<FaultProxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}>"

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    @property
    def connections(self) -> list[ProxyConnection]:
        with self._cond:
            return [conn for conn in self._live if not conn.closed]

    def wait_for_connections(self, accepted: int, timeout: float) -> bool:
        """Wait until ``accepted`` connections were accepted in all (a reconnect, say)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.accepted < accepted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, POLL))
        return True

    # -- faults

    def delay(self, seconds: float, direction: str = "both") -> None:
        """Hold every chunk ``seconds`` before forwarding it (0 ends the delay)."""
        with self._cond:
            for one in _directions(direction):
                self._faults[one].delay = max(0.0, seconds)
            self._cond.notify_all()

    def stall(self, direction: str = "both") -> None:
        """Stop forwarding (the connections stay open) until ``resume()``."""
        with self._cond:
            for one in _directions(direction):
                self._faults[one].stalled = True
            self._cond.notify_all()

    def resume(self, direction: str = "both") -> None:
        """Forward again after ``stall()`` or ``drop()``."""
        with self._cond:
            for one in _directions(direction):
                self._faults[one].stalled = False
                self._faults[one].dropping = False
            self._cond.notify_all()

    def drop(self, direction: str = "both") -> None:
        """Discard the bytes silently until ``resume()``."""
        with self._cond:
            for one in _directions(direction):
                self._faults[one].dropping = True
            self._cond.notify_all()

    def split_writes(self, size: int, direction: str = "s2c", pause: float = 0.0) -> None:
        """Forward ``size`` bytes per write (0 ends it), ``pause`` seconds apart."""
        with self._cond:
            for one in _directions(direction):
                self._faults[one].split = max(0, size)
                self._faults[one].split_pause = max(0.0, pause)

    def reset(self, after_bytes: Optional[int] = None, direction: str = "s2c") -> int:
        """Reset every live connection (see ``ProxyConnection.reset``); return how many."""
        connections = self.connections
        for conn in connections:
            conn.reset(after_bytes, direction)
        return len(connections)

    def refuse(self, refusing: bool = True) -> None:
        """Reset new connections as soon as they are accepted."""
        with self._cond:
            self._refusing = refusing

    def on_pattern(
        self,
        pattern: Union[bytes, str, re.Pattern[bytes]],
        action: Action = "reset",
        *,
        direction: str = "c2s",
        when: str = "before",
        times: Optional[int] = 1,
    ) -> Trigger:
        """Arm a trigger: when bytes matching ``pattern`` pass in ``direction``, run ``action``.

        ``action``: ``"reset"`` (RST that connection), ``"stall"`` (stall the
        proxy in ``direction``), ``"stall-both"``, ``"drop"`` (drop in
        ``direction``), or a callable taking the ``ProxyConnection`` (it runs
        on the proxy thread, which forwards nothing meanwhile).
        ``when="before"`` acts before the first matching byte is forwarded;
        ``when="after"`` after the whole chunk holding the match end was
        (a command written in one go then reaches the server whole), with
        the other direction held until the action is done.
        A ``str`` pattern is taken literally; ``bytes`` is a regular expression.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'c2s' or 's2c', not {direction!r}")
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        if isinstance(action, str) and action not in ("reset", "stall", "stall-both", "drop"):
            raise ValueError(f"unknown action {action!r}")
        if isinstance(pattern, str):
            compiled = re.compile(re.escape(pattern.encode()))
        elif isinstance(pattern, bytes):
            compiled = re.compile(pattern, re.DOTALL)
        else:
            compiled = pattern
        trigger = Trigger(compiled, direction, action, when, times)
        with self._cond:
            self._triggers.append(trigger)
        return trigger

    def disarm(self, trigger: Optional[Trigger] = None) -> None:
        """Remove one trigger, or all of them."""
        with self._cond:
            if trigger is None:
                self._triggers.clear()
            elif trigger in self._triggers:
                self._triggers.remove(trigger)

    def clear(self) -> None:
        """Lift every fault and trigger (pending ``reset(after_bytes=)`` cuts stay)."""
        with self._cond:
            self._triggers.clear()
            for faults in self._faults.values():
                faults.__init__()  # in place: the pumps hold references to these
            self._refusing = False
            self._cond.notify_all()

    # -- lifecycle

    def close(self) -> None:
        """Stop accepting, reset every connection, end every thread."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.clear()
        self._acceptor.join(JOIN_TIMEOUT)
        with self._cond:
            connections = list(self._all)
        for conn in connections:
            conn.reset()
        for conn in connections:
            conn._join(JOIN_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def threads_alive(self) -> int:
        """How many of the proxy's threads still run (for boundedness checks)."""
        count = int(self._acceptor.is_alive())
        with self._cond:
            connections = list(self._all)
        return count + sum(t.is_alive() for conn in connections for t in conn._threads)

    # -- internals

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._cond:
            refuse = self._refusing or len(self._live) >= self.max_connections
        if refuse or self._closing.is_set():
            _rst_close(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT)
        except OSError:
            _rst_close(client)
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        with self._cond:
            self.accepted += 1
            conn = ProxyConnection(self, self.accepted, client, upstream)
            self._live.append(conn)
            self._all.append(conn)
            self._cond.notify_all()
        conn.start()

    def _pump_ended(self, conn: ProxyConnection) -> None:
        with self._cond:
            if conn.closed and conn in self._live:
                self._live.remove(conn)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._live = [conn for conn in self._live if not conn.closed]
            self._cond.notify_all()

    def _wait_unstalled(self, direction: str, conn: ProxyConnection) -> bool:
        with self._cond:
            while (self._faults[direction].stalled or conn.held[direction]) and not conn.closed:
                self._cond.wait(POLL)
        return not conn.closed

    def _wait_delay(self, direction: str, conn: ProxyConnection, since: float) -> bool:
        """Hold a chunk for the delay (lowering it, or ``clear()``, shortens the wait)."""
        with self._cond:
            while not conn.closed:
                left = since + self._faults[direction].delay - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, POLL))
        return not conn.closed

    def _hold(self, conn: ProxyConnection, direction: str, held: bool) -> None:
        with self._cond:
            conn.held[direction] = held
            self._cond.notify_all()

    def _next_match(
        self, direction: str, text: bytes, boundary: int, tail: int, size: int
    ) -> Optional[tuple[Trigger, int, int]]:
        """The armed trigger to fire first: (trigger, cut in the chunk, match end in text)."""
        with self._cond:
            triggers = [t for t in self._triggers if t.direction == direction and t.armed]
        best: Optional[tuple[Trigger, int, int]] = None
        for trigger in triggers:
            match = _first_match_ending_after(trigger.pattern, text, boundary)
            if match is None:
                continue
            cut = max(match.start() - tail, 0) if trigger.when == "before" else size
            if best is None or cut < best[1]:
                best = (trigger, cut, match.end())
        return best

    def _fire(self, trigger: Trigger, conn: ProxyConnection) -> None:
        with self._cond:
            if not trigger.armed:
                return
            if trigger.remaining is not None:
                trigger.remaining -= 1
            trigger.hits += 1
            trigger.connections.append(conn)
        action = trigger.action
        if action == "reset":
            conn.reset()
        elif action == "stall":
            self.stall(trigger.direction)
        elif action == "stall-both":
            self.stall()
        elif action == "drop":
            self.drop(trigger.direction)
        elif callable(action):
            action(conn)
        trigger.fired.set()


def _first_match_ending_after(
    pattern: re.Pattern[bytes], text: bytes, boundary: int
) -> Optional[re.Match[bytes]]:
    for match in pattern.finditer(text):
        if match.end() > boundary:
            return match
    return None


def _rst_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    with contextlib.suppress(OSError):
        sock.close()
