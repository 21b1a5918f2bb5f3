"""A sans-I/O, incremental RESP3 parser.

``feed()`` bytes in any split, then call ``next_frame()`` until it returns
:data:`NEED_DATA`. The parser keeps an explicit stack of the aggregates it has
open, so an aggregate split across feeds resumes where it stopped and no byte
already consumed is read twice. While a frame is incomplete, new data is only
collected (not joined, not searched) until enough has arrived for the parser
to make progress, so a large bulk string fed in small chunks costs linear
time. Every length is checked against a limit before anything is allocated
for it, and the parser never raises anything but :class:`ProtocolError`.
"""

from __future__ import annotations

import re
from typing import Any, Final, List, Optional, Union

from ..errors import ProtocolError, ResponseError

__all__ = ["NEED_DATA", "NeedData", "Parser", "Push"]


class NeedData:
    """The type of :data:`NEED_DATA`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Parser.next_frame` when no complete frame is buffered.
NEED_DATA: Final = NeedData()


class Push(List[Any]):
    """A RESP3 push frame (``>``): out-of-band data such as ``invalidate``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Push({list.__repr__(self)})"


# Aggregate kinds on the stack (the byte that opened them).
_ARRAY: Final = 0x2A  # *
_MAP: Final = 0x25  # %
_SET: Final = 0x7E  # ~
_PUSH: Final = 0x3E  # >
_ATTRIBUTE: Final = 0x7C  # |
_STREAMED_STRING: Final = 0x24  # $ followed by ?
_ANNOTATED: Final = 0x100  # the one value that follows an attribute, standing in its place

_CRLF: Final = b"\r\n"
_INF_NAN: Final = {b"inf": float("inf"), b"+inf": float("inf"), b"-inf": float("-inf"),
                   b"nan": float("nan"), b"-nan": float("nan")}
_DOUBLE: Final = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_SIGNED: Final = re.compile(rb"[+-]?[0-9]+\Z")

# A frame that is complete but yields nothing for its parent (an attribute).
_NOTHING: Final = object()
# The end marker of a streamed aggregate.
_END: Final = object()
# An aggregate was opened: its elements come next.
_OPENED: Final = object()


class _Open:
    """An aggregate that is still being read."""

    __slots__ = ("items", "kind", "remaining")

    def __init__(self, kind: int, remaining: int) -> None:
        self.kind = kind
        self.remaining = remaining  # elements still to come; -1 while streamed
        self.items: list[Any] = []


def _build(kind: int, items: list[Any]) -> Any:
    if kind == _ARRAY:
        return items
    if kind == _PUSH:
        return Push(items)
    if kind == _MAP:
        try:
            return dict(zip(items[::2], items[1::2]))
        except TypeError:
            raise ProtocolError("map key is not hashable") from None
    if kind == _SET:
        try:
            return set(items)
        except TypeError:  # an element is itself a list or dict
            return items
    if kind == _STREAMED_STRING:
        return b"".join(items)
    if kind == _ANNOTATED:
        return items[0]
    return _NOTHING  # attribute: read, then dropped


