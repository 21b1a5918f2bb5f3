"""Property tests of the RESP3 codec: round trips through a test-side writer, and
arbitrary or damaged input that may only ever give values, NEED_DATA or ProtocolError."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from resp3_writer import canonical, write

from valkeyaside.errors import ResponseError
from valkeyaside.resp3 import NEED_DATA, Parser, ProtocolError, Push, encode_command

SETTINGS = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SETTINGS = settings(
    deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow]
)

# --------------------------------------------------------------------------- strategies

texts = st.text(max_size=12)
big_ints = st.integers(min_value=-(10**60), max_value=10**60)
ints = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), big_ints)
errors = texts.map(lambda message: ResponseError("ERR " + message))

hashables = st.one_of(
    st.binary(max_size=12),
    texts,
    ints,
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    errors,
)
scalars = st.one_of(hashables, st.floats())  # NaN only outside sets and map keys

values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.sets(hashables, max_size=5),
        st.dictionaries(hashables, children, max_size=5),
    ),
    max_leaves=25,
)
#: Seeds of the Random that picks among equivalent encodings (fast to draw and to shrink).
seeds = st.integers(min_value=0, max_value=2**32 - 1)
top_level_values = st.one_of(values, st.lists(values, max_size=4).map(Push))
small_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.sets(hashables, max_size=3)),
    max_leaves=4,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (in any order, repeats allowed)."""
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in zip(points, points[1:])]


def cut_points() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=4096), max_size=12)


# --------------------------------------------------------------------------- round trips


@SETTINGS
@given(value=top_level_values, seed=seeds, cuts=cut_points())
def test_written_value_parses_back(value: Any, seed: int, cuts: list[int]) -> None:
    raw = write(value, random.Random(seed))
    parser = Parser()
    pieces = split(raw, [cut % (len(raw) + 1) for cut in cuts])
    for piece in pieces[:-1]:
        parser.feed(piece)
        assert parser.next_frame() is NEED_DATA
    parser.feed(pieces[-1])
    assert canonical(parser.next_frame()) == canonical(value)
    assert parser.next_frame() is NEED_DATA


@SETTINGS
@given(
    frames=st.lists(top_level_values, min_size=1, max_size=3),
    seed=seeds,
    cuts=cut_points(),
)
def test_stream_of_written_values_parses_back(
    frames: list[Any], seed: int, cuts: list[int]
) -> None:
    rng = random.Random(seed)
    raw = b"".join(write(value, rng) for value in frames)
    parser = Parser()
    parsed = []
    for piece in split(raw, [cut % (len(raw) + 1) for cut in cuts]):
        parser.feed(piece)
        for _ in range(len(frames) + 1):
            result = parser.next_frame()
            if result is NEED_DATA:
                break
            parsed.append(result)
    assert [canonical(value) for value in parsed] == [canonical(value) for value in frames]


# Shrinking a failure of this test takes minutes; the example is small enough unshrunk.
@settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(
    frames=st.lists(small_values, min_size=1, max_size=8),
    seed=seeds,
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8),
    asks=st.lists(st.booleans(), min_size=1, max_size=8),
)
# "+a" asked; "b\r\n:" fed, not asked; "1\r" fed: "ab" must come out now.
@example(frames=["ab", 1], seed=None, sizes=[2, 3, 2], asks=[True, False, True])
# "*2\r\n:1\r\n" asked; ":2\r\n" fed, not asked; "+" fed: [1, 2] must come out now.
@example(frames=[[1, 2], "OK"], seed=None, sizes=[8, 4, 1], asks=[True, False, True])
def test_complete_frames_come_out_whenever_asked(
    frames: list[Any], seed: int | None, sizes: list[int], asks: list[bool]
) -> None:
    # Several feeds may come before a next_frame; every complete frame must then come out.
    rng = None if seed is None else random.Random(seed)
    encoded = [write(value, rng) for value in frames]
    ends = list(itertools.accumulate(len(data) for data in encoded))
    raw = b"".join(encoded)
    parser = Parser()
    parsed: list[Any] = []
    fed = 0
    for index, size in enumerate(itertools.cycle(sizes)):
        parser.feed(raw[fed : fed + size])
        fed = min(fed + size, len(raw))
        if fed < len(raw) and not asks[index % len(asks)]:
            continue
        while True:
            result = parser.next_frame()
            if result is NEED_DATA:
                break
            parsed.append(result)
            assert len(parsed) <= len(frames)
        assert len(parsed) == sum(1 for end in ends if end <= fed), f"{fed} of {len(raw)} fed"
        if fed == len(raw):
            break
    assert [canonical(value) for value in parsed] == [canonical(value) for value in frames]


@SETTINGS
@given(value=values)
def test_plain_encoding_parses_back_fed_whole(value: Any) -> None:
    parser = Parser()
    parser.feed(write(value))
    assert canonical(parser.next_frame()) == canonical(value)


# --------------------------------------------------------------------------- damaged input

