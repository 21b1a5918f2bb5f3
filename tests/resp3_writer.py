"""A test-side RESP3 serializer, written from the protocol description alone.

It shares no code with ``valkeyaside.resp3``: the tests use it to produce wire
bytes for Python values and compare what the parser makes of them.  With a
``random.Random`` it picks, at random, among the equivalent encodings of a
value (streamed or plain, verbatim or simple, ``:`` or ``(``, ``_`` or a RESP2
null, with attribute maps inserted before any value), all of which must parse
back to the same Python value.

:func:`canonical` turns a parsed value into a form that compares exactly:
types are kept apart (``True`` is not ``1``, a ``Push`` is not a ``list``),
``NaN`` equals ``NaN``, ``-0.0`` is not ``0.0``, sets and maps are ordered.
"""

from __future__ import annotations

import math
import random
from typing import Any

from valkeyaside.errors import ResponseError
from valkeyaside.resp3 import Push

__all__ = ["canonical", "frame", "write"]

CRLF = b"\r\n"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Chances of the alternative encodings when a Random is given.
_ATTRIBUTE_CHANCE = 0.12
_STREAMED_CHANCE = 0.3
_VERBATIM_CHANCE = 0.3
_BLOB_ERROR_CHANCE = 0.4
_BIG_NUMBER_CHANCE = 0.2
_PLUS_SIGN_CHANCE = 0.1
_MAX_ATTRIBUTE_NESTING = 2


def write(value: Any, rng: random.Random | None = None) -> bytes:
    """Return one RESP3 frame for ``value``.

    Without ``rng`` the plainest encoding is used; with it, an equivalent
    encoding is picked at random.  Accepted values: ``None``, ``bool``,
    ``int``, ``float``, ``bytes`` (bulk), ``str`` (simple, or verbatim when it
    holds CR or LF), ``ResponseError``, ``list``, ``set``, ``dict``, ``Push``.
    """
    out = bytearray()
    _Writer(rng).value(value, out, attribute_nesting=0)
    return bytes(out)


def frame(type_byte: bytes, payload: bytes) -> bytes:
    """Return a length-prefixed frame: ``type_byte``, length, CRLF, payload, CRLF."""
    return b"%s%d\r\n%s\r\n" % (type_byte, len(payload), payload)


