"""A sans-I/O, incremental RESP3 parser.

``feed()`` bytes in any split, then call ``next_frame()`` until it returns
:data:`NEED_DATA`. Speed in pure Python comes from doing per line as little
as possible: the buffer is split into lines a window at a time (one C call),
and header lines with small numbers are looked up in tables built at import.
The parser keeps an explicit stack of the aggregates it has open, so an
aggregate split across feeds resumes where it stopped. While a frame is
incomplete, new data is only collected (not joined, not searched) until
enough has arrived for the parser to make progress, so a large bulk string
fed in small chunks costs linear time. Every length is checked against a
limit before anything is allocated for it, and the parser never raises
anything but :class:`ProtocolError`.
"""

from __future__ import annotations

import re
from collections import deque
from operator import length_hint
from typing import Any, Final, Iterator, List, Optional, Union

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


# Aggregate kinds on the stack: the byte that opened them.
_ARRAY: Final = 0x2A  # *
_MAP: Final = 0x25  # %
_SET: Final = 0x7E  # ~
_PUSH: Final = 0x3E  # >
_ATTRIBUTE: Final = 0x7C  # |
_STREAMED_STRING: Final = 0x24  # $ followed by ?
_ANNOTATED: Final = 0x100  # the one value that follows an attribute, standing in its place
_STREAMED: Final = 0x200  # flag: elements until an end marker, not a count

# An open aggregate is a list [items, remaining, kind]: cheaper to make than an object.
_ITEMS: Final = 0
_REMAINING: Final = 1
_KIND: Final = 2
_UNCOUNTED: Final = 1 << 62  # "remaining" of a streamed aggregate: never counts down to 0

_INF_NAN: Final = {b"inf": float("inf"), b"+inf": float("inf"), b"-inf": float("-inf"),
                   b"nan": float("nan"), b"-nan": float("nan")}
_SIGNED: Final = re.compile(rb"[+-]?[0-9]+\Z")

# Bytes split into lines at once: bounds the list of lines a split makes.
_WINDOW: Final = 64 * 1024

# Header lines with small numbers, parsed once at import: looking a line up
# costs a fraction of slicing, checking and converting its digits each time.
_SMALL: Final = 1024
_BULK_LENGTHS: Final = {b"$%d" % n: n for n in range(_SMALL)}
_INTEGERS: Final = {b":%d" % n: n for n in range(-_SMALL, _SMALL)}
# Elements each non-empty aggregate holds: a map or attribute holds 2 per entry.
_AGGREGATE_LENGTHS: Final = {
    b"%c%d" % (kind, n): n * (2 if kind in b"%|" else 1)
    for kind in b"*%~>|" for n in range(1, _SMALL)}

# The simple strings a transaction answers with, decoded once.
_SIMPLE_STRINGS: Final = {b"+OK": "OK", b"+QUEUED": "QUEUED"}


# What follows ">2" in an invalidation of one key, up to the key's own header.
_INVALIDATE_ONE: Final = [b"$10", b"invalidate", b"*1"]
_FIVE: Final = range(5)  # the lines after ">2" in an invalidation of one key


def _within(table: dict[bytes, int], limit: int) -> dict[bytes, int]:
    """``table`` without the entries over ``limit``: a hit then needs no check."""
    if limit >= _SMALL * 2:
        return table
    return {line: n for line, n in table.items() if n <= limit}

# The open aggregate when none is: the top level.
_TOP: Final = (None, 0, 0)

# A complete attribute: it yields nothing; the value after it takes its place.
_NOTHING: Final = object()


class _ChunksOnly(List[bytes]):
    """The items of a streamed string: anything but a chunk is refused."""

    __slots__ = ()

    def append(self, value: Any) -> None:  # the hand-up path calls this for values
        raise ProtocolError("a streamed string may hold only chunks")

    def add_chunk(self, chunk: bytes) -> None:
        list.append(self, chunk)


_NULL_LENGTH: Final = -1  # $-1
_STREAMED_LENGTH: Final = -2  # $?


def _long_bulk_length(line: bytes, limit: int) -> int:
    """The length a bulk header announces, or a code for a null or a streamed string."""
    digits = line[1:]
    if digits.isdigit():
        length = int(digits)
        if length > limit:
            raise ProtocolError(f"bulk length {length} over the limit {limit}")
        return length
    if digits == b"-1":
        return _NULL_LENGTH
    if digits == b"?":
        return _STREAMED_LENGTH
    raise ProtocolError(f"invalid bulk length {digits[:32]!r}")