class Parser:
    """Incremental RESP3 (and RESP2) parser with limits.

    Args:
        max_bulk_len: largest bulk, verbatim or blob error body, and the
            largest streamed string in total (the server's own default).
        max_depth: how deeply aggregates may nest.
        max_aggregate_len: most elements an aggregate may announce.
        max_line_len: longest header or simple line before its CRLF.
    """

    __slots__ = (
        "_buf", "_chunks", "_chunks_len", "_error", "_max_aggregate_len", "_max_bulk_len",
        "_max_depth", "_max_line_len", "_need", "_newline_fed", "_pos", "_stack",
    )

    def __init__(
        self,
        *,
        max_bulk_len: int = 512 * 1024 * 1024,
        max_depth: int = 64,
        max_aggregate_len: int = 2**32,
        max_line_len: int = 1024 * 1024,
    ) -> None:
        self._max_bulk_len = max_bulk_len
        self._max_depth = max_depth
        self._max_aggregate_len = max_aggregate_len
        self._max_line_len = max_line_len
        self._buf = b""  # bytes being parsed; _pos is the first unconsumed one
        self._pos = 0
        self._chunks: list[bytes] = []  # data fed since the parser last needed more
        self._chunks_len = 0
        # Bytes past _pos needed before parsing can progress; 0: a CRLF is
        # needed; -1: unknown (the buffer has not been examined since).
        self._need = -1
        self._newline_fed = False  # with _need 0: a chunk fed since holds a newline
        self._stack: list[_Open] = []
        self._error: Optional[ProtocolError] = None

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet consumed by a returned frame."""
        return len(self._buf) - self._pos + self._chunks_len

    def feed(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Add bytes received from the server, split anywhere."""
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        if self._pos >= len(self._buf) and not self._chunks:
            self._buf = data  # the common case: nothing left over, no copy
            self._pos = 0
            self._need = -1  # unexamined until next_frame runs
            return
        self._chunks.append(data)
        self._chunks_len += len(data)
        if self._need == 0 and not self._newline_fed:
            # Waiting for a line's end: note whether it came, without joining.
            self._newline_fed = b"\n" in data
            if not self._newline_fed and self.buffered > self._max_line_len:
                self._fail(f"line longer than {self._max_line_len} bytes")

    def _ready(self) -> bool:
        """Whether the data fed since the last NEED_DATA can complete something."""
        need = self._need
        if need < 0:
            return True
        if need == 0:
            return self._newline_fed
        return len(self._buf) - self._pos + self._chunks_len >= need

    def _join(self) -> None:
        self._buf = b"".join([self._buf[self._pos:], *self._chunks])
        self._pos = 0
        self._chunks = []
        self._chunks_len = 0
        self._need = -1  # the joined bytes are unexamined until next_frame runs
        self._newline_fed = False

    def _fail(self, message: str) -> None:
        self._error = ProtocolError(message)
        raise self._error

    def _suspend(self, pos: int, need: int) -> NeedData:
        """Remember where to resume: ``need`` bytes from ``pos`` (0: up to a CRLF)."""
        self._pos = pos
        self._need = need
        if not need and len(self._buf) - pos > self._max_line_len:
            self._fail(f"line longer than {self._max_line_len} bytes")
        return NEED_DATA

    def next_frame(self) -> Any:
        """Return the next complete value, or :data:`NEED_DATA`."""
        if self._error is not None:
            raise self._error
        if self._chunks:
            if not self._ready():  # fed, but not yet enough for the open frame
                return NEED_DATA
            self._join()
        try:
            return self._parse()
        except ProtocolError as exc:
            self._error = exc
            raise
        except (ValueError, IndexError, OverflowError) as exc:  # defensive: keep the contract
            self._error = ProtocolError(f"malformed frame: {exc}")
            raise self._error from exc

    def _length(self, line: bytes) -> int:
        if line.isdigit():
            return int(line)
        if line == b"-1":
            return -1
        if line == b"?":
            return -2
        self._fail(f"invalid length {line[:32]!r}")
        raise AssertionError  # unreachable; keeps type checkers informed

    def _parse(self) -> Any:
        buf = self._buf
        pos = self._pos
        stack = self._stack
        while True:
            end = buf.find(_CRLF, pos)
            if end < 0:
                return self._suspend(pos, 0)
            kind = buf[pos]
            line = buf[pos + 1:end]
            nxt = end + 2
            if kind == 0x24:  # $ bulk string
                if line.isdigit():
                    length = int(line)
                    if length > self._max_bulk_len:
                        self._fail(f"bulk length {length} over the limit {self._max_bulk_len}")
                    stop = nxt + length
                    if len(buf) < stop + 2:
                        return self._suspend(pos, stop + 2 - pos)
                    if buf[stop:stop + 2] != _CRLF:
                        self._fail("bulk string not terminated by CRLF")
                    value: Any = buf[nxt:stop]
                    nxt = stop + 2
                elif line == b"-1":
                    value = None
                elif line == b"?":
                    value = self._open(_STREAMED_STRING, -1)
                else:
                    self._fail(f"invalid bulk length {line[:32]!r}")
            elif kind == 0x3A:  # : integer
                if not (line.isdigit() or _SIGNED.match(line)):
                    self._fail(f"invalid integer {line[:32]!r}")
                value = int(line)
            elif kind == 0x2B:  # + simple string
                value = line.decode("utf-8", "replace")
            elif kind == 0x2A or kind == 0x25 or kind == 0x7E or kind == 0x3E or kind == 0x7C:
                length = self._length(line)
                if length == -1:
                    if kind != 0x2A:
                        self._fail("only arrays may be null")
                    value = None
                elif length == 0:
                    value = _build(kind, [])
                else:
                    if length == -2 and kind in (_PUSH, _ATTRIBUTE):
                        self._fail("push and attribute frames cannot be streamed")
                    if length > self._max_aggregate_len:
                        self._fail(f"aggregate length {length} over the limit")
                    if length == -2:
                        length = -1  # streamed: elements until the end marker
                    elif kind in (_MAP, _ATTRIBUTE):
                        length *= 2
                    value = self._open(kind, length)
            elif kind == 0x5F:  # _ null
                if line:
                    self._fail("null with a payload")
                value = None
            elif kind == 0x2D:  # - simple error
                value = ResponseError(line.decode("utf-8", "replace"))
            elif kind == 0x2C:  # , double
                special = _INF_NAN.get(line.lower())
                if special is not None:
                    value = special
                elif _DOUBLE.match(line):
                    value = float(line)
                else:
                    self._fail(f"invalid double {line[:32]!r}")
            elif kind == 0x23:  # # boolean
                if line == b"t":
                    value = True
                elif line == b"f":
                    value = False
                else:
                    self._fail(f"invalid boolean {line[:32]!r}")
            elif kind == 0x28:  # ( big number
                if not _SIGNED.match(line):
                    self._fail(f"invalid big number {line[:32]!r}")
                value = int(line)
            elif kind == 0x3D or kind == 0x21 or kind == 0x3B:  # = verbatim, ! blob error, ; chunk
                in_stream = bool(stack) and stack[-1].kind == _STREAMED_STRING
                if (kind == 0x3B) != in_stream:
                    self._fail("streamed string chunk out of place")
                if not line.isdigit():
                    self._fail(f"invalid length {line[:32]!r}")
                length = int(line)
                if length > self._max_bulk_len:
                    self._fail(f"length {length} over the limit {self._max_bulk_len}")
                if kind == 0x3B and length == 0:  # ;0 ends a streamed string: no body
                    value = _END
                else:
                    stop = nxt + length
                    if len(buf) < stop + 2:
                        return self._suspend(pos, stop + 2 - pos)
                    if buf[stop:stop + 2] != _CRLF:
                        self._fail("string not terminated by CRLF")
                    body = buf[nxt:stop]
                    nxt = stop + 2
                    if kind == 0x3D:
                        if length < 4 or body[3:4] != b":":
                            self._fail("verbatim string without a format prefix")
                        value = body[4:].decode("utf-8", "replace")
                    elif kind == 0x21:
                        value = ResponseError(body.decode("utf-8", "replace"))
                    else:
                        top = stack[-1]
                        top.items.append(body)
                        top.remaining -= length  # a streamed string counts its total here
                        if -1 - top.remaining > self._max_bulk_len:
                            self._fail("streamed string over the bulk limit")
                        pos = nxt
                        continue
            elif kind == 0x2E:  # . end of a streamed aggregate
                top_open = stack[-1] if stack else None
                if line or top_open is None or top_open.remaining != -1 or (
                        top_open.kind == _STREAMED_STRING):
                    self._fail("end marker out of place")
                value = _END
            else:
                self._fail(f"unknown frame type {bytes([kind])!r}")

            pos = nxt
            # Hand the finished value up the stack of open aggregates.
            while True:
                if value is _END:
                    top = stack.pop()
                    if top.kind == _MAP and len(top.items) % 2:
                        self._fail("streamed map with an odd number of elements")
                    value = _build(top.kind, top.items)
                if value is _OPENED:
                    break  # its elements follow
                if value is _NOTHING:  # an attribute: the value it annotates comes next
                    self._open(_ANNOTATED, 1)
                    break
                if not stack:
                    self._pos = pos
                    self._need = -1  # what follows is unexamined: any feed may complete it
                    return value
                top = stack[-1]
                if top.kind == _STREAMED_STRING:
                    self._fail("a streamed string may hold only chunks")
                top.items.append(value)
                if top.remaining < 0:  # streamed: wait for the end marker
                    break
                top.remaining -= 1
                if top.remaining:
                    break
                stack.pop()
                value = _build(top.kind, top.items)

    def _open(self, kind: int, remaining: int) -> object:
        if self._stack and self._stack[-1].kind == _STREAMED_STRING:
            self._fail("a streamed string may hold only chunks")
        if len(self._stack) >= self._max_depth:
            self._fail(f"aggregates nested deeper than {self._max_depth}")
        self._stack.append(_Open(kind, remaining))
        return _OPENED

