"""The client-side cache: tracked reads, invalidations, and waking waiters.

A cached read is ``CLIENT CACHING YES``, ``MULTI``, ``PTTL key``, ``GET key``,
``EXEC``, written as one contiguous buffer (a command in between would clear
the server's caching flag). Its reply is stored where frames are read (the
reader thread, or the event loop) the moment it arrives, before any later
push is looked at, so an invalidation that follows a reply always removes
it. Concurrent reads of one key share a single request.

Without tracking (``local_cache=False``, or a server that refuses it) a read
is ``MULTI``, ``PTTL``, ``GET``, ``EXEC`` and nothing is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Optional

from .._effects import Receive, Send, Steps
from ..errors import ConnectionError, ResponseError
from ..resp3 import Batch, Push, Request, encode_command
from ..resp3._transport import Transport
from ._store import ENTRY_OVERHEAD, Entry, LocalStore
from ._waiters import Waiters

__all__ = ["CachedRead", "FilledRead", "KeepShared", "StillGood", "TrackedCache"]

log = logging.getLogger("valkeyaside")

_CACHING = encode_command("CLIENT", "CACHING", "YES")
_MULTI = encode_command("MULTI")
_EXEC = encode_command("EXEC")
_ASKING = encode_command("ASKING")


class _Abandoned(ConnectionError):
    """A shared read whose sender gave up before writing it: its joiners read afresh."""

#: On a cluster: whether an entry read through ``link`` may still be served for ``key``.
StillGood = Callable[[Any, str], bool]

#: Turns what the server sent for a key into (value for callers, is it final).
Decoder = Callable[[Optional[bytes]], "tuple[Any, bool]"]


class CachedRead(Request):
    """The five-command cached read of one key; its outcome is in ``entry``."""

    __slots__ = ("entry", "sent_at", "settled", "ttl")

    key: str

    def __init__(self, key: str, ttl: float, on_reply: Callable[[Request], None],
                 tracked: bool = True, sent_at: Optional[float] = None) -> None:
        super().__init__(b"", 5 if tracked else 4, on_reply, key)  # the payload: see ``alone``
        self.ttl = ttl
        #: No later than it is sent: the entry expires counting from then.
        self.sent_at = time.monotonic() if sent_at is None else sent_at
        self.entry: Optional[Entry] = None
        #: The read behind this client's own fill: its cache's ``filled``, told
        #: the key once the read ends (its value kept, or not).
        self.settled: Optional[Callable[[list[str]], None]] = None

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self.settle()

    def settle(self) -> None:
        """Run ``settled`` (once), if this read is behind a fill."""
        settled, self.settled = self.settled, None
        if settled is not None:
            settled([self.key])

    def answer(self) -> None:
        """Complete this read, whose ``entry`` its :class:`SharedRead` has made."""
        self._finish()

    def alone(self) -> CachedRead:
        """This read, to be sent by itself (a :class:`SharedRead` writes its own)."""
        self.payload = (_CACHING if self.expected == 5 else b"") + _MULTI + _pttl_get(self) + _EXEC
        return self

    def asking_form(self) -> tuple[bytes, int]:
        """After ``ASK``: ``ASKING`` and the read untracked (``ASKING`` would clear
        the caching flag before the transaction), so its answer is not kept."""
        return _ASKING + _MULTI + _pttl_get(self) + _EXEC, 5


def _pttl_get(read: CachedRead) -> bytes:
    """``PTTL key`` and ``GET key``, encoded (as ``encode_command`` would, in one step)."""
    key = read.key.encode()
    return b"*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (
        len(key), key, len(key), key)


_PTTL = b"*2\r\n$4\r\nPTTL\r\n"  # how a PTTL begins; its key follows


def _bulk_keys(reads: list[CachedRead]) -> list[bytes]:
    """Each read's key as a RESP bulk string."""
    return [b"$%d\r\n%s\r\n" % (len(data), data) for data in [read.key.encode()
                                                             for read in reads]]


