"""The RESP3 parser: every frame type fed whole, byte by byte and with trailing data;
malformed input; limits; linear time on large replies."""

from __future__ import annotations

import contextlib
import gc
import time
import tracemalloc
from typing import Any, Callable

import pytest
from resp3_writer import canonical, frame, write

import valkeyaside
import valkeyaside.errors
from valkeyaside.errors import ResponseError
from valkeyaside.resp3 import NEED_DATA, Parser, ProtocolError, Push

# --------------------------------------------------------------------------- helpers

#: Bytes fed after a case: one whole frame, then the start of another.
TRAILER = b":42\r\n$5\r\nhel"
TRAILER_REST = b"lo\r\n"


def assert_same(actual: Any, expected: Any) -> None:
    """Equal values of exactly the same types (NaN equals NaN, True is not 1)."""
    assert actual is not NEED_DATA, "got NEED_DATA, expected a value"
    assert canonical(actual) == canonical(expected)


def check_frame(raw: bytes, expected: Any, **limits: int) -> None:
    """Parse ``raw`` fed whole, byte by byte, and followed by trailing data."""
    # Whole, as bytes.
    parser = Parser(**limits)
    assert parser.next_frame() is NEED_DATA
    parser.feed(raw)
    assert_same(parser.next_frame(), expected)
    assert parser.next_frame() is NEED_DATA

    # Byte by byte, as memoryview slices: no value before the last byte.
    parser = Parser(**limits)
    view = memoryview(raw)
    for index in range(len(raw) - 1):
        parser.feed(view[index : index + 1])
        result = parser.next_frame()
        assert result is NEED_DATA, (
            f"value {result!r} after {index + 1} of {len(raw)} bytes of {raw[:80]!r}"
        )
    parser.feed(view[len(raw) - 1 :])
    assert_same(parser.next_frame(), expected)
    assert parser.next_frame() is NEED_DATA

    # With trailing data, as one bytearray: the following frames come out too.
    parser = Parser(**limits)
    parser.feed(bytearray(raw + TRAILER))
    assert_same(parser.next_frame(), expected)
    assert_same(parser.next_frame(), 42)
    assert parser.next_frame() is NEED_DATA
    parser.feed(TRAILER_REST)
    assert_same(parser.next_frame(), b"hello")
    assert parser.next_frame() is NEED_DATA


def feed_then_next(parser: Parser, data: bytes) -> Any:
    """Feed ``data`` and return the next frame.

    A ProtocolError may come from either call: the parser may refuse bytes as
    they are fed (a line over ``max_line_len``) or when a frame is asked for.
    """
    parser.feed(data)
    return parser.next_frame()


def assert_sticky(parser: Parser) -> None:
    """After a ProtocolError, every later next_frame raises again, even after valid data."""
    with pytest.raises(ProtocolError):
        parser.next_frame()
    with contextlib.suppress(ProtocolError):
        parser.feed(b"+OK\r\n:1\r\n")
    with pytest.raises(ProtocolError):
        parser.next_frame()


def check_error(raw: bytes, **limits: int) -> None:
    """``raw`` raises ProtocolError fed whole and byte by byte, and the error is sticky."""
    parser = Parser(**limits)
    with pytest.raises(ProtocolError):
        feed_then_next(parser, raw)
    assert_sticky(parser)

    parser = Parser(**limits)
    for index in range(len(raw)):
        try:
            result = feed_then_next(parser, raw[index : index + 1])
        except ProtocolError:
            break
        assert result is NEED_DATA, f"value {result!r} after {index + 1} bytes of {raw!r}"
    else:
        pytest.fail(f"no ProtocolError after all {len(raw)} bytes of {raw!r} fed one by one")
    assert_sticky(parser)


def raises_at_once(raw: bytes, **limits: int) -> None:
    """``raw`` (a header, without its body) raises ProtocolError without waiting for more."""
    parser = Parser(**limits)
    with pytest.raises(ProtocolError):
        feed_then_next(parser, raw)
    assert_sticky(parser)


# --------------------------------------------------------------------------- valid frames

BINARY = bytes(range(256)) + b"\r\n\r\n$3\r\nfoo\r\n" + b"\x00\r" + b"\n\xff"
LARGE = bytes(range(256)) * 280  # 71,680 bytes: over 64 KiB
ONES_5000 = (10**5000 - 1) // 9  # 5000 ones, built without int <-> str conversion

