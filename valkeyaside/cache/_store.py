"""Local entries: values with a monotonic expiry, bounded in bytes.

Reading an entry takes no lock: a dict lookup, an expiry check and setting
the entry's ``used`` flag, which the evictor reads. Eviction is the CLOCK
approximation of least-recently-used: the oldest entry goes unless it was
used since it was last looked at, in which case it gets a second chance.
Writers (the reader thread storing replies, invalidations, eviction) hold
``lock``, so a flush can never race with a store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional

__all__ = ["ENTRY_OVERHEAD", "Entry", "LocalStore"]

#: Bytes charged per entry beyond its key and value: the entry object, the
#: dict slot and the decoded copy, roughly, as CPython lays them out.
ENTRY_OVERHEAD = 200


class Entry:
    """A cached reply. ``value`` is what ``get`` returns; ``raw`` what the server sent."""

    __slots__ = ("expires", "link", "plain", "raw", "size", "used", "value")

    def __init__(self, raw: Optional[bytes], value: Any, plain: bool, expires: float,
                 size: int, link: Any = None) -> None:
        self.raw = raw
        self.value = value
        self.plain = plain  # a final answer: a hit may return ``value`` as it is
        self.expires = expires
        self.size = size
        self.used = False
        self.link = link  # read through it: good only while it lives and serves the key


class LocalStore:
    """A dict of :class:`Entry` bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("cache_max_bytes must be positive")
        self.max_bytes = max_bytes
        # Ordered by insertion (and second chances): the evictor takes from the
        # front in O(1); a plain dict would rescan its deleted front slots.
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.lock = threading.Lock()

    def put(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (caller holds ``lock``), evicting until it fits."""
        self.put_many([(key, entry)])

    def put_many(self, items: list[tuple[str, Entry]]) -> None:
        """Store each ``(key, entry)`` (caller holds ``lock``), evicting until each
        fits: a batch's worth of keys at the cost of a loop, not of a call per key."""
        entries = self.entries
        max_bytes = self.max_bytes
        for key, entry in items:
            old = entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            if entry.size > max_bytes:
                continue  # larger than the whole cache: served once, never kept
            self.bytes += entry.size
            entries[key] = entry
            if self.bytes > max_bytes:
                self._evict()

    def _evict(self) -> None:
        entries = self.entries
        # Each pass either evicts or clears a used flag, so this ends.
        while self.bytes > self.max_bytes and entries:
            key, entry = entries.popitem(last=False)
            if entry.used:
                entry.used = False
                entries[key] = entry  # second chance: to the back of the line
            else:
                self.bytes -= entry.size
                self.evictions += 1

    def discard(self, keys: Iterable[str]) -> int:
        """Drop these keys (caller holds ``lock``); return how many were held."""
        dropped = 0
        for key in keys:
            entry = self.entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry.size
                dropped += 1
        return dropped

    def discard_where(self, stale: Callable[[str, Entry], bool]) -> list[str]:
        """Drop the entries that ``stale(key, entry)`` condemns (caller holds
        ``lock``); return their keys."""
        keys = [key for key, entry in self.entries.items() if stale(key, entry)]
        self.discard(keys)
        return keys

    def clear(self) -> None:
        """Drop everything (caller holds ``lock``)."""
        self.entries.clear()
        self.bytes = 0