def _pttls_mget(reads: list[CachedRead]) -> bytes:
    """``PTTL`` of each read's key, then one ``MGET`` of them all, encoded as
    ``encode_command`` would: each key's bulk string made once, used twice."""
    keys = _bulk_keys(reads)
    return b"".join([_PTTL, _PTTL.join(keys), b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1),
                     *keys])


#: Where frames are read, for a shared read whose commands were all queued and
#: run: ``keep(reads, pttls, values, link, tracked)`` makes (and keeps, if
#: tracked) the reads' entries and completes them, all but those whose results
#: are not a TTL and a string (or an absent key's nil), whose indices it returns.
KeepShared = Callable[[list[CachedRead], list[Any], list[Any], Any, bool], list[int]]

#: What PTTL answers for a key that does not exist.
_ABSENT = -2

# What CLIENT CACHING YES (when sent) and MULTI answer when all is well.
_RAN_TRACKED = ["OK", "OK"]
_RAN = ["OK"]


class SharedRead(Batch):
    """Cached reads of several keys as one transaction: ``CLIENT CACHING YES``,
    ``MULTI``, ``PTTL`` of each key, one ``MGET`` of them all, ``EXEC`` (the
    caching flag covers the whole transaction, and the server tracks every
    key ``MGET`` reads). One ``MGET`` instead of a ``GET`` per key: the server
    queues and runs one command, and the client parses one ``QUEUED``.

    ``MGET`` answers nil for a key that holds another type, where ``GET``
    would refuse with ``WRONGTYPE``; such a key (nil, but ``PTTL`` says it
    exists) is read again by itself, which gets the server's own answer.

    When the transaction ran as written, ``keep`` handles its reads in one
    pass (a lock taken once, not per key); otherwise each read gets the
    replies it would have had alone and is completed with them."""

    __slots__ = ("_keep",)

    def __init__(self, reads: list[CachedRead], tracked: bool, keep: KeepShared) -> None:
        body = _pttls_mget(reads)
        super().__init__(list(reads), (_CACHING if tracked else b"") + _MULTI + body + _EXEC,
                         (4 if tracked else 3) + len(reads))
        self._keep = keep

    def sendable_parts(self) -> list[Request]:
        return [read.alone() for read in self.parts]  # type: ignore[attr-defined]

    def hand_out(self) -> None:
        replies = self.replies
        count = len(self.parts)
        head = replies[:-2 - count]  # CLIENT CACHING (if sent), MULTI
        queued = replies[len(head):-1]  # each PTTL's, then the MGET's
        result = replies[-1]
        whole = (isinstance(result, list) and len(result) == count + 1
                 and isinstance(result[count], list) and len(result[count]) == count)
        tracked = len(head) == 2
        left: Iterable[int] = range(count)
        if whole and head == (_RAN_TRACKED if tracked else _RAN) and (
            queued.count("QUEUED") == count + 1
        ):
            left = self._keep(self.parts, result[:count], result[count],  # type: ignore[arg-type]
                              self.link, tracked)
        for i in left:
            part = self.parts[i]
            part.link = self.link
            if whole:
                pttl, value = result[i], result[count][i]
                if value is None and type(pttl) is int and pttl != _ABSENT:
                    part.fail(_Abandoned(part.key))  # another type: its reader reads again
                    continue
                own: Any = [pttl, value]
            else:
                own = result
            part.replies = [*head, queued[i], queued[-1], own]
            part.complete()