def _build(kind: int, items: list[Any]) -> Any:
    kind &= ~_STREAMED
    if kind == _ARRAY:
        return items
    if kind == _PUSH:
        return Push(items)
    if kind == _MAP:
        if len(items) % 2:
            raise ProtocolError("map with an odd number of elements")
        try:
            return dict(zip(items[::2], items[1::2]))
        except TypeError:
            raise ProtocolError("map key is not hashable") from None
    if kind == _SET:
        try:
            return set(items)
        except TypeError:  # an element is itself a list or dict
            return list(items)
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
        "_aggregate_lengths", "_buf", "_bulk_lengths", "_chunks", "_chunks_len", "_error",
        "_max_aggregate_len", "_max_bulk_len", "_max_depth", "_max_line_len", "_need",
        "_newline_fed", "_parsed", "_pos", "_stack",
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
        self._bulk_lengths = _within(_BULK_LENGTHS, max_bulk_len)
        self._aggregate_lengths = _within(_AGGREGATE_LENGTHS, max_aggregate_len)
        self._buf = b""  # bytes being parsed; _pos is the first unconsumed one
        self._pos = 0
        self._chunks: list[bytes] = []  # data fed since the parser last needed more
        self._chunks_len = 0
        # Bytes past _pos needed before parsing can progress; 0: a CRLF is
        # needed; -1: unknown (the buffer has not been examined since).
        self._need = -1
        self._newline_fed = False  # with _need 0: a chunk fed since holds a newline
        self._stack: list[list[Any]] = []  # open aggregates: [items, remaining, kind]
        self._error: Optional[ProtocolError] = None
        self._parsed: deque[Any] = deque()  # complete values not yet returned

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

    def next_frame(self) -> Any:
        """Return the next complete value, or :data:`NEED_DATA`."""
        parsed = self._parsed
        if not parsed:
            self._parse_into(parsed)
            if not parsed:
                if self._error is not None:
                    raise self._error
                return NEED_DATA
        return parsed.popleft()

    def frames(self) -> list[Any]:
        """Every complete value buffered, in order (maybe none): ``next_frame`` in bulk.

        A protocol error is raised once the values before it have been returned.
        """
        parsed = self._parsed
        self._parse_into(parsed)
        if not parsed and self._error is not None:
            raise self._error
        frames = list(parsed)
        parsed.clear()
        return frames

    def _parse_into(self, out: deque[Any]) -> None:
        """Parse every complete frame buffered onto ``out``; keep the rest for later."""
        if self._error is not None:
            return
        if self._chunks:
            if not self._ready():  # fed, but not yet enough for the open frame
                return
            self._join()
        elif self._need >= 0:
            return  # nothing fed since the buffer was last parsed
        buf = self._buf
        pos = self._pos
        size = len(buf)
        stack = self._stack
        max_bulk_len = self._max_bulk_len
        bulk_lengths = self._bulk_lengths
        aggregate_lengths = self._aggregate_lengths
        # The innermost open aggregate lives in locals (the hot path); the
        # stack holds the ones around it. None: at the top level.
        items: Any = None
        remaining = 0
        open_kind = 0
        if stack:
            items, remaining, open_kind = stack.pop()
        try:
            while True:
                # Split a window of whole lines at once: one C call instead of
                # a search and a slice per line. The window bounds the list.
                if size - pos > _WINDOW:
                    end = buf.rfind(b"\r\n", pos, pos + _WINDOW)
                    if end < 0:  # one line longer than the window
                        end = buf.find(b"\r\n", pos + _WINDOW - 1)
                else:
                    end = buf.rfind(b"\r\n", pos)
                if end < 0:  # need a line's end
                    self._need = 0
                    if size - pos > self._max_line_len:
                        raise ProtocolError(f"line longer than {self._max_line_len} bytes")
                    break
                window = buf[pos:end].split(b"\r\n")
                window_len = len(window)
                lines = iter(window)
                pos = end + 2  # where the next window starts, unless a body runs past it
                for line in lines:
                    kind = line[0]
                    # The commonest lines first: bulk strings, then what
                    # transactions, locks and fills answer (simple strings, nulls).
                    if kind == 0x24:  # $ bulk string
                        length = bulk_lengths.get(line)
                        if length is None:
                            length = _long_bulk_length(line, max_bulk_len)
                        if length >= 0:
                            value: Any = next(lines, None)
                            if value is None or len(value) != length:
                                value, pos = self._body(buf, end, line, value, lines, length)
                                if value is None:
                                    break  # the body is still arriving
                        elif length == _NULL_LENGTH:
                            value = None
                        else:
                            if items is not None:
                                stack.append([items, remaining, open_kind])
                            items, remaining, open_kind = (
                                _ChunksOnly(), _UNCOUNTED, _STREAMED_STRING | _STREAMED)
                            self._check_depth(open_kind)
                            continue
                    elif kind == 0x2B:  # + simple string
                        value = _SIMPLE_STRINGS.get(line)
                        if value is None:
                            if len(line) > self._max_line_len:
                                raise ProtocolError(
                                    f"line longer than {self._max_line_len} bytes")
                            value = line[1:].decode("utf-8", "replace")
                    elif kind == 0x5F:  # _ null
                        if len(line) != 1:
                            raise ProtocolError("null with a payload")
                        value = None
                    elif kind == 0x3A:  # : integer
                        value = _INTEGERS.get(line)
                        if value is None:
                            digits = line[1:]
                            if not (digits.isdigit()
                                    or (digits[1:].isdigit() and digits[:1] in b"+-")):
                                raise ProtocolError(f"invalid integer {digits[:32]!r}")
                            value = int(digits)
                    elif (kind == 0x2A or kind == 0x25 or kind == 0x3E or kind == 0x7E
                          or kind == 0x7C):  # * array, % map, > push, ~ set, | attribute
                        if line == b">2" and items is None:
                            # The commonest push by far, an invalidation of one key
                            # (a batch's locks make one per key): when all its lines
                            # are in the window, taken whole, without opening two
                            # aggregates for it; else opened as any push.
                            at = window_len - length_hint(lines)  # the next line's index
                            if at + 4 < window_len and window[at:at + 3] == _INVALIDATE_ONE:
                                key = window[at + 4]
                                if bulk_lengths.get(window[at + 3]) == len(key):
                                    for _ in _FIVE:
                                        next(lines)
                                    out.append(Push([b"invalidate", [key]]))
                                    continue
                        length = aggregate_lengths.get(line)  # elements, if small
                        if length is None:
                            digits = line[1:]
                            if digits.isdigit():
                                length = int(digits)
                                if length > self._max_aggregate_len:
                                    raise ProtocolError(
                                        f"aggregate length {length} over the limit")
                                if not length:
                                    value = _build(kind, [])
                                    if value is _NOTHING:  # an empty attribute still annotates
                                        kind = _ANNOTATED
                                        length = 1
                                elif kind == 0x25 or kind == 0x7C:
                                    length *= 2
                            elif digits == b"?" and kind != _PUSH and kind != _ATTRIBUTE:
                                if items is not None:
                                    stack.append([items, remaining, open_kind])
                                items, remaining, open_kind = [], _UNCOUNTED, kind | _STREAMED
                                self._check_depth(open_kind)
                                continue
                            elif digits == b"-1" and kind == _ARRAY:
                                value = None
                            else:
                                raise ProtocolError(f"invalid aggregate length {digits[:32]!r}")
                        if length:  # open it (an empty one is the value; a null has None)
                            if items is not None:
                                stack.append([items, remaining, open_kind])
                                if len(stack) >= self._max_depth:
                                    raise ProtocolError(
                                        f"aggregates nested deeper than {self._max_depth}")
                            items, remaining, open_kind = [], length, kind
                            continue
                    elif kind == 0x2C:  # , double
                        digits = line[1:]
                        # Only digits, point, exponent and signs (float() alone would
                        # take spaces, underscores and "infinity"); float() then
                        # refuses any misplaced one with ValueError -> ProtocolError.
                        if digits and not digits.translate(None, b"0123456789.eE+-"):
                            value = float(digits)
                        else:
                            value = _INF_NAN.get(digits.lower())
                            if value is None:
                                raise ProtocolError(f"invalid double {digits[:32]!r}")
                    elif kind == 0x23:  # # boolean
                        if line == b"#t":
                            value = True
                        elif line == b"#f":
                            value = False
                        else:
                            raise ProtocolError(f"invalid boolean {line[1:33]!r}")
                    elif kind == 0x2D:  # - simple error
                        if len(line) > self._max_line_len:
                            raise ProtocolError(f"line longer than {self._max_line_len} bytes")
                        value = ResponseError(line[1:].decode("utf-8", "replace"))
                    elif kind == 0x28:  # ( big number
                        digits = line[1:]
                        if not _SIGNED.match(digits):
                            raise ProtocolError(f"invalid big number {digits[:32]!r}")
                        value = int(digits)
                    elif kind == 0x3D or kind == 0x21 or kind == 0x3B:  # = verbatim, ! error,
                        # ; a streamed string's chunk: a length line, then a body
                        in_stream = open_kind == _STREAMED_STRING | _STREAMED
                        if (kind == 0x3B) != in_stream:
                            raise ProtocolError("streamed string chunk out of place")
                        digits = line[1:]
                        if not digits.isdigit():
                            raise ProtocolError(f"invalid length {digits[:32]!r}")
                        length = int(digits)
                        if length > max_bulk_len:
                            raise ProtocolError(f"length {length} over the limit {max_bulk_len}")
                        if kind == 0x3B and length == 0:  # ;0 ends a streamed string: no body
                            value = b"".join(items)
                            items, remaining, open_kind = stack.pop() if stack else _TOP
                        else:
                            body = next(lines, None)
                            if body is None or len(body) != length:
                                body, pos = self._body(buf, end, line, body, lines, length)
                                if body is None:
                                    break  # the body is still arriving
                            if kind == 0x3D:
                                if length < 4 or body[3:4] != b":":
                                    raise ProtocolError("verbatim string without a format prefix")
                                value = body[4:].decode("utf-8", "replace")
                            elif kind == 0x21:
                                value = ResponseError(body.decode("utf-8", "replace"))
                            else:
                                items.add_chunk(body)
                                remaining -= length  # a streamed string counts its total down
                                if _UNCOUNTED - remaining > max_bulk_len:
                                    raise ProtocolError("streamed string over the bulk limit")
                                continue
                    elif kind == 0x2E:  # . end of a streamed aggregate
                        if len(line) != 1 or not open_kind & _STREAMED or (
                                open_kind == _STREAMED_STRING | _STREAMED):
                            raise ProtocolError("end marker out of place")
                        value = _build(open_kind, items)
                        items, remaining, open_kind = stack.pop() if stack else _TOP
                    else:
                        raise ProtocolError(f"unknown frame type {line[:1]!r}")

                    # Hand the finished value up through the aggregates it completes.
                    while items is not None:
                        items.append(value)
                        remaining -= 1
                        if remaining:
                            break
                        value = items if open_kind == _ARRAY else _build(open_kind, items)
                        items, remaining, open_kind = stack.pop() if stack else _TOP
                        if value is _NOTHING:  # an attribute: the value it annotates comes next
                            if items is not None:
                                stack.append([items, remaining, open_kind])
                            items, remaining, open_kind = [], 1, _ANNOTATED
                            break
                    else:
                        out.append(value)
                else:
                    continue  # the window is parsed: on to the next
                break  # a body is still arriving
        except ProtocolError as exc:
            self._error = exc
            return
        except (ValueError, IndexError, OverflowError, TypeError, AttributeError) as exc:
            # Defensive: whatever the bytes, only ProtocolError may escape.
            self._error = ProtocolError(f"malformed frame: {exc}")
            self._error.__cause__ = exc
            return
        # Out of data: keep the open aggregates and where to resume.
        if items is not None:
            stack.append([items, remaining, open_kind])
        self._pos = pos

    def _body(self, buf: bytes, end: int, header: bytes, first: Optional[bytes],
              lines: Iterator[bytes], length: int) -> tuple[Optional[bytes], int]:
        """The body after ``header`` when it is not simply the window's next line.

        Either the body holds CRLFs of its own (it spans several lines of the
        window ending at ``end``), or it runs past the window. Returns the body
        and where parsing goes on, or ``None`` and where the header starts when
        the body has not all arrived.
        """
        parts = [] if first is None else [first]
        joined = len(first) if first is not None else -2  # len(b"\r\n".join(parts))
        while joined < length:
            part = next(lines, None)
            if part is None:
                break
            parts.append(part)
            joined += 2 + len(part)
        else:
            if joined != length:  # no CRLF where the announced length ends
                raise ProtocolError("string not terminated by CRLF")
            return b"\r\n".join(parts), end + 2
        # Past the window: the header and these parts were its last lines.
        start = end - joined
        header_pos = start - 2 - len(header)
        stop = start + length
        if len(buf) < stop + 2:
            self._need = stop + 2 - header_pos
            return None, header_pos
        if buf[stop:stop + 2] != b"\r\n":
            raise ProtocolError("string not terminated by CRLF")
        return buf[start:stop], stop + 2

    def _check_depth(self, kind: int) -> None:
        """Called with the new aggregate in locals and its parents on the stack."""
        if len(self._stack) >= self._max_depth:
            self._error = ProtocolError(f"aggregates nested deeper than {self._max_depth}")
            raise self._error
        if self._stack and self._stack[-1][_KIND] == _STREAMED_STRING | _STREAMED:
            self._error = ProtocolError("a streamed string may hold only chunks")
            raise self._error
