"""valkeyaside.cluster.key_slot: the slot the server computes for a key.

Known vectors (CRC-16/XMODEM's check value, the cluster spec's examples and
hash tag edge cases), then a property test against a real cluster-enabled
server's ``CLUSTER KEYSLOT`` for arbitrary text and binary keys, with and
without braces.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from server import RawConnection, ValkeyServer, free_port

from valkeyaside.cluster import SLOT_COUNT, crc16, hash_tag, key_slot
from valkeyaside.cluster._slots import _TABLE, crc16_table

# key -> slot, from the cluster specification and checked against the server below.
VECTORS = {
    "": 0,
    "foo": 12182,
    "bar": 5061,
    "123456789": 0x31C3 & (SLOT_COUNT - 1),
    "user1000": 3443,
    "{user1000}.following": 3443,
    "{user1000}.followers": 3443,
    "foo{}{bar}": key_slot(b"foo{}{bar}"),  # empty first tag: the whole key
}

TAGS = [
    ("{user1000}.following", b"user1000"),
    ("foo{}{bar}", b"foo{}{bar}"),  # the first tag is empty: no later tag is looked for
    ("foo{{bar}}zap", b"{bar"),
    ("foo{bar}{zap}", b"bar"),
    ("{}", b"{}"),
    ("{", b"{"),
    ("}{", b"}{"),
    ("a}b{c}", b"c"),
    ("{a", b"{a"),
    ("x{é}y", "é".encode()),
]


def test_crc16_check_value_and_table() -> None:
    assert crc16(b"123456789") == 0x31C3  # CRC-16/XMODEM's check value
    assert crc16_table(b"123456789") == 0x31C3
    assert crc16(b"") == 0
    # crc16tab of Valkey's crc16.c: first entries, a middle one and the last.
    assert _TABLE[:4] == (0x0000, 0x1021, 0x2042, 0x3063)
    assert _TABLE[128] == 0x9188
    assert _TABLE[255] == 0x1EF0
    assert len(_TABLE) == 256


def test_known_slots() -> None:
    assert key_slot("foo") == 12182
    assert key_slot("bar") == 5061
    assert key_slot("123456789") == 12739
    assert key_slot("{user1000}.following") == key_slot("user1000") == 3443
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")


@pytest.mark.parametrize(("key", "tag"), TAGS)
def test_hash_tag(key: str, tag: bytes) -> None:
    assert hash_tag(key) == tag
    assert key_slot(key) == crc16(tag) % SLOT_COUNT


def test_str_bytes_and_buffers_agree() -> None:
    for key in ("user:é:42", "{ünï}code", "plain"):
        data = key.encode()
        expected = key_slot(data)
        assert key_slot(key) == expected
        assert key_slot(bytearray(data)) == expected
        assert key_slot(memoryview(data)) == expected


def test_refuses_other_types_and_unencodable_text() -> None:
    with pytest.raises(TypeError):
        key_slot(42)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        key_slot("\ud800")


@given(st.binary(max_size=64))
def test_crc16_matches_the_table_driven_reference(data: bytes) -> None:
    assert crc16(data) == crc16_table(data)
    assert 0 <= key_slot(data) < SLOT_COUNT


# -- against the server ------------------------------------------------------------


@pytest.fixture(scope="module")
def keyslot_conn() -> Iterator[RawConnection]:
    """A raw connection to one cluster-enabled node (no slots needed for KEYSLOT,
    which every server of the matrix has)."""
    port = free_port()
    while port > 55535:  # the cluster bus listens 10,000 above it (no cluster-port before 7.0)
        port = free_port()
    with ValkeyServer(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
                      port=port) as server, server.connect() as conn:
        yield conn


@pytest.mark.parametrize("key", list(VECTORS))
def test_vectors_match_the_server(keyslot_conn: RawConnection, key: str) -> None:
    assert keyslot_conn.execute("CLUSTER", "KEYSLOT", key) == VECTORS[key] == key_slot(key)


# Keys built from pieces that stress the hash tag rules, and arbitrary ones.
_PIECES = st.sampled_from([b"{", b"}", b"{}", b"a", b"tag", b"\x00", b"\xff", b"\xc3\xa9", b" "])
_BRACED = st.lists(st.one_of(_PIECES, st.binary(max_size=4)), max_size=10).map(b"".join)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
_BRACED_TEXT = st.lists(st.one_of(st.sampled_from(["{", "}", "é", "x"]), _TEXT), max_size=6).map(
    "".join
)
KEYS = st.one_of(st.binary(max_size=40), _BRACED, _TEXT, _BRACED_TEXT)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(KEYS)
@example(b"{}{x}")
@example("{é}")
@example(b"\xff{\x00}")
def test_matches_cluster_keyslot(keyslot_conn: RawConnection, key: str | bytes) -> None:
    assert key_slot(key) == keyslot_conn.execute("CLUSTER", "KEYSLOT", key)
