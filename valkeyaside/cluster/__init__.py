"""Valkey Cluster support: how keys map to hash slots.

``key_slot(key)`` is the slot that the server computes for a key (``CLUSTER
KEYSLOT``): CRC16 of the key, or of its hash tag, modulo ``SLOT_COUNT``.
"""

from ._slots import SLOT_COUNT, crc16, hash_tag, key_slot

__all__ = ["SLOT_COUNT", "crc16", "hash_tag", "key_slot"]


class ClusterConnection:  # replaced below
    def __init__(self, topology: object) -> None:
        raise NotImplementedError


class AsyncClusterConnection:
    def __init__(self, topology: object) -> None:
        raise NotImplementedError