VALID = [
    # Simple strings, bulk strings, verbatim strings.
    pytest.param(b"+OK\r\n", "OK", id="simple"),
    pytest.param(b"+\r\n", "", id="simple-empty"),
    pytest.param(b"+caf\xc3\xa9 \xe2\x82\xac\r\n", "caf\u00e9 \u20ac", id="simple-utf8"),
    pytest.param(b"$5\r\nhello\r\n", b"hello", id="bulk"),
    pytest.param(b"$0\r\n\r\n", b"", id="bulk-empty"),
    pytest.param(frame(b"$", BINARY), BINARY, id="bulk-binary-crlf-inside"),
    pytest.param(frame(b"$", LARGE), LARGE, id="bulk-large"),
    pytest.param(b"=15\r\ntxt:Some string\r\n", "Some string", id="verbatim"),
    pytest.param(b"=4\r\ntxt:\r\n", "", id="verbatim-empty"),
    pytest.param(b"=10\r\nmkd:# a\r\nb\r\n", "# a\r\nb", id="verbatim-mkd-crlf"),
    pytest.param(frame(b"=", "txt:\u00e9t\u00e9".encode()), "\u00e9t\u00e9", id="verbatim-utf8"),
    # Integers, big numbers, doubles, booleans.
    pytest.param(b":0\r\n", 0, id="int-zero"),
    pytest.param(b":1000\r\n", 1000, id="int"),
    pytest.param(b":-123\r\n", -123, id="int-negative"),
    pytest.param(b":+5\r\n", 5, id="int-plus-sign"),
    pytest.param(b":9223372036854775807\r\n", 2**63 - 1, id="int-max"),
    pytest.param(b":-9223372036854775808\r\n", -(2**63), id="int-min"),
    pytest.param(
        b"(3492890328409238509324850943850943825024385\r\n",
        3492890328409238509324850943850943825024385,
        id="big-number",
    ),
    pytest.param(
        b"(-3492890328409238509324850943850943825024385\r\n",
        -3492890328409238509324850943850943825024385,
        id="big-number-negative",
    ),
    pytest.param(b"(0\r\n", 0, id="big-number-zero"),
    pytest.param(b",1.23\r\n", 1.23, id="double"),
    pytest.param(b",10\r\n", 10.0, id="double-integral"),
    pytest.param(b",-1.5e3\r\n", -1500.0, id="double-exponent"),
    pytest.param(b",1E2\r\n", 100.0, id="double-exponent-upper"),
    pytest.param(b",+2.5\r\n", 2.5, id="double-plus-sign"),
    pytest.param(b",-0.0\r\n", -0.0, id="double-negative-zero"),
    pytest.param(b",inf\r\n", float("inf"), id="double-inf"),
    pytest.param(b",-inf\r\n", float("-inf"), id="double-minus-inf"),
    pytest.param(b",nan\r\n", float("nan"), id="double-nan"),
    pytest.param(b"#t\r\n", True, id="true"),
    pytest.param(b"#f\r\n", False, id="false"),
    # Nulls.
    pytest.param(b"_\r\n", None, id="null"),
    pytest.param(b"$-1\r\n", None, id="resp2-null-bulk"),
    pytest.param(b"*-1\r\n", None, id="resp2-null-array"),
    # Errors are values.
    pytest.param(b"-ERR boom\r\n", ResponseError("ERR boom"), id="simple-error"),
    pytest.param(
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        id="simple-error-wrongtype",
    ),
    pytest.param(
        b"!21\r\nSYNTAX invalid syntax\r\n", ResponseError("SYNTAX invalid syntax"), id="blob-error"
    ),
    pytest.param(b"!10\r\nERR a\r\nbcd\r\n", ResponseError("ERR a\r\nbcd"), id="blob-error-crlf"),
    # Aggregates.
    pytest.param(b"*0\r\n", [], id="array-empty"),
    pytest.param(b"*2\r\n$3\r\nfoo\r\n:7\r\n", [b"foo", 7], id="array"),
    pytest.param(
        b"*3\r\n*2\r\n:1\r\n:2\r\n*0\r\n*1\r\n*1\r\n_\r\n",
        [[1, 2], [], [[None]]],
        id="array-nested",
    ),
    pytest.param(b"*3\r\n$-1\r\n*-1\r\n_\r\n", [None, None, None], id="array-of-nulls"),
    pytest.param(b"*2\r\n-ERR a\r\n:1\r\n", [ResponseError("ERR a"), 1], id="array-with-error"),
    pytest.param(b"~0\r\n", set(), id="set-empty"),
    pytest.param(b"~3\r\n+a\r\n:1\r\n#f\r\n", {"a", 1, False}, id="set"),
    pytest.param(b"~2\r\n:1\r\n:1\r\n", {1}, id="set-duplicates"),
    pytest.param(b"~2\r\n*0\r\n:1\r\n", [[], 1], id="set-unhashable-is-list"),
    pytest.param(b"~2\r\n:1\r\n%1\r\n+k\r\n+v\r\n", [1, {"k": "v"}], id="set-with-map-is-list"),
    pytest.param(b"~1\r\n~0\r\n", [set()], id="set-with-set-is-list"),
    pytest.param(b"%0\r\n", {}, id="map-empty"),
    pytest.param(
        b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n,2.5\r\n", {"first": 1, b"second": 2.5}, id="map"
    ),
    pytest.param(
        b"%2\r\n:1\r\n*2\r\n%1\r\n+k\r\n~1\r\n#t\r\n_\r\n#f\r\n-ERR x\r\n",
        {1: [{"k": {True}}, None], False: ResponseError("ERR x")},
        id="map-nested",
    ),
    pytest.param(b"%1\r\n_\r\n:1\r\n", {None: 1}, id="map-null-key"),
    # Pushes.
    pytest.param(
        b">2\r\n$10\r\ninvalidate\r\n*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n",
        Push([b"invalidate", [b"foo", b"bar"]]),
        id="push-invalidate",
    ),
    pytest.param(
        b">2\r\n$10\r\ninvalidate\r\n_\r\n", Push([b"invalidate", None]), id="push-invalidate-null"
    ),
    pytest.param(
        b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n", Push(["message", "chan", b"hi"]), id="push"
    ),
    pytest.param(b">0\r\n", Push([]), id="push-empty"),
    # Attributes: read and discarded, the value they precede is returned.
    pytest.param(
        b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
        b"*2\r\n:2039123\r\n:9543892\r\n",
        [2039123, 9543892],
        id="attribute-top-level",
    ),
    pytest.param(b"|0\r\n:1\r\n", 1, id="attribute-empty"),
    pytest.param(b"|1\r\n+a\r\n+b\r\n_\r\n", None, id="attribute-before-null"),
    pytest.param(b"|1\r\n+a\r\n+b\r\n-ERR x\r\n", ResponseError("ERR x"), id="attribute-error"),
    pytest.param(b"|1\r\n+a\r\n+b\r\n>1\r\n+x\r\n", Push(["x"]), id="attribute-before-push"),
    pytest.param(b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n", [1, 2], id="attribute-in-array"),
    pytest.param(b"*2\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n", [1, 2], id="attribute-last-in-array"),
    pytest.param(
        b"%1\r\n|1\r\n+a\r\n+b\r\n+k\r\n|1\r\n+c\r\n*1\r\n:9\r\n:1\r\n",
        {"k": 1},
        id="attribute-on-map-key-and-value",
    ),
    pytest.param(b"~1\r\n|0\r\n+m\r\n", {"m"}, id="attribute-in-set"),
    pytest.param(
        b"|1\r\n|1\r\n+x\r\n+y\r\n+a\r\n|1\r\n+p\r\n+q\r\n+b\r\n:3\r\n", 3, id="attribute-nested"
    ),
    pytest.param(
        b"|1\r\n+a\r\n*?\r\n:1\r\n.\r\n$?\r\n;2\r\nok\r\n;0\r\n",
        b"ok",
        id="attribute-streamed-value",
    ),
    # Streamed strings and aggregates.
    pytest.param(
        b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
        b"Hello word",
        id="streamed-string",
    ),
    pytest.param(b"$?\r\n;0\r\n", b"", id="streamed-string-empty"),
    pytest.param(b"$?\r\n;4\r\n\r\n\r\n\r\n;0\r\n", b"\r\n\r\n", id="streamed-string-crlf-inside"),
    pytest.param(b"*?\r\n:1\r\n:2\r\n.\r\n", [1, 2], id="streamed-array"),
    pytest.param(b"*?\r\n.\r\n", [], id="streamed-array-empty"),
    pytest.param(b"%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n", {"a": 1, "b": 2}, id="streamed-map"),
    pytest.param(b"%?\r\n.\r\n", {}, id="streamed-map-empty"),
    pytest.param(b"~?\r\n+a\r\n+b\r\n.\r\n", {"a", "b"}, id="streamed-set"),
    pytest.param(b"~?\r\n*0\r\n.\r\n", [[]], id="streamed-set-unhashable-is-list"),
    pytest.param(
        b"*?\r\n*?\r\n.\r\n$?\r\n;1\r\na\r\n;0\r\n%?\r\n+k\r\n~?\r\n:1\r\n.\r\n.\r\n*1\r\n_\r\n.\r\n",
        [[], b"a", {"k": {1}}, [None]],
        id="streamed-nested",
    ),
    pytest.param(
        b"*2\r\n$?\r\n;1\r\nx\r\n;0\r\n*?\r\n.\r\n", [b"x", []], id="streamed-inside-array"
    ),
    # Writer-built frames.
    pytest.param(
        write([b"a", "b", 1, 2.5, True, None, {b"k": [set(), {}]}, ResponseError("ERR z")]),
        [b"a", "b", 1, 2.5, True, None, {b"k": [set(), {}]}, ResponseError("ERR z")],
        id="writer-mixed",
    ),
    pytest.param(write([[[[[[[[1]]]]]]]]), [[[[[[[[1]]]]]]]], id="writer-deep"),
    pytest.param(write(list(range(300))), list(range(300)), id="writer-long-array"),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_frame(raw: bytes, expected: Any) -> None:
    check_frame(raw, expected)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"(" + b"1" * 5000 + b"\r\n", id="big-number"),
        pytest.param(b":" + b"1" * 5000 + b"\r\n", id="integer"),
    ],
)
def test_numbers_with_5000_digits_parse_or_raise_protocol_error(raw: bytes) -> None:
    # Python 3.11+ refuses int() of more than 4300 digits with ValueError; the parser
    # may return the number or refuse it with ProtocolError, never let ValueError out.
    parser = Parser()
    parser.feed(raw)
    try:
        result = parser.next_frame()
    except ProtocolError:
        return
    assert type(result) is int
    assert result == ONES_5000