class FilledRead(Batch):
    """This client's fills of several keys and a tracked read of them, as one
    transaction: ``CLIENT CACHING YES``, ``MULTI``, the fills (one command per
    key, in the order of ``fills``), ``EXISTS`` of the read keys, ``EXEC``.

    Nothing runs between the fills and the read, so a fill that stored its
    value left exactly that value, for exactly its TTL, when ``EXISTS`` made
    the server track the key: each entry is made from what was sent, and no
    value comes back (the read costs the server one command, and the client
    one integer to parse). A read whose fill was not stored (the key is no
    longer ours), or whose transaction did not run, ends abandoned: its
    joiners read afresh, and its ``settled`` wakes the key's waiters, who
    read it themselves. On one server only: the fills are not the reads'.
    """

    __slots__ = ("_fills", "_keep")

    def __init__(self, reads: list[CachedRead], fills: list[tuple[str, bytes, int]],
                 fill_payload: bytes, keep: KeepShared) -> None:
        keys = _bulk_keys(reads)
        exists = b"".join([b"*%d\r\n$6\r\nEXISTS\r\n" % (len(keys) + 1), *keys])
        super().__init__(list(reads), b"".join([_CACHING, _MULTI, fill_payload, exists, _EXEC]),
                         len(fills) + 4)
        self._fills = fills
        self._keep = keep

    def sendable_parts(self) -> list[Request]:
        raise TypeError("a fill and its read are one transaction, for one server")

    def hand_out(self) -> None:
        replies = self.replies
        reads: list[CachedRead] = self.parts  # type: ignore[assignment]
        result = replies[-1]
        pttls: list[Any] = [None] * len(reads)  # None: not stored, the read is abandoned
        values: list[Any] = pttls
        if type(result) is list and len(result) == len(self._fills) + 1 and replies[1] == "OK":
            stored = {key: (value, ttl_ms) for (key, value, ttl_ms), reply
                      in zip(self._fills, result) if reply == "OK"}
            values, pttls = [], []
            for read in reads:
                value, ttl_ms = stored.get(read.key, _NOT_STORED)
                values.append(value)
                pttls.append(ttl_ms)
        for i in self._keep(reads, pttls, values, self.link, replies[0] == "OK"):
            reads[i].fail(_Abandoned(reads[i].key))


_NOT_STORED = (None, None)


