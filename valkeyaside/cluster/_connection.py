"""A Valkey Cluster as one threaded transport: a ``Connection`` per primary.

Routing and redirections are the router's (``_router``); this module sends:
a batch goes out as one write per node, a redirected request is sent on
from the reader thread that saw the redirection (or from a short-lived
thread when it must wait or connect first), and a daemon thread refreshes
the slot map every few seconds, and at once after a ``MOVED`` or a lost link.

An uncached read-only command (``execute("GET", key)``) is answered, where it
can be, over a socket of the calling thread's own (``resp3._direct``): with
several threads over several links, the reader thread's hand-overs would
cost more than the command itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Optional

from .._topology import Address, Topology
from ..errors import ResponseError, ValkeyError
from ..resp3 import Arg, Connection, ConnectionOptions, Request, encode_command
from ..resp3._connection import WriteHold
from ..resp3._direct import DIRECT_COMMANDS, MISSED, DirectPool
from ._router import REDIRECTED, REFRESH_PAUSE, RETIRE_GRACE, Router, _text, command_key

__all__ = ["ClusterConnection"]

log = logging.getLogger("valkeyaside")


class ClusterConnection(Router[Connection]):
    """The threaded cluster transport: what ``Client`` talks to on a cluster."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self._discover_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._refresher: Optional[threading.Thread] = None
        self._write_hold = WriteHold()
        self._direct: dict[Address, DirectPool] = {}

    def _new_node(self, options: ConnectionOptions) -> Connection:
        node = Connection(options)
        node.write_hold = self._write_hold
        return node

    def after_fork(self) -> None:
        self._write_hold = WriteHold()
        for node in self._nodes.values():
            node.write_hold = self._write_hold
        self._discover_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._refresher = None  # the parent's thread was not copied: started on next need
        # The parent still reads over those sockets: forgotten here, never shut down.
        self._direct = {}

    # -- sending -------------------------------------------------------------------

    def submit(self, request: Request, timeout: Optional[float] = None) -> None:
        """Write ``request`` to its node (a batch: one write per node), connecting
        (and the first time, learning the slot map) if need be."""
        if self._map is None or self._refresher is None:
            self._discover(timeout)
        for address, part in self.plan(request):
            self.node(address).submit(part, timeout)

    def call(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        """One command, to the node of its key (keyless: the first primary); an
        error reply is raised."""
        if timeout is None and self.options.direct_connections:
            reply = self._call_direct(args)
            if reply is not MISSED:
                if type(reply) is ResponseError:
                    raise reply
                return reply
        request = Request(encode_command(*args), key=command_key(args))
        self.submit(request, timeout)
        reply = request.wait(self.options.socket_timeout if timeout is None else timeout)[0]
        if type(reply) is ResponseError:
            raise reply
        return reply

    def _call_direct(self, args: tuple[Arg, ...]) -> Any:
        """``args``' reply over a socket of this thread's own, or ``MISSED`` when
        the shared link must answer: a command that is not ``DIRECT_COMMANDS``,
        a node not connected yet (or failing), no free socket, a redirection."""
        name = args[0]
        name = name.upper() if type(name) is str else _text(name).upper()
        if name not in DIRECT_COMMANDS or len(args) < 2 or self._map is None:
            return MISSED
        key = args[1]
        address = self.address_of(key if isinstance(key, (str, bytes)) else str(key))
        node = self._nodes.get(address)
        if node is None or not node.connected or self._closed:
            return MISSED
        pool = self._direct.get(address)
        if pool is None:
            pool = self._direct.setdefault(
                address, DirectPool(node.options, self.options.direct_connections))
            if self._closed:  # closed meanwhile: this pool must not outlive it
                pool.close()
        reply = pool.call(encode_command(*args))
        if type(reply) is ResponseError and reply.code in REDIRECTED:
            return MISSED  # the shared link follows it (and learns the new map)
        return reply

    def call_each_primary(self, *args: Arg,
                          timeout: Optional[float] = None) -> dict[Address, Any]:
        """One command on every primary, all sent before any reply is awaited:
        ``{(host, port): reply}``, error replies as values. A ``PING`` this way
        is a fence: every invalidation sent before it has been applied."""
        if self._map is None:
            self._discover(timeout)
        requests = self.each_primary(args)
        for address, request in requests.items():
            self.node(address).submit(request, timeout)
        wait = self.options.socket_timeout if timeout is None else timeout
        return {address: request.wait(wait)[0] for address, request in requests.items()}

    def call_last(self, *args: Arg, timeout: Optional[float] = None) -> Any:
        raise ValueError("RESET is not supported on a cluster: close the client instead")

    def resend(self, request: Request, address: Address, delay: float) -> None:
        if delay <= 0:
            node = self._nodes.get(address)
            if node is not None and node.submit_nowait(request):
                return
        # Waiting or connecting must not stop the reader thread we are on.
        timer = threading.Timer(delay, self._send_later, (request, address))
        timer.daemon = True
        timer.start()

    def _send_later(self, request: Request, address: Address) -> None:
        try:
            self.node(address).submit(request, self.options.connect_timeout)
        except BaseException as exc:
            request.fail(exc)

    # -- the slot map --------------------------------------------------------------

    def _discover(self, timeout: Optional[float]) -> None:
        with self._discover_lock:
            if self._map is None:
                self._refresh(timeout)
            if self._refresher is None and not self._closed:
                self._refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                                   name="valkeyaside-cluster")
                self._refresher.start()

    def _refresh(self, timeout: Optional[float] = None) -> None:
        steps = self.refreshing()
        with contextlib.suppress(StopIteration):
            address, query = next(steps)
            while True:
                address, query = steps.send(self._ask(address, query, timeout))

    def _ask(self, address: Address, query: tuple[str, ...], timeout: Optional[float]) -> Any:
        try:
            return self.node(address).call(*query, timeout=timeout)
        except ValkeyError as exc:
            return exc

    def want_refresh(self) -> None:
        self._wake.set()

    def _refresh_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.refresh_interval())
            self._wake.clear()
            if self._closed:
                return
            try:
                self._refresh()
            except ValkeyError as exc:
                log.debug("cluster slot map refresh failed: %s", exc)
            self._stopping.wait(REFRESH_PAUSE)  # paces a storm of requests for refresh

    def _retire(self, address: Address) -> None:
        node = self._nodes.pop(address, None)
        if node is not None:  # its calls in flight are answered first (MOVED, mostly)
            self._retiring.append(node)
            timer = threading.Timer(RETIRE_GRACE, self._close_retired, (node,))
            timer.daemon = True
            timer.start()

    def _close_retired(self, node: Connection) -> None:
        pool = self._direct.pop((node.options.host, node.options.port), None)
        if pool is not None:
            pool.close()
        with contextlib.suppress(ValueError):
            self._retiring.remove(node)
        node.close()

    def close(self) -> None:
        """Close every node's connection and stop the refresher."""
        self._closed = True
        self._stopping.set()
        self._wake.set()
        for node in [*self._nodes.values(), *self._retiring]:
            node.close()
        for pool in list(self._direct.values()):
            pool.close()
        refresher = self._refresher
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(5)
