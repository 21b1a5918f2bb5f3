"""Valkey Cluster support: slots, routing, and the cluster transports.

``key_slot(key)`` is the slot that the server computes for a key (``CLUSTER
KEYSLOT``): CRC16 of the key, or of its hash tag, modulo ``SLOT_COUNT``.
``ClusterConnection`` (threaded) and ``AsyncClusterConnection`` (asyncio)
put a cluster behind the one-transport interface that the shared algorithm
uses; ``_router`` is what they share.
"""

from ._aio import AsyncClusterConnection
from ._connection import ClusterConnection
from ._slots import SLOT_COUNT, crc16, hash_tag, key_slot

__all__ = ["SLOT_COUNT", "AsyncClusterConnection", "ClusterConnection", "crc16", "hash_tag",
           "key_slot"]