def test_values_have_the_documented_types() -> None:
    parser = Parser()
    parser.feed(b">1\r\n:1\r\n-ERR boom\r\n:1\r\n#t\r\n,1\r\n")
    push = parser.next_frame()
    assert type(push) is Push
    assert isinstance(push, list)
    assert list(push) == [1]
    error = parser.next_frame()
    assert isinstance(error, ResponseError)
    assert str(error) == "ERR boom"
    assert error.code == "ERR"
    assert type(parser.next_frame()) is int
    assert parser.next_frame() is True
    assert type(parser.next_frame()) is float


def test_error_classes_are_the_package_ones() -> None:
    assert ProtocolError is valkeyaside.errors.ProtocolError
    assert issubclass(ProtocolError, valkeyaside.errors.ValkeyError)
    assert valkeyaside.ResponseError is ResponseError
    assert valkeyaside.ProtocolError is ProtocolError


def test_limits_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Parser(1024)  # type: ignore[misc]


def test_many_frames_in_one_feed() -> None:
    values: list[Any] = []
    for index in range(500):
        values += [index, b"v%d" % index, [index, "s"], None, {b"k": index}, Push([b"p"])]
    parser = Parser()
    parser.feed(b"".join(write(value) for value in values))
    for value in values:
        assert_same(parser.next_frame(), value)
    assert parser.next_frame() is NEED_DATA


