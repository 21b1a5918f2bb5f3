"""The client-side cache: local entries kept coherent by RESP3 invalidations."""

from ._store import Entry, LocalStore
from ._tracking import CachedRead, TrackedCache
from ._waiters import Waiter, Waiters

__all__ = ["CachedRead", "Entry", "LocalStore", "TrackedCache", "Waiter", "Waiters"]