class TrackedCache:
    """Local entries kept coherent with the server by RESP3 invalidations."""

    def __init__(self, transport: Transport, max_bytes: int, decode: Decoder,
                 local_cache: bool = True) -> None:
        self.store = LocalStore(max_bytes)
        self.waiters = Waiters()
        self.local_cache = local_cache
        self._transport = transport
        self._decode = decode
        self._inflight: dict[str, CachedRead] = {}
        # Keys this client is filling: the fill's own invalidation does not wake
        # their waiters, the handed-over value does (see ``filled``).
        self._filling: dict[str, int] = {}
        self._inflight_lock = threading.Lock()
        self.hits = 0  # reads answered locally here (the client counts its fast path)
        self.misses = 0
        self.invalidations = 0  # keys the server invalidated (a null one: 1)
        self.flushes = 0
        if local_cache:
            # Optional: a server that refuses tracking still serves, uncached.
            transport.add_connect_command("CLIENT", "TRACKING", "ON", "OPTIN", optional=True)
        transport.add_push_handler(self._on_push)
        transport.add_disconnect_handler(self._on_disconnect)
        transport.add_fork_handler(self._after_fork)

    def _after_fork(self) -> None:
        self.store.lock = threading.Lock()
        self._inflight_lock = threading.Lock()
        self.waiters.after_fork()

    # -- reads ---------------------------------------------------------------

    def read(self, key: str, ttl: float, timeout: Optional[float]) -> Steps[Entry]:
        """The entry for ``key``: local if fresh, else from the server (shared)."""
        entry = self.store.entries.get(key)
        if entry is not None and entry.expires > time.monotonic():
            entry.used = True
            self.hits += 1
            return entry
        return (yield from self.read_many([key], ttl, timeout))[key]

    def read_many(self, keys: list[str], ttl: float,
                  timeout: Optional[float]) -> Steps[dict[str, Entry]]:
        """The entries for ``keys`` (distinct): local where fresh, the others read
        from the server in one write, joining reads already in flight."""
        found: dict[str, Entry] = {}
        entries = self.store.entries
        inflight = self._inflight
        todo = keys
        while todo:
            now = time.monotonic()
            sent: list[CachedRead] = []
            joined: list[CachedRead] = []
            unread = []
            for key in todo:
                entry = entries.get(key)
                if entry is not None and entry.expires > now:
                    entry.used = True
                    self.hits += 1
                    found[key] = entry
                else:
                    unread.append(key)
            if unread:
                tracked = self.local_cache
                with self._inflight_lock:
                    for key in unread:
                        request = inflight.get(key)
                        if request is None or request.error is not None:
                            request = inflight[key] = CachedRead(key, ttl, self._on_reply,
                                                                 tracked, now)
                            sent.append(request)
                        else:
                            joined.append(request)
                self.misses += len(sent)
            if sent:
                try:
                    yield Send(self._send_form(sent), timeout)
                except BaseException as exc:
                    self._abandon(sent, exc)
                    raise
            todo = []
            for request in sent + joined:
                if not request.answered:
                    try:
                        yield Receive(request, timeout)
                    except _Abandoned:  # its sender gave up before writing it: read afresh
                        todo.append(request.key)
                        continue
                found[request.key] = _entry_of(request)
        return found

    def _abandon(self, requests: list[CachedRead], cause: BaseException) -> None:
        self._forget_inflight(requests)
        for request in requests:  # readers that joined one learn of it too
            request.fail(cause if isinstance(cause, Exception) else _Abandoned(request.key))

    def filling(self, keys: list[str]) -> None:
        """This client is about to fill ``keys``: hold their waiters until ``filled``."""
        filling = self._filling
        with self._inflight_lock:
            for key in keys:
                filling[key] = filling.get(key, 0) + 1

    def is_filling(self, key: str) -> bool:
        """Whether this client is filling ``key`` (or handing its value over)."""
        with self._inflight_lock:
            return key in self._filling

    def filled(self, keys: list[str]) -> None:
        """The fills of ``keys`` ended, their values kept or not: wake their waiters,
        who find the values locally if they were handed over."""
        filling = self._filling
        with self._inflight_lock:
            for key in keys:
                count = filling.pop(key, 0)
                if count > 1:
                    filling[key] = count - 1
        self.waiters.wake(keys)

    def reads_behind(self, keys: list[str], ttl: float) -> tuple[list[CachedRead], list[str]]:
        """For this client's fill of ``keys`` (each marked ``filling``): tracked reads
        of them, to be written right behind the fill, in the same write (see
        ``read_form`` and ``filled_read``), and the keys they leave out (a read
        of them is in flight already, or nothing is kept locally), whose
        ``filled`` is the filler's to run once the fill is answered. The reads
        keep the values locally, then run ``filled`` for each key; so does
        their failure. Reads that could not be written go to ``abandon_behind``."""
        reads: list[CachedRead] = []
        if self.local_cache:
            inflight = self._inflight
            now = time.monotonic()
            with self._inflight_lock:
                for key in keys:
                    if key not in inflight:
                        read = inflight[key] = CachedRead(key, ttl, self._on_reply, True, now)
                        read.settled = self.filled
                        reads.append(read)
        if not reads:
            return reads, keys
        reading = {read.key for read in reads}
        return reads, [key for key in keys if key not in reading]

    def read_form(self, reads: list[CachedRead]) -> Optional[Request]:
        """What goes on the wire for these reads behind a fill, if any."""
        return self._send_form(reads) if reads else None

    def _send_form(self, reads: list[CachedRead]) -> Request:
        """What goes on the wire for these reads (all tracked, or all not)."""
        if len(reads) == 1:
            return reads[0].alone()
        return SharedRead(reads, reads[0].expected == 5, self._keep_shared)

    def filled_read(self, reads: list[CachedRead], fills: list[tuple[str, bytes, int]],
                    fill_payload: bytes) -> FilledRead:
        """The reads behind a fill and the fill itself as one transaction (see
        :class:`FilledRead`)."""
        return FilledRead(reads, fills, fill_payload, self._keep_shared)

    def abandon_behind(self, reads: list[CachedRead]) -> None:
        """The write that carried ``reads`` (from ``reads_behind``) failed: they end
        unsent (their ``filled`` runs; readers that joined read afresh)."""
        if reads:
            self._abandon(reads, _Abandoned("the read behind a fill"))

    def _on_reply(self, request: Request) -> None:
        """Where frames are read: keep the entry; behind a fill, wake the waiters."""
        assert isinstance(request, CachedRead)
        try:
            self._store_reply(request)
        finally:
            request.settle()

    def _store_reply(self, request: CachedRead) -> None:
        """Turn the replies into an entry and store it."""
        self._forget_inflight([request])
        replies = _transaction_replies(request)
        tracked = len(replies) == 5
        if request.expected == 5 and not tracked:
            self._stop_caching(request.replies[0])
        pttl, raw = _transaction_result(replies)
        if isinstance(raw, BaseException):
            return  # the reader raises it
        link = request.link
        entry = self._new_entry(request, pttl, raw, link)
        if pttl == 0 or not tracked or replies[0] != "OK":
            return  # expiring now, or not tracked (so never invalidated): answer, don't keep
        with self.store.lock:
            if link is not None and link.alive:
                self.store.put(request.key, entry)

    def _keep_shared(self, reads: list[CachedRead], pttls: list[Any], values: list[Any],
                     link: Any, tracked: bool) -> list[int]:
        """Where frames are read (see :data:`KeepShared`): as ``_on_reply`` for each
        read, in one pass, with each lock taken once for all of them. The
        entries are all kept before any waiter is woken."""
        self._forget_inflight(reads)
        new_entry = self._new_entry
        made: list[CachedRead] = []
        kept: list[tuple[str, Entry]] = []
        behind: list[str] = []  # reads behind this client's fills: ``settled`` is our ``filled``
        odd: list[int] = []
        for i, read in enumerate(reads):
            read.link = link
            pttl = pttls[i]
            raw = values[i]
            if type(pttl) is not int or not (type(raw) is bytes or (raw is None
                                                                   and pttl == _ABSENT)):
                odd.append(i)
                continue
            try:
                entry = new_entry(read, pttl, raw, link)
            except BaseException as exc:  # its reader learns of it, as from ``complete``
                read.fail(exc)
                continue
            key = read.key
            made.append(read)
            if pttl != 0:  # else expiring now: answer, don't keep
                kept.append((key, entry))
            if read.settled is not None:
                read.settled = None
                behind.append(key)
        if tracked and kept:  # not tracked: never invalidated, so never kept
            store = self.store
            with store.lock:
                if link is not None and link.alive:
                    store.put_many(kept)
        if behind:
            self.filled(behind)
        # The first read last: a caller waits for its reads in order, and so
        # wakes once, to find the others answered, not once for each.
        for read in reversed(made):
            read.answer()
        return odd

    def _new_entry(self, read: CachedRead, pttl: int, raw: Optional[bytes], link: Any) -> Entry:
        """The entry that ``read`` answered with (made its ``entry``): ``raw`` for
        the key's TTL (``pttl`` ms, or none), at most the read's."""
        value, plain = self._decode(raw)
        ttl = read.ttl if pttl < 0 else min(pttl / 1000.0, read.ttl)
        size = ENTRY_OVERHEAD + 2 * len(read.key) + (2 * len(raw) if raw is not None else 0)
        entry = read.entry = Entry(raw, value, plain, read.sent_at + ttl, size, link)
        return entry

    def _forget_inflight(self, reads: list[CachedRead]) -> None:
        """These reads are answered: later reads of their keys go to the server."""
        inflight = self._inflight
        with self._inflight_lock:
            for read in reads:
                if inflight.get(read.key) is read:
                    del inflight[read.key]

    def _stop_caching(self, refusal: ResponseError) -> None:
        """The server will not track this connection (an ACL, a proxy): from now
        on every read goes to the server and waiters poll."""
        if self.local_cache:
            self.local_cache = False
            log.warning("the server refused client-side caching (%s): every get reads the "
                        "server, and waiters poll", refusal)

    # -- keeping coherent ----------------------------------------------------

    def drop(self, keys: list[str]) -> None:
        """Forget these keys locally and wake their waiters (own writes, say)."""
        with self.store.lock:
            self.store.discard(keys)
        if self._filling:
            with self._inflight_lock:
                keys = [key for key in keys if key not in self._filling]
        self.waiters.wake(keys)

    def flush(self) -> None:
        """Forget everything and wake every waiter."""
        with self.store.lock:
            self.store.clear()
        with self._inflight_lock:
            self._inflight.clear()
            self._filling.clear()
        self.flushes += 1
        self.waiters.wake(None)

    def drop_stale(self, still_good: StillGood) -> None:
        """Forget the entries that ``still_good(link, key)`` no longer vouches for
        (a cluster node's link was lost, or its node gave up the key's slot), and
        wake every waiter: some may wait on what those links would have pushed."""
        with self.store.lock:
            self.store.discard_where(lambda key, entry: not still_good(entry.link, key))
        self.flushes += 1
        self.waiters.wake(None)

    def _on_push(self, push: Push, link: Any = None) -> None:
        """An invalidation; ``link``: the cluster link it came through, whose entries
        alone a null one (FLUSHALL on that node) drops."""
        kind = push[0] if push else None
        if kind == b"invalidate" and len(push) >= 2:
            keys = push[1]
            # Keys, not pushes: the exchange merges a run of pushes into one.
            self.invalidations += 1 if keys is None else len(keys)
            if keys is None and link is not None:
                self.drop_stale(lambda entry_link, _key: entry_link is not link)
            elif keys is None:  # FLUSHALL / FLUSHDB
                self.flush()
            else:
                self.drop([k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
                           for k in keys])
        elif kind == b"tracking-redir-broken":
            self.flush()

    def _on_disconnect(self, cause: BaseException,
                       still_good: Optional[StillGood] = None) -> None:
        """A lost link: everything goes, or (on a cluster) what ``still_good`` condemns."""
        if still_good is None:
            self.flush()
        else:
            self.drop_stale(still_good)