# Bodies that hold CRLFs of their own, short ones and ones longer than the
# parser's 64 KiB window of lines, next to frames that cross window edges.
CRLF_BODIES = [
    b"\r\n",
    b"a\r\nb",
    b"\r\n\r\n",
    b"ends in cr\r",
    b"\nstarts with lf",
    b"\r\n" * 40_000,
    b"x" * 70_000 + b"\r\n" + b"y" * 70_000,
]


@pytest.mark.parametrize("body", CRLF_BODIES, ids=lambda body: f"{len(body)}B")
@pytest.mark.parametrize("type_byte", [b"$", b"!", b"="])
def test_body_holding_crlfs(type_byte: bytes, body: bytes) -> None:
    if type_byte == b"=":
        body = b"txt:" + body
    expected = {b"$": body, b"!": ResponseError(body.decode()), b"=": body[4:].decode()}
    raw = frame(type_byte, body)
    parser = Parser()
    parser.feed(raw * 3 + write([body, 7]))
    for _ in range(3):
        assert_same(parser.next_frame(), expected[type_byte])
    assert_same(parser.next_frame(), [body, 7])
    assert parser.next_frame() is NEED_DATA


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 1000, 65_535, 65_536, 65_537, 100_000])
def test_frames_crossing_line_windows_in_any_split(chunk_size: int) -> None:
    values: list[Any] = [
        b"x" * 65_530, 1, b"\r\n" * 20, [b"a\r\nb"] * 2000,
        b"y" * 70_000, "s" * 70_000, Push([b"p"]),
        *[Push([b"invalidate", [b"key:%d" % i]]) for i in range(5000)],
    ]
    values += CRLF_BODIES
    raw = b"".join(write(value) for value in values)
    parser = Parser()
    got: list[Any] = []
    for start in range(0, len(raw), chunk_size):
        parser.feed(raw[start : start + chunk_size])
        got += parser.frames()
    assert len(got) == len(values)
    for actual, expected in zip(got, values):
        assert_same(actual, expected)
    assert parser.buffered == 0


def test_body_whose_length_ends_mid_line_raises() -> None:
    # The announced length ends inside a line of the window, not at a CRLF.
    raises_at_once(b"$3\r\na\r\nbcd\r\n")
    raises_at_once(b"$3\r\nabcd\r\n")


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n",
                 Push([b"invalidate", [b"foo"]]), id="one-key"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$0\r\n\r\n",
                 Push([b"invalidate", [b""]]), id="empty-key"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\na\r\nb\r\n\r\n",
                 Push([b"invalidate", [b"a\r\nb\r\n"]]), id="key-holding-crlfs"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2000\r\n" + b"k" * 2000 + b"\r\n",
                 Push([b"invalidate", [b"k" * 2000]]), id="long-key"),
    pytest.param(b">2\r\n$10\r\ninvalidatf\r\n*1\r\n$1\r\nk\r\n",
                 Push([b"invalidatf", [b"k"]]), id="not-invalidate"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n:1\r\n",
                 Push([b"invalidate", [1]]), id="key-not-a-bulk"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n*1\r\n$1\r\nk\r\n",
                 Push([b"invalidate", [[b"k"]]]), id="key-an-array"),
    pytest.param(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$-1\r\n",
                 Push([b"invalidate", [None]]), id="key-null"),
    pytest.param(b"*2\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:7\r\n",
                 [Push([b"invalidate", [b"k"]]), 7], id="nested-in-an-array"),
])
def test_one_key_invalidations_and_their_look_alikes(raw: bytes, expected: Any) -> None:
    """An invalidation of one key is taken whole when its lines are at hand; every
    other push, and one split across feeds, is parsed as any push would be."""
    check_frame(raw, expected)
    parser = Parser()
    parser.feed(raw * 3)
    assert [canonical(frame) for frame in parser.frames()] == [canonical(expected)] * 3


def test_push_between_replies_keeps_order() -> None:
    parser = Parser()
    parser.feed(b"+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n")
    assert_same(parser.next_frame(), "OK")
    assert_same(parser.next_frame(), Push([b"invalidate", [b"k"]]))
    assert_same(parser.next_frame(), b"v")
    assert parser.next_frame() is NEED_DATA


def test_feed_accepts_empty_data() -> None:
    parser = Parser()
    parser.feed(b"")
    parser.feed(bytearray())
    parser.feed(memoryview(b""))
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"+O")
    parser.feed(b"")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"K\r\n")
    assert_same(parser.next_frame(), "OK")


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_fed_buffers_may_be_reused_by_the_caller(kind: Callable[[bytearray], Any]) -> None:
    buffer = bytearray(b"$5\r\nhello\r\n+pa")
    parser = Parser()
    parser.feed(kind(buffer))
    buffer[:] = b"X" * len(buffer)  # the caller reuses its receive buffer
    parser.feed(b"rt\r\n")
    assert_same(parser.next_frame(), b"hello")
    assert_same(parser.next_frame(), "part")


def test_next_frame_after_need_data_keeps_partial_frame() -> None:
    parser = Parser()
    parser.feed(b"*2\r\n:1\r\n")
    for _ in range(3):
        assert parser.next_frame() is NEED_DATA
    parser.feed(b":2\r\n")
    assert_same(parser.next_frame(), [1, 2])


def test_frame_completed_by_an_earlier_feed_is_returned_after_later_feeds() -> None:
    # Feeding several times before asking: "+ab" is complete once "b\r\n" is fed.
    parser = Parser()
    parser.feed(b"+a")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"b\r\n")
    parser.feed(b":1")
    assert_same(parser.next_frame(), "ab")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"\r\n")
    assert_same(parser.next_frame(), 1)


