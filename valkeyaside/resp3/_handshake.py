"""The handshake of a new connection, without I/O.

Every transport (threaded or asyncio) writes :func:`handshake_commands` in
one go, reads as many replies (push frames skipped), and hands them to
:func:`check_handshake`, which raises the :class:`ConnectionError` a refusal
deserves or returns what the server said of itself. :func:`handshake_error`
turns an I/O failure during the exchange into the error a caller sees.

The commands, in order: ``HELLO 3`` (with ``AUTH`` and ``SETNAME`` when
configured), ``SELECT db`` (when not 0), then the connect commands that the
layers above registered (``CLIENT TRACKING ...``). A connect command marked
optional may be refused: the refusal is recorded in the result instead of
failing the connection (a server whose ACL forbids ``CLIENT TRACKING`` can
still serve, without a local cache).
"""

from __future__ import annotations

import dataclasses
import re
import socket
from typing import Any, Optional, Sequence

from ..errors import ConnectionError, ProtocolError, ResponseError, TimeoutError, ValkeyError
from ._encoder import Arg
from ._options import ConnectionOptions

__all__ = [
    "ConnectCommand",
    "Handshake",
    "check_handshake",
    "handshake_commands",
    "handshake_error",
    "parse_version",
]


@dataclasses.dataclass(frozen=True)
class ConnectCommand:
    """A command sent after ``HELLO``/``SELECT`` on every new connection."""

    #: The command and its arguments.
    args: tuple[Arg, ...]
    #: True: a refusal is recorded (``Handshake.refused``), the connection stands.
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Handshake:
    """What the server said while a connection was made."""

    #: The ``HELLO 3`` reply as received (keys and values as bytes, ``proto`` an int).
    hello: dict[Any, Any]
    #: ``"valkey"``, ``"redis"``, or the ``server`` field as given by another server.
    server: str
    #: The ``version`` field as ints, ``(7, 2, 4)``; ``()`` when absent or unreadable.
    version: tuple[int, ...]
    #: The optional connect commands the server refused, with its error reply.
    refused: tuple[tuple[ConnectCommand, ResponseError], ...] = ()


def handshake_commands(
    options: ConnectionOptions, connect_commands: Sequence[ConnectCommand] = ()
) -> list[tuple[Arg, ...]]:
    """The commands of the handshake, to be written in one go, in this order."""
    hello: list[Arg] = ["HELLO", 3]
    if options.password is not None:
        hello += ["AUTH", options.username or "default", options.password]
    if options.client_name:
        hello += ["SETNAME", options.client_name]
    commands: list[tuple[Arg, ...]] = [tuple(hello)]
    if options.db:
        commands.append(("SELECT", options.db))
    commands.extend(command.args for command in connect_commands)
    return commands


def check_handshake(
    options: ConnectionOptions,
    connect_commands: Sequence[ConnectCommand],
    replies: Sequence[Any],
) -> Handshake:
    """Check the replies to :func:`handshake_commands` (pushes left out).

    Raises :class:`ConnectionError` when the server refused ``HELLO 3``,
    ``SELECT`` or a connect command that is not optional.
    """
    hello_reply = replies[0]
    if isinstance(hello_reply, ResponseError):
        text = str(hello_reply).lower()
        if hello_reply.code == "NOPROTO" or "unknown command" in text:
            raise ConnectionError(
                f"{options.address} does not speak RESP3 (HELLO 3 answered: {hello_reply}); "
                "valkeyaside needs Valkey, or Redis 6 or newer"
            ) from hello_reply
        raise ConnectionError(
            f"handshake with {options.address} refused: {hello_reply}"
        ) from hello_reply
    if not isinstance(hello_reply, dict) or hello_reply.get(b"proto") != 3:
        raise ConnectionError(
            f"{options.address} answered HELLO 3 without switching to RESP3: "
            f"{hello_reply!r:.200}"
        )
    rest = list(replies[1:])
    if options.db:
        reply = rest.pop(0)
        if isinstance(reply, ResponseError):
            raise ConnectionError(
                f"SELECT {options.db} failed while connecting to {options.address}: {reply}"
            ) from reply
    refused: list[tuple[ConnectCommand, ResponseError]] = []
    for command, reply in zip(connect_commands, rest):
        if isinstance(reply, ResponseError):
            if command.optional:
                refused.append((command, reply))
                continue
            name = " ".join(str(part) for part in command.args[:2])
            raise ConnectionError(
                f"{name} failed while connecting to {options.address}: {reply}"
            ) from reply
    server = _text(hello_reply.get(b"server")) or ""
    return Handshake(
        hello=hello_reply,
        server=server.lower() if server.lower() in ("valkey", "redis") else server,
        version=parse_version(_text(hello_reply.get(b"version"))),
        refused=tuple(refused),
    )


def handshake_error(options: ConnectionOptions, exc: BaseException) -> BaseException:
    """The error to raise for ``exc``, raised by I/O during the handshake.

    A valkeyaside error passes unchanged; the caller raises the result
    ``from exc``.
    """
    if isinstance(exc, ProtocolError):
        return ConnectionError(
            f"{options.address} did not answer in RESP3 ({exc}); is it a Valkey/Redis server?"
        )
    if isinstance(exc, ValkeyError):
        return exc
    if isinstance(exc, socket.timeout):
        return TimeoutError(f"{options.address} did not answer the handshake in time")
    if isinstance(exc, OSError):
        return ConnectionError(f"handshake with {options.address} failed: {exc}")
    return exc


_NUMBER = re.compile(r"\d+")


def parse_version(text: Optional[str]) -> tuple[int, ...]:
    """``"7.2.4"`` -> ``(7, 2, 4)``; ``"8.0.0-rc1"`` -> ``(8, 0, 0)``; ``None`` -> ``()``."""
    if not text:
        return ()
    version: list[int] = []
    for part in text.strip().split("."):
        match = _NUMBER.match(part)
        if match is None:
            break
        version.append(int(match.group()))
        if match.end() != len(part):
            break  # "0-rc1": the rest is a pre-release tag
    return tuple(version)


def _text(value: Any) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None
