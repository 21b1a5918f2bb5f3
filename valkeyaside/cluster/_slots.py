"""Key to hash slot, exactly as the server computes it.

Valkey (``cluster.c``, ``keyHashSlot``) hashes a key with CRC16 and keeps the
low 14 bits: ``crc16(key) & 16383``, the same as ``mod 16384``. When the key
holds a hash tag, only the tag is hashed: the bytes between the first ``{``
and the first ``}`` after it, provided there is at least one byte between
them. Otherwise (no ``{``, no ``}`` after it, or ``{}``) the whole key is
hashed; the server does not look for a later tag, so ``"{}{user}"`` hashes
the whole key and ``"{user}{x}"`` hashes ``user``.

The CRC is CRC-16/XMODEM (CCITT polynomial 0x1021, initial value 0, no
reflection, no final xor), the table-driven variant of Valkey's ``crc16.c``:
``crc16(b"123456789") == 0x31C3``. The standard library computes this very
CRC in C (``binascii.crc_hqx`` with an initial value of 0), several times
faster than a Python loop over ``_TABLE``; ``crc16_table`` is that loop, the
definition the tests hold ``crc16`` to.

Keys are ``bytes`` (or any bytes-like object) as sent, or ``str``, which is
sent as UTF-8 (strict, as the RESP3 encoder does).
"""

from __future__ import annotations

from binascii import crc_hqx
from typing import Tuple, Union

__all__ = ["SLOT_COUNT", "crc16", "crc16_table", "hash_tag", "key_slot"]

SLOT_COUNT = 16384
"""Number of hash slots in a Valkey Cluster (slots are 0 .. 16383)."""

_SLOT_MASK = SLOT_COUNT - 1

Key = Union[str, bytes, bytearray, memoryview]


def _make_table() -> Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE: Tuple[int, ...] = _make_table()
"""CRC-16/XMODEM lookup table, one entry per byte value (``crc16tab`` in
Valkey's ``crc16.c``: ``_TABLE[1] == 0x1021``, ``_TABLE[255] == 0x1EF0``)."""


def crc16_table(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/XMODEM of ``data`` with the lookup table, byte by byte, as
    ``crc16.c`` does. The reference for ``crc16``, which gives the same value
    faster."""
    crc = 0
    table = _TABLE
    for byte in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/XMODEM of ``data`` (``binascii.crc_hqx`` with initial value 0)."""
    return crc_hqx(data, 0)


def _as_bytes(key: Key) -> bytes | bytearray | memoryview:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return key
    raise TypeError(f"a key is str or bytes, not {type(key).__name__}")


def hash_tag(key: Key) -> bytes:
    """The bytes of ``key`` that decide its slot: its hash tag (between the
    first ``{`` and the first ``}`` after it, when not empty), else the whole
    key."""
    data = bytes(_as_bytes(key))
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            return data[start + 1 : end]
    return data


def key_slot(key: Key) -> int:
    """The hash slot (0 .. 16383) of ``key``, the value of ``CLUSTER KEYSLOT key``.

    ``str`` keys are encoded as UTF-8; a ``str`` that UTF-8 cannot encode
    (a lone surrogate) raises ``UnicodeEncodeError``, as sending it would.
    """
    data = key.encode("utf-8") if isinstance(key, str) else _as_bytes(key)
    if isinstance(data, memoryview):
        data = data.tobytes()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            return crc_hqx(data[start + 1 : end], 0) & _SLOT_MASK
    return crc_hqx(data, 0) & _SLOT_MASK