def test_frame_completed_after_the_buffer_was_used_up_is_returned_after_later_feeds() -> None:
    # The first feed is consumed entirely (the array waits for its next element).
    parser = Parser()
    parser.feed(b"*2\r\n:1\r\n")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b":2\r\n")
    parser.feed(b"+")
    assert_same(parser.next_frame(), [1, 2])
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"OK\r\n")
    assert_same(parser.next_frame(), "OK")


@pytest.mark.parametrize("limits", [{"max_line_len": 8}, {}])
def test_bulk_body_fed_after_a_line_is_not_taken_for_a_long_line(limits: dict[str, int]) -> None:
    # The body of a bulk string is not a line, whatever was pending before it.
    size = 20 if limits else 2_000_000
    parser = Parser(**limits)
    parser.feed(b"+a")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"b\r\n$%d\r\n" % size)
    parser.feed(b"x" * size)
    assert_same(parser.next_frame(), "ab")
    assert parser.next_frame() is NEED_DATA
    parser.feed(b"\r\n")
    assert_same(parser.next_frame(), b"x" * size)


def test_every_frame_fed_before_next_frame_comes_out() -> None:
    frames = [b"+OK\r\n", b"$3\r\nabc\r\n", b"*2\r\n:1\r\n:2\r\n", b">1\r\n+p\r\n", b"_\r\n"]
    data = b"".join(frames) * 20
    parser = Parser()
    for index in range(len(data)):
        parser.feed(data[index : index + 1])
    results = []
    for _ in range(101):
        result = parser.next_frame()
        if result is NEED_DATA:
            break
        results.append(result)
    assert len(results) == 100


# --------------------------------------------------------------------------- malformed input

INVALID = [
    # Unknown type bytes.
    pytest.param(b"X\r\n", id="unknown-type"),
    pytest.param(b"@1\r\n", id="unknown-type-at"),
    pytest.param(b"\r\n", id="empty-line"),
    pytest.param(b" +OK\r\n", id="leading-space"),
    pytest.param(b"*1\r\nX\r\n", id="unknown-type-nested"),
    # Bad lengths.
    pytest.param(b"$abc\r\n", id="bulk-length-letters"),
    pytest.param(b"$-2\r\n", id="bulk-length-minus-two"),
    pytest.param(b"$-10\r\n", id="bulk-length-negative"),
    pytest.param(b"$\r\n", id="bulk-length-empty"),
    pytest.param(b"$1a\r\n", id="bulk-length-trailing-letter"),
    pytest.param(b"$ 3\r\nabc\r\n", id="bulk-length-space"),
    pytest.param(b"$3 \r\nabc\r\n", id="bulk-length-trailing-space"),
    pytest.param(b"$1_0\r\n0123456789\r\n", id="bulk-length-underscore"),
    pytest.param(b"$+3\r\nabc\r\n", id="bulk-length-plus"),
    pytest.param(b"$1.5\r\n", id="bulk-length-fraction"),
    pytest.param(b"*abc\r\n", id="array-length-letters"),
    pytest.param(b"*-2\r\n", id="array-length-minus-two"),
    pytest.param(b"*\r\n", id="array-length-empty"),
    pytest.param(b"%x\r\n", id="map-length-letters"),
    pytest.param(b"~-2\r\n", id="set-length-negative"),
    pytest.param(b">-2\r\n", id="push-length-negative"),
    pytest.param(b"|x\r\n", id="attribute-length-letters"),
    pytest.param(b"!-2\r\n", id="blob-error-length-negative"),
    pytest.param(b"=abc\r\n", id="verbatim-length-letters"),
    pytest.param(b"$?x\r\n", id="streamed-marker-extra"),
    pytest.param(b"*??\r\n", id="streamed-aggregate-marker-extra"),
    # Bad scalars.
    pytest.param(b":abc\r\n", id="int-letters"),
    pytest.param(b":\r\n", id="int-empty"),
    pytest.param(b":1.5\r\n", id="int-fraction"),
    pytest.param(b": 1\r\n", id="int-space"),
    pytest.param(b":1_000\r\n", id="int-underscore"),
    pytest.param(b":-\r\n", id="int-sign-only"),
    pytest.param(b"(abc\r\n", id="big-number-letters"),
    pytest.param(b"(\r\n", id="big-number-empty"),
    pytest.param(b"(1.5\r\n", id="big-number-fraction"),
    pytest.param(b",abc\r\n", id="double-letters"),
    pytest.param(b",\r\n", id="double-empty"),
    pytest.param(b",1.5.5\r\n", id="double-two-points"),
    pytest.param(b", 1.5\r\n", id="double-space"),
    pytest.param(b",1_0.5\r\n", id="double-underscore"),
    pytest.param(b"#x\r\n", id="bool-x"),
    pytest.param(b"#\r\n", id="bool-empty"),
    pytest.param(b"#tt\r\n", id="bool-two-letters"),
    pytest.param(b"#T\r\n", id="bool-upper"),
    pytest.param(b"#1\r\n", id="bool-digit"),
    pytest.param(b"_x\r\n", id="null-with-payload"),
    pytest.param(b"=3\r\ntxt\r\n", id="verbatim-too-short"),
    pytest.param(b"=5\r\ntxtxa\r\n", id="verbatim-no-colon"),
    # Missing CRLF after a counted body.
    pytest.param(b"$3\r\nabcXY", id="bulk-no-crlf"),
    pytest.param(b"$3\r\nabc\rX", id="bulk-cr-then-other"),
    pytest.param(b"$3\r\nabc\n\r", id="bulk-lf-cr"),
    pytest.param(b"$0\r\nXY", id="bulk-empty-no-crlf"),
    pytest.param(b"!3\r\nabcXY", id="blob-error-no-crlf"),
    pytest.param(b"=5\r\ntxt:aXY", id="verbatim-no-crlf"),
    pytest.param(b"$?\r\n;1\r\naXY", id="stream-chunk-no-crlf"),
    pytest.param(b"*1\r\n$1\r\naXY", id="nested-bulk-no-crlf"),
    # Stream markers out of place.
    pytest.param(b";3\r\nabc\r\n", id="chunk-outside-stream"),
    pytest.param(b".\r\n", id="end-outside-stream"),
    pytest.param(b"*1\r\n.\r\n", id="end-in-counted-array"),
    pytest.param(b"%1\r\n+k\r\n.\r\n", id="end-in-counted-map"),
    pytest.param(b"*1\r\n;1\r\na\r\n", id="chunk-in-array"),
    pytest.param(b"*?\r\n;1\r\na\r\n;0\r\n.\r\n", id="chunk-in-streamed-array"),
    pytest.param(b"%?\r\n+a\r\n.\r\n", id="streamed-map-odd-count"),
    pytest.param(b"%?\r\n+a\r\n:1\r\n+b\r\n.\r\n", id="streamed-map-odd-count-3"),
    pytest.param(b"$?\r\n:1\r\n", id="int-in-streamed-string"),
    pytest.param(b"$?\r\n*1\r\n:1\r\n;0\r\n", id="array-in-streamed-string"),
    pytest.param(b"$?\r\n|1\r\n+a\r\n+b\r\n;1\r\nx\r\n;0\r\n", id="attribute-in-streamed-string"),
    pytest.param(b"*?\r\n|1\r\n+a\r\n+b\r\n.\r\n", id="attribute-before-end-marker"),
    pytest.param(b"$?\r\n.\r\n", id="end-in-streamed-string"),
    pytest.param(b"$?\r\n;1\r\na\r\n.\r\n", id="end-after-chunk-in-streamed-string"),
    pytest.param(b"$?\r\n;-1\r\n", id="chunk-length-negative"),
    pytest.param(b"$?\r\n;abc\r\n", id="chunk-length-letters"),
    pytest.param(b"$?\r\n;\r\n", id="chunk-length-empty"),
    pytest.param(b"*?\r\n.x\r\n", id="end-with-payload"),
    pytest.param(b"*2\r\n*?\r\n.\r\n.\r\n", id="end-after-streamed-child-in-counted-array"),
]