class _Writer:
    def __init__(self, rng: random.Random | None) -> None:
        self.rng = rng

    def chance(self, probability: float) -> bool:
        return self.rng is not None and self.rng.random() < probability

    def value(self, value: Any, out: bytearray, *, attribute_nesting: int) -> None:
        if attribute_nesting < _MAX_ATTRIBUTE_NESTING and self.chance(_ATTRIBUTE_CHANCE):
            self.attribute(out, attribute_nesting=attribute_nesting + 1)
        kind = type(value)
        if value is None:
            self.null(out)
        elif kind is bool:
            out += b"#t\r\n" if value else b"#f\r\n"
        elif kind is int:
            self.integer(value, out)
        elif kind is float:
            self.double(value, out)
        elif kind is bytes:
            self.bulk(value, out)
        elif kind is str:
            self.text(value, out)
        elif isinstance(value, ResponseError):
            self.error(str(value), out)
        elif kind is Push:
            self.aggregate(b">", list(value), out, attribute_nesting, streamable=False)
        elif kind is list:
            self.aggregate(b"*", value, out, attribute_nesting, streamable=True)
        elif kind is set:
            self.aggregate(b"~", list(value), out, attribute_nesting, streamable=True)
        elif kind is dict:
            flat = [item for pair in value.items() for item in pair]
            self.aggregate(b"%", flat, out, attribute_nesting, streamable=True, pairs=True)
        else:
            raise TypeError(f"no RESP3 encoding for {kind.__name__}")

    def null(self, out: bytearray) -> None:
        if self.rng is None:
            out += b"_\r\n"
        else:
            out += self.rng.choice([b"_\r\n", b"$-1\r\n", b"*-1\r\n"])

    def integer(self, value: int, out: bytearray) -> None:
        digits = b"%d" % value
        if value >= 0 and self.chance(_PLUS_SIGN_CHANCE):
            digits = b"+" + digits
        if INT64_MIN <= value <= INT64_MAX and not self.chance(_BIG_NUMBER_CHANCE):
            out += b":" + digits + CRLF
        else:
            out += b"(" + digits + CRLF

    def double(self, value: float, out: bytearray) -> None:
        if math.isnan(value):
            text = "nan"
        elif math.isinf(value):
            text = "inf" if value > 0 else "-inf"
        elif self.rng is None:
            text = repr(value)
        else:
            forms = [repr(value), f"{value:.17g}", f"{value:.17e}", f"{value:.17E}"]
            if value.is_integer() and value != 0 and abs(value) < 1e15:
                forms.append(str(int(value)))
            text = self.rng.choice(forms)
        out += b"," + text.encode("ascii") + CRLF

    def bulk(self, value: bytes, out: bytearray) -> None:
        if not self.chance(_STREAMED_CHANCE):
            out += frame(b"$", value)
            return
        assert self.rng is not None
        out += b"$?\r\n"
        position = 0
        while position < len(value):
            size = self.rng.randint(1, max(1, len(value) - position))
            out += frame(b";", value[position : position + size])
            position += size
        out += b";0\r\n"

    def text(self, value: str, out: bytearray) -> None:
        data = value.encode("utf-8")
        if b"\r" in data or b"\n" in data or self.chance(_VERBATIM_CHANCE):
            fmt = b"txt" if self.rng is None else self.rng.choice([b"txt", b"mkd"])
            out += frame(b"=", fmt + b":" + data)
        else:
            out += b"+" + data + CRLF

    def error(self, message: str, out: bytearray) -> None:
        data = message.encode("utf-8")
        if b"\r" in data or b"\n" in data or self.chance(_BLOB_ERROR_CHANCE):
            out += frame(b"!", data)
        else:
            out += b"-" + data + CRLF

    def aggregate(
        self,
        type_byte: bytes,
        items: list[Any],
        out: bytearray,
        attribute_nesting: int,
        *,
        streamable: bool,
        pairs: bool = False,
    ) -> None:
        streamed = streamable and self.chance(_STREAMED_CHANCE)
        if streamed:
            out += type_byte + b"?\r\n"
        else:
            count = len(items) // 2 if pairs else len(items)
            out += b"%s%d\r\n" % (type_byte, count)
        for item in items:
            self.value(item, out, attribute_nesting=attribute_nesting)
        if streamed:
            out += b".\r\n"

    def attribute(self, out: bytearray, *, attribute_nesting: int) -> None:
        """Write an attribute map, which the parser must read and discard."""
        assert self.rng is not None
        rng = self.rng
        count = rng.randint(0, 2)
        out += b"|%d\r\n" % count
        for _ in range(count):
            key = rng.choice(["key-popularity", "ttl", b"a", 7])
            value = rng.choice(
                [
                    {b"a": 0.1923, b"b": 0.0012},
                    [1, 2, None],
                    "x",
                    {"nested": {1, 2}},
                    ResponseError("ERR in attribute"),
                ]
            )
            self.value(key, out, attribute_nesting=attribute_nesting)
            self.value(value, out, attribute_nesting=attribute_nesting)


def canonical(value: Any) -> Any:
    """Return a hashable, exactly comparable form of a parsed (or expected) value."""
    kind = type(value)
    if value is None:
        return ("null",)
    if kind is bool:
        return ("bool", value)
    if kind is int:
        return ("int", value)
    if kind is float:
        return ("float", "nan" if math.isnan(value) else repr(value))
    if kind is bytes:
        return ("bytes", value)
    if kind is str:
        return ("str", value)
    if isinstance(value, ResponseError):
        return ("error", str(value))
    if kind is Push:
        return ("push", tuple(canonical(item) for item in value))
    if kind is list:
        return ("list", tuple(canonical(item) for item in value))
    if kind is set:
        return ("set", tuple(sorted((canonical(item) for item in value), key=repr)))
    if kind is dict:
        items = ((canonical(k), canonical(v)) for k, v in value.items())
        return ("map", tuple(sorted(items, key=repr)))
    return ("unexpected type", kind.__name__, repr(value)[:200])
