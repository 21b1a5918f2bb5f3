"""The threaded Sentinel transport: a ``Connection`` whose every new link
goes to the primary the sentinels name, and a watcher thread that follows
``+switch-master`` (see ``_core``)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from .._topology import Topology
from ..errors import ValkeyError
from ..resp3 import Connection
from ..resp3._connection import _Link, _read_replies
from ..resp3._parser import Parser
from ..resp3._stream import Stream, open_stream
from ._core import ROLE, WATCH_IDLE, Chat, SentinelState

__all__ = ["SentinelConnection"]

_RECV_SIZE = 65536


class SentinelConnection(SentinelState, Connection):
    """A :class:`~valkeyaside.resp3.Connection` to the primary that the
    sentinels name, followed across failovers.

    ``primary``: the address of the last link made; ``watching``: the
    sentinel whose ``+switch-master`` messages a daemon thread follows (it
    starts with the first connection and stops on :meth:`close`).
    """

    def __init__(self, topology: Topology) -> None:
        super().__init__(self._setup(topology))
        self._watcher: Optional[threading.Thread] = None
        self._watch_stream: Optional[Stream] = None
        self._stop = threading.Event()
        self.add_fork_handler(self._forked)

    def close(self) -> None:
        """Stop the watcher, then close the connection as ``Connection`` does."""
        self._closed = True
        self._stop.set()
        stream = self._watch_stream
        if stream is not None:
            stream.close()  # wakes its receive
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(5)
        super().close()

    # -- connecting ------------------------------------------------------------

    def _open_link(self, timeout: Optional[float]) -> _Link:
        if self._watcher is None and not self._closed:
            self._watcher = threading.Thread(target=self._watch_loop, daemon=True,
                                             name=f"valkeyaside-sentinel-{self.master}")
            self._watcher.start()
        search = self._search(timeout)
        while True:
            step = search.next()
            time.sleep(step.pause)
            try:
                if step.primary is None:
                    search.heard(self._ask(Chat(self._sentinel_options, step.sentinel,
                                                search.question), step.timeout).answer())
                    continue
                self._aim(step.primary)
                link = super()._open_link(step.timeout)
            except (OSError, ValkeyError) as exc:
                search.failed(exc)
            else:
                self.primary = search.found()
                return link

    def _handshake(self, stream: Stream) -> Parser:
        parser = super()._handshake(stream)
        stream.sendall(ROLE)
        self._check_primary(_read_replies(stream, parser, 1)[0])
        return parser

    def _ask(self, chat: Chat, timeout: Optional[float], keep: bool = False) -> Chat:
        """Open a socket to the chat's sentinel and write its payload; then read
        the replies and close, or (``keep``) leave the socket to the watcher."""
        stream = open_stream(chat.options, timeout)
        try:
            stream.sendall(chat.payload)
            while not keep and not chat.done:
                chat.feed(stream.recv(_RECV_SIZE))
        except BaseException:
            stream.close()
            raise
        if keep:
            self._watch_stream = stream
        else:
            stream.close()
        return chat

    # -- the watcher thread ----------------------------------------------------

    def _watch_loop(self) -> None:
        watch = self._watch
        while not self._stop.wait(watch.pause()):
            try:
                self._ask(watch.begin(), self._sentinel_options.connect_timeout, keep=True)
                stream = self._watch_stream
                if stream is None or self._closed:
                    break
                self._listen(stream)
            except (OSError, ValkeyError) as exc:
                watch.lost(exc, self._closed)
            finally:
                stream, self._watch_stream = self._watch_stream, None
                if stream is not None:
                    stream.close()

    def _listen(self, stream: Stream) -> None:
        watch = self._watch
        stream.serve(self._sentinel_options.socket_timeout)
        stream.recv_limit(WATCH_IDLE)
        while not self._closed:
            try:
                data = stream.recv(_RECV_SIZE)
            except (BlockingIOError, socket.timeout):
                stream.sendall(watch.silent())
                continue
            for address in watch.feed(data):
                self._follow(address)

    def _forked(self) -> None:
        """In a forked child the watcher thread is gone: the first connection starts one."""
        self._watcher = None
        self._watch_stream = None
        self._stop = threading.Event()
