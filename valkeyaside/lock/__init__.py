"""Placeholder locking: the marker key, its keep-alive, and the Lua scripts."""

from ._gates import KeyGates
from ._locks import Locks
from ._marker import PLACEHOLDER_PREFIX, Keeper, Marker, StartKeeper
from ._scripts import ACQUIRE, DELETE_IF_HOLDER, SET_IF_HOLDER, SET_IF_HOLDER_MANY, Script

__all__ = [
    "ACQUIRE", "DELETE_IF_HOLDER", "PLACEHOLDER_PREFIX", "SET_IF_HOLDER", "SET_IF_HOLDER_MANY",
    "KeyGates", "Keeper", "Locks", "Marker", "Script", "StartKeeper",
]