@pytest.mark.parametrize("raw", INVALID)
def test_malformed_frame_raises_protocol_error(raw: bytes) -> None:
    check_error(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"%1\r\n*1\r\n:1\r\n:2\r\n", id="array-key"),
        pytest.param(b"%1\r\n~1\r\n:1\r\n:2\r\n", id="set-key"),
        pytest.param(b"%1\r\n%0\r\n:2\r\n", id="map-key"),
        pytest.param(b"%?\r\n*0\r\n:2\r\n.\r\n", id="streamed-map-array-key"),
        pytest.param(b"*1\r\n%1\r\n*0\r\n:2\r\n", id="nested-map-array-key"),
    ],
)
def test_map_with_unhashable_key_raises_protocol_error(raw: bytes) -> None:
    check_error(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"+\xff\xfe\r\n", id="simple"),
        pytest.param(b"=6\r\ntxt:\xff\xfe\r\n", id="verbatim"),
        pytest.param(b"-ERR \xff\r\n", id="simple-error"),
        pytest.param(b"!5\r\nERR \xff\r\n", id="blob-error"),
    ],
)
def test_text_that_is_not_utf8_gives_a_value_or_protocol_error(raw: bytes) -> None:
    parser = Parser()
    parser.feed(raw + b":1\r\n")
    try:
        result = parser.next_frame()
    except ProtocolError:
        assert_sticky(parser)
        return
    assert isinstance(result, (str, ResponseError))
    assert_same(parser.next_frame(), 1)


def test_attribute_with_unhashable_key_gives_the_value_or_protocol_error() -> None:
    parser = Parser()
    parser.feed(b"|1\r\n*1\r\n:1\r\n+x\r\n:3\r\n")
    try:
        result = parser.next_frame()
    except ProtocolError:
        return
    assert_same(result, 3)


def test_error_after_good_frames_keeps_those_frames() -> None:
    parser = Parser()
    parser.feed(b"+OK\r\n:1\r\n#x\r\n+after\r\n")
    assert_same(parser.next_frame(), "OK")
    assert_same(parser.next_frame(), 1)
    with pytest.raises(ProtocolError):
        parser.next_frame()
    assert_sticky(parser)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("prefix", [b"$", b"!", b"=", b"$?\r\n;", b"*1\r\n$", b"%1\r\n+k\r\n$"])
def test_bulk_over_max_bulk_len_raises_on_the_header(prefix: bytes) -> None:
    raises_at_once(prefix + b"11\r\n", max_bulk_len=10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(frame(b"$", b"0123456789"), b"0123456789", id="bulk"),
        pytest.param(frame(b"!", b"ERR 456789"), ResponseError("ERR 456789"), id="blob-error"),
        pytest.param(frame(b"=", b"txt:456789"), "456789", id="verbatim"),
        pytest.param(
            b"$?\r\n" + frame(b";", b"01234") + frame(b";", b"56789") + b";0\r\n",
            b"0123456789",
            id="streamed-chunks",
        ),
    ],
)
def test_bulk_at_max_bulk_len_is_accepted(raw: bytes, expected: Any) -> None:
    check_frame(raw, expected, max_bulk_len=10)


