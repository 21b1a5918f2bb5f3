"""encode_command: exact bytes, every accepted argument type, refused types."""

from __future__ import annotations

import array
import math
import re
from typing import Any

import pytest

from valkeyaside.resp3 import NEED_DATA, Parser, encode_command
from valkeyaside.resp3._encoder import encode_args


def test_set_command_exact_bytes() -> None:
    assert encode_command("SET", "k", b"v", 10) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\n10\r\n"
    )


def test_single_argument_command() -> None:
    assert encode_command("PING") == b"*1\r\n$4\r\nPING\r\n"


def test_pipeline_commands_exact_bytes() -> None:
    assert encode_command("CLIENT", "CACHING", "YES") == (
        b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n"
    )
    assert encode_command("PTTL", "user:1") == b"*2\r\n$4\r\nPTTL\r\n$6\r\nuser:1\r\n"
    assert encode_command("SET", "k", "valkeyid:abc", "NX", "GET", "PX", 1500) == (
        b"*7\r\n$3\r\nSET\r\n$1\r\nk\r\n$12\r\nvalkeyid:abc\r\n$2\r\nNX\r\n"
        b"$3\r\nGET\r\n$2\r\nPX\r\n$4\r\n1500\r\n"
    )


def test_encode_args_is_a_command_without_its_header() -> None:
    assert encode_args("EVALSHA", "ab", 1) == b"$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n"
    args = ["x"] * 12  # a two-digit count in the header
    assert b"*12\r\n" + encode_args(*args) == encode_command(*args)


def test_result_is_bytes() -> None:
    assert type(encode_command("GET", bytearray(b"k"))) is bytes


@pytest.mark.parametrize(
    ("arg", "encoded"),
    [
        pytest.param("abc", b"abc", id="str"),
        pytest.param("", b"", id="str-empty"),
        pytest.param(
            "caf\u00e9 \u20ac", "caf\u00e9 \u20ac".encode(), id="str-utf8-length-in-bytes"
        ),
        pytest.param("a\r\nb", b"a\r\nb", id="str-crlf"),
        pytest.param(b"\x00\xff\r\n$1\r\n", b"\x00\xff\r\n$1\r\n", id="bytes-binary"),
        pytest.param(b"", b"", id="bytes-empty"),
        pytest.param(bytearray(b"ba"), b"ba", id="bytearray"),
        pytest.param(memoryview(b"mv"), b"mv", id="memoryview"),
        pytest.param(memoryview(b"xxsliced")[2:], b"sliced", id="memoryview-slice"),
        pytest.param(
            memoryview(array.array("H", [0x4142, 0x4344])),
            array.array("H", [0x4142, 0x4344]).tobytes(),
            id="memoryview-itemsize-2",
        ),
        pytest.param(0, b"0", id="int-zero"),
        pytest.param(42, b"42", id="int"),
        pytest.param(-7, b"-7", id="int-negative"),
        pytest.param(2**64, b"18446744073709551616", id="int-big"),
        pytest.param(1.5, b"1.5", id="float"),
        pytest.param(-0.25, b"-0.25", id="float-negative"),
    ],
)
def test_accepted_argument(arg: Any, encoded: bytes) -> None:
    assert encode_command("ECHO", arg) == b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (
        len(encoded),
        encoded,
    )


@pytest.mark.parametrize(
    "value", [0.1, 1e100, 1e-300, 123456789.123, 2.0, float("inf"), float("-inf")]
)
def test_float_argument_round_trips(value: float) -> None:
    raw = encode_command(value)
    parser = Parser()
    parser.feed(raw)
    (data,) = parser.next_frame()
    assert float(data.decode("ascii")) == value


def test_nan_argument_is_encoded_as_nan() -> None:
    raw = encode_command(float("nan"))
    parser = Parser()
    parser.feed(raw)
    (data,) = parser.next_frame()
    assert math.isnan(float(data.decode("ascii")))


def test_encoded_command_parses_back_as_bulk_strings() -> None:
    args = ["HSET", b"h", bytearray(b"f"), memoryview(b"v"), 3, 0.5, "\u00e9"]
    parser = Parser()
    parser.feed(encode_command(*args) * 2)
    expected = [b"HSET", b"h", b"f", b"v", b"3", b"0.5", "\u00e9".encode()]
    assert parser.next_frame() == expected
    assert parser.next_frame() == expected
    assert parser.next_frame() is NEED_DATA


def test_int_with_5000_digits_is_encoded() -> None:
    # Python 3.11+ limits int -> str conversion to 4300 digits by default.
    value = (10**5000 - 1) // 9
    raw = encode_command("SET", "k", value)
    assert raw.endswith(b"$5000\r\n" + b"1" * 5000 + b"\r\n")


class _Thing:
    pass


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(None, id="None"),
        pytest.param(True, id="bool-true"),
        pytest.param(False, id="bool-false"),
        pytest.param(["a"], id="list"),
        pytest.param(("a",), id="tuple"),
        pytest.param({"a": 1}, id="dict"),
        pytest.param({"a"}, id="set"),
        pytest.param(_Thing(), id="object"),
        pytest.param(1 + 2j, id="complex"),
    ],
)
def test_refused_argument_raises_type_error_naming_position_and_type(bad: Any) -> None:
    with pytest.raises(TypeError) as info:
        encode_command("SET", "k", bad)
    message = str(info.value)
    assert type(bad).__name__ in message
    assert re.search(r"\b[23]\b", message), "the position, counted from 0 or from 1"


def test_refused_first_argument() -> None:
    with pytest.raises(TypeError) as info:
        encode_command(None, "k")
    assert "NoneType" in str(info.value)