LIMITS = [
    {},
    {"max_bulk_len": 64, "max_depth": 4, "max_aggregate_len": 8, "max_line_len": 32},
]

# Fragments that make random input look like RESP3 often enough to go deep.
TOKENS = [
    b"\r\n", b"\r", b"\n", b"*", b"$", b"%", b"~", b">", b"|", b"=", b"!", b"-", b"+", b":",
    b"(", b",", b"#", b"_", b";", b".", b"?", b"0", b"1", b"2", b"3", b"9", b"-1", b"t", b"f",
    b"x", b"txt:", b"inf", b"nan", b"\xff", b"*1\r\n", b"$?\r\n", b";1\r\na\r\n", b":1\r\n",
    b"%1\r\n", b"|1\r\n", b".\r\n", b";0\r\n", b"*?\r\n", b"~?\r\n", b"%?\r\n",
]  # fmt: skip


def check_sticky(parser: Parser) -> None:
    for _ in range(2):
        try:
            parser.next_frame()
        except ProtocolError:
            continue
        raise AssertionError("a ProtocolError was not sticky")


def drive(raw: bytes, pieces: list[bytes], limits: dict[str, int]) -> None:
    """Feed ``pieces``; every call may only give a value, NEED_DATA or ProtocolError.

    A parser call that never returns is caught by the suite's per-test timeout.
    """
    parser = Parser(**limits)
    budget = len(raw) + 2 * len(pieces) + 2  # a frame takes at least 3 bytes
    for piece in pieces:
        try:
            parser.feed(piece)  # may refuse bytes at once (a line over max_line_len)
        except ProtocolError:
            check_sticky(parser)
            return
        while True:
            budget -= 1
            assert budget >= 0, "more frames than the input can hold"
            try:
                result = parser.next_frame()
            except ProtocolError:
                check_sticky(parser)
                return
            if result is NEED_DATA:
                break
            assert canonical(result)[0] != "unexpected type", result


@FUZZ_SETTINGS
@given(
    raw=st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(TOKENS)).map(b"".join)),
    cuts=cut_points(),
    limits=st.sampled_from(LIMITS),
)
def test_arbitrary_bytes_give_values_need_data_or_protocol_error(
    raw: bytes, cuts: list[int], limits: dict[str, int]
) -> None:
    drive(raw, split(raw, cuts), limits)


MUTATIONS = ["flip", "delete", "insert", "truncate", "duplicate", "swap"]


def mutate(raw: bytes, operations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(raw)
    for name, where, byte in operations:
        if not data:
            data.append(byte)
            continue
        index = where % len(data)
        if name == "flip":
            data[index] = byte
        elif name == "delete":
            del data[index]
        elif name == "insert":
            data.insert(index, byte)
        elif name == "truncate":
            del data[index:]
        elif name == "duplicate":
            data[index:index] = data[index : index + 8]
        else:
            other = (where // 7) % len(data)
            data[index], data[other] = data[other], data[index]
    return bytes(data)


interesting_bytes = st.one_of(
    st.integers(min_value=0, max_value=255), st.sampled_from(list(b"\r\n*$%~>|;.?-:0123456789"))
)


@FUZZ_SETTINGS
@given(
    value=top_level_values,
    seed=seeds,
    operations=st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(min_value=0), interesting_bytes),
        min_size=1,
        max_size=3,
    ),
    cuts=cut_points(),
    limits=st.sampled_from(LIMITS),
)
def test_damaged_frames_give_values_need_data_or_protocol_error(
    value: Any,
    seed: int,
    operations: list[tuple[str, int, int]],
    cuts: list[int],
    limits: dict[str, int],
) -> None:
    raw = mutate(write(value, random.Random(seed)), operations)
    drive(raw, split(raw, cuts), limits)


# --------------------------------------------------------------------------- encoder

arguments = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.binary(max_size=20).map(memoryview),
    st.integers(),
    st.floats(),
)


def expected_bytes(argument: Any) -> bytes:
    if isinstance(argument, str):
        return argument.encode("utf-8")
    if isinstance(argument, (bytes, bytearray, memoryview)):
        return bytes(argument)
    return b"%d" % argument


@SETTINGS
@given(args=st.lists(arguments, min_size=1, max_size=8), cuts=cut_points())
def test_encode_command_parses_back_as_bulk_strings(args: list[Any], cuts: list[int]) -> None:
    raw = encode_command(*args)
    assert type(raw) is bytes
    parser = Parser()
    results = []
    for piece in split(raw, [cut % (len(raw) + 1) for cut in cuts]):
        parser.feed(piece)
        results.append(parser.next_frame())
    assert all(result is NEED_DATA for result in results[:-1])
    parsed = results[-1]
    assert type(parsed) is list
    assert len(parsed) == len(args)
    for argument, data in zip(args, parsed):
        assert type(data) is bytes
        if isinstance(argument, float):
            number = float(data.decode("ascii"))
            assert number == argument or (number != number and argument != argument)
        else:
            assert data == expected_bytes(argument)
    assert parser.next_frame() is NEED_DATA