def _transaction_replies(request: Request) -> list[Any]:
    """A read's replies, without a refused ``CLIENT CACHING YES``: the transaction
    behind it still ran, untracked."""
    replies = request.replies
    if request.expected == 5 and isinstance(replies[0], ResponseError):
        return replies[1:]
    return replies


def _entry_of(request: CachedRead) -> Entry:
    """The entry a read produced, or the error the server answered with, raised."""
    result = request.entry
    if result is None:  # not storable: raise what the server said
        _, value = _transaction_result(_transaction_replies(request))
        if isinstance(value, BaseException):
            raise value
        raise ResponseError(f"cached read of {request.key!r} was not answered: "
                            f"{request.replies!r}")
    return result


def _transaction_result(replies: list[Any]) -> tuple[Any, Any]:
    """(PTTL, GET) from the replies (EXEC's last), or (None, the error to raise)."""
    for reply in replies[:-1]:
        if isinstance(reply, ResponseError):
            return None, reply
    result = replies[-1] if len(replies) >= 4 else None
    if isinstance(result, ResponseError):
        return None, result
    if not isinstance(result, list) or len(result) != 2:
        return None, ResponseError("EXECABORT the cached read's transaction was aborted")
    pttl, value = result
    if not isinstance(pttl, int):
        return None, pttl if isinstance(pttl, ResponseError) else ResponseError(
            f"ERR unexpected PTTL reply {pttl!r:.60}")
    if isinstance(value, ResponseError):
        return None, value
    return pttl, value