def _peak_bytes_of(action: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``action``; return its result (or the ProtocolError raised) and the traced peak."""
    gc.collect()
    tracemalloc.start()
    try:
        try:
            result = action()
        except ProtocolError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _parse_once(raw: bytes, **limits: int) -> Callable[[], Any]:
    def action() -> Any:
        return feed_then_next(Parser(**limits), raw)

    return action


@pytest.mark.parametrize("raw", [b"$4294967296\r\n", b"$536870913\r\n", b"$99999999999999999\r\n"])
def test_huge_bulk_header_raises_at_once_without_allocating(raw: bytes) -> None:
    result, peak = _peak_bytes_of(_parse_once(raw))
    assert isinstance(result, ProtocolError)
    assert peak < 1_000_000


def test_bulk_header_at_the_default_limit_waits_without_allocating() -> None:
    result, peak = _peak_bytes_of(_parse_once(b"$536870912\r\nabc"))
    assert result is NEED_DATA
    assert peak < 1_000_000


@pytest.mark.parametrize("type_byte", [b"*", b"~", b"%", b">", b"|"])
@pytest.mark.parametrize("count", [100_000_000, 4_294_967_296])
def test_huge_aggregate_header_allocates_nothing(type_byte: bytes, count: int) -> None:
    # With the default limits a huge count is refused or awaited, never preallocated.
    result, peak = _peak_bytes_of(_parse_once(b"%s%d\r\n:1\r\n" % (type_byte, count)))
    assert result is NEED_DATA or isinstance(result, ProtocolError)
    assert peak < 1_000_000


@pytest.mark.parametrize(
    "header", [b"*11\r\n", b"~11\r\n", b"%11\r\n", b">11\r\n", b"|11\r\n", b"*1\r\n*11\r\n"]
)
def test_aggregate_over_max_aggregate_len_raises_on_the_header(header: bytes) -> None:
    raises_at_once(header, max_aggregate_len=10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(write(list(range(10))), list(range(10)), id="array"),
        pytest.param(write(set(range(10))), set(range(10)), id="set"),
        pytest.param(write({k: k for k in range(5)}), {k: k for k in range(5)}, id="map"),
        pytest.param(write(Push(list(range(10)))), Push(list(range(10))), id="push"),
    ],
)
def test_aggregate_at_max_aggregate_len_is_accepted(raw: bytes, expected: Any) -> None:
    check_frame(raw, expected, max_aggregate_len=10)


NESTING_OPENERS = [
    pytest.param(b"*1\r\n", b"", id="array"),
    pytest.param(b"~1\r\n", b"", id="set"),
    pytest.param(b"%1\r\n+k\r\n", b"", id="map"),
    pytest.param(b"*?\r\n", b".\r\n", id="streamed-array"),
    pytest.param(b"%?\r\n+k\r\n", b".\r\n", id="streamed-map"),
    pytest.param(b"~?\r\n", b".\r\n", id="streamed-set"),
]


@pytest.mark.parametrize(("opener", "closer"), NESTING_OPENERS)
def test_nesting_over_max_depth_raises(opener: bytes, closer: bytes) -> None:
    max_depth = 5
    # "Depth" may count the aggregates or the levels: errors begin at 5 or 6 aggregates.
    outcomes = []
    for levels in range(max_depth + 4):
        parser = Parser(max_depth=max_depth)
        parser.feed(opener * levels + b":1\r\n" + closer * levels)
        try:
            parser.next_frame()
            outcomes.append("ok")
        except ProtocolError:
            outcomes.append("error")
    first_error = outcomes.index("error") if "error" in outcomes else None
    assert first_error in (max_depth, max_depth + 1), outcomes
    assert outcomes == ["ok"] * first_error + ["error"] * (len(outcomes) - first_error)


@pytest.mark.parametrize(("opener", "closer"), NESTING_OPENERS)
def test_nesting_over_max_depth_raises_on_the_header(opener: bytes, closer: bytes) -> None:
    del closer
    raises_at_once(opener * 7, max_depth=5)


@pytest.mark.parametrize("levels", [10, 100, 1_000, 5_000, 100_000])
def test_deep_nesting_with_default_limits_never_overflows_the_stack(levels: int) -> None:
    parser = Parser()
    parser.feed(b"*1\r\n" * levels + b":1\r\n")
    try:
        result = parser.next_frame()
    except ProtocolError:
        assert levels >= 100, "the default max_depth should allow real replies"
        return
    for _ in range(levels):
        assert type(result) is list
        assert len(result) == 1
        result = result[0]
    assert result == 1


@pytest.mark.parametrize(
    "type_byte", [b"+", b"-", b":", b"(", b",", b"$", b"*", b"%", b"=", b"#", b"_"]
)
def test_line_over_max_line_len_raises_before_its_crlf(type_byte: bytes) -> None:
    max_line_len = 32
    parser = Parser(max_line_len=max_line_len)
    fed = 0
    assert feed_then_next(parser, type_byte) is NEED_DATA
    for _ in range(4 * max_line_len):
        fed += 1
        try:
            result = feed_then_next(parser, b"1")
        except ProtocolError:
            break
        assert result is NEED_DATA
    else:
        pytest.fail(f"{4 * max_line_len} bytes without CRLF were accepted")
    assert fed <= 2 * max_line_len + 2
    assert_sticky(parser)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"+" + b"a" * 200, id="simple"),
        pytest.param(b"+aaaa\n" + b"a" * 200, id="simple-bare-lf"),
        pytest.param(b"+aaaa\r" + b"a" * 200, id="simple-bare-cr"),
        pytest.param(b"$?\r\n;" + b"1" * 200, id="chunk-header"),
        pytest.param(b"*2\r\n:1\r\n:" + b"1" * 200, id="nested-int"),
    ],
)
def test_line_over_max_line_len_raises_fed_whole(raw: bytes) -> None:
    raises_at_once(raw, max_line_len=32)


def test_lines_within_max_line_len_are_accepted() -> None:
    check_frame(b"+" + b"a" * 16 + b"\r\n", "a" * 16, max_line_len=32)
    check_frame(b"*1\r\n:" + b"9" * 16 + b"\r\n", [int("9" * 16)], max_line_len=32)
    # Bulk bodies are not lines.
    check_frame(frame(b"$", b"b" * 500), b"b" * 500, max_line_len=32)


# --------------------------------------------------------------------------- linear time


class _Deadline:
    """Fails the test as soon as ``seconds`` have passed, so a quadratic parser cannot hang."""

    def __init__(self, seconds: float, what: str) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.what = what

    def check(self) -> None:
        if self.elapsed() > self.seconds:
            pytest.fail(f"{self.what} took over {self.seconds:.2f} s: not linear time")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _assert_linear(run: Callable[[int, _Deadline], None], small: int, small_budget: float) -> None:
    """``run(4 * small)`` must take under 10 times as long as ``run(small)``."""
    deadline = _Deadline(small_budget, f"size {small}")
    run(small, deadline)
    small_time = deadline.elapsed()
    big_budget = 10 * small_time + 0.25
    deadline = _Deadline(big_budget, f"size {4 * small} (size {small}: {small_time:.3f} s)")
    run(4 * small, deadline)
    big_time = deadline.elapsed()
    assert big_time < big_budget, (small_time, big_time)


CHUNK = 4096


def test_linear_time_100mb_bulk_fed_in_4kib_chunks() -> None:
    piece = ((bytes(range(256)) + b"\r\n") * 16)[:CHUNK]

    def run(size: int, deadline: _Deadline) -> None:
        parser = Parser()
        parser.feed(b"$%d\r\n" % size)
        for index in range(size // CHUNK):
            parser.feed(piece)
            assert parser.next_frame() is NEED_DATA
            if index % 256 == 0:
                deadline.check()
        parser.feed(b"\r\n")
        result = parser.next_frame()
        deadline.check()
        assert type(result) is bytes
        assert len(result) == size
        assert result[:CHUNK] == piece
        assert result[-CHUNK:] == piece
        assert result[size // 2 : size // 2 + CHUNK] == piece

    _assert_linear(run, 25 * 1024 * 1024, small_budget=4.0)


def test_linear_time_bulk_fed_in_4kib_chunks_before_asking_for_the_frame() -> None:
    # A caller may feed everything it received before calling next_frame once.
    piece = b"y" * CHUNK

    def run(size: int, deadline: _Deadline) -> None:
        parser = Parser()
        parser.feed(b"$%d\r\n" % size)
        for index in range(size // CHUNK):
            parser.feed(piece)
            if index % 256 == 0:
                deadline.check()
        parser.feed(b"\r\n")
        result = parser.next_frame()
        deadline.check()
        assert type(result) is bytes
        assert len(result) == size

    _assert_linear(run, 25 * 1024 * 1024, small_budget=4.0)


def test_linear_time_long_array_of_small_elements_fed_in_small_chunks() -> None:
    def run(count: int, deadline: _Deadline) -> None:
        raw = b"*%d\r\n" % count + b":7\r\n$1\r\nx\r\n" * (count // 2)
        parser = Parser(max_aggregate_len=count)
        view = memoryview(raw)
        for index, offset in enumerate(range(0, len(raw), 16)):
            parser.feed(view[offset : offset + 16])
            result = parser.next_frame()
            if result is not NEED_DATA:
                assert offset + 16 >= len(raw), "value before the last byte"
            if index % 1024 == 0:
                deadline.check()
        assert type(result) is list
        assert len(result) == count
        assert result[-2:] == [7, b"x"]

    _assert_linear(run, 25_000, small_budget=3.0)


def test_linear_time_long_simple_string_fed_in_4kib_chunks() -> None:
    # The parser must remember how far it searched for CRLF, not rescan the line.
    def run(size: int, deadline: _Deadline) -> None:
        parser = Parser(max_line_len=64 * 1024 * 1024)
        piece = b"s" * CHUNK
        parser.feed(b"+")
        for index in range(size // CHUNK):
            parser.feed(piece)
            assert parser.next_frame() is NEED_DATA
            if index % 256 == 0:
                deadline.check()
        parser.feed(b"\r\n")
        result = parser.next_frame()
        assert type(result) is str
        assert len(result) == size

    _assert_linear(run, 4 * 1024 * 1024, small_budget=3.0)


def test_linear_time_many_frames_in_one_feed() -> None:
    # Consuming frames one by one must not copy the rest of the buffer each time.
    def run(count: int, deadline: _Deadline) -> None:
        parser = Parser()
        parser.feed(b":1\r\n$3\r\nabc\r\n" * (count // 2))
        for index in range(count):
            assert parser.next_frame() is not NEED_DATA
            if index % 1024 == 0:
                deadline.check()
        assert parser.next_frame() is NEED_DATA

    _assert_linear(run, 50_000, small_budget=3.0)
