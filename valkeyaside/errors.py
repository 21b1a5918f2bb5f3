"""The one error tree of valkeyaside, rooted in :class:`ValkeyError`."""

from __future__ import annotations

import builtins

__all__ = ["ConnectionError", "ProtocolError", "ResponseError", "TimeoutError", "ValkeyError"]


class ValkeyError(Exception):
    """Base of every error valkeyaside raises (a loader's own exceptions pass through)."""


class ResponseError(ValkeyError):
    """The server answered with an error (``-ERR ...``); the message is kept verbatim.

    The parser returns these as values (so one can sit inside an array); the
    client raises them when they are the reply to a call.
    """

    @property
    def code(self) -> str:
        """The error code: the first word of the message (``ERR``, ``WRONGTYPE``, ``NOSCRIPT``)."""
        message = str(self)
        return message.split(" ", 1)[0] if message else ""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.args == self.args

    def __hash__(self) -> int:
        return hash((type(self), self.args))


class ConnectionError(ValkeyError, builtins.ConnectionError):
    """The connection could not be made, or was lost; the cause is attached."""


class TimeoutError(ValkeyError, builtins.TimeoutError):
    """A call, a connect, or a ``get`` deadline ran out."""


class ProtocolError(ValkeyError):
    """Bytes that are not RESP3, or a frame over one of the parser's limits."""
