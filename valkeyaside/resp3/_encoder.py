"""Encode commands as RESP arrays of bulk strings."""

from __future__ import annotations

from typing import Union

__all__ = ["Arg", "encode_args", "encode_command", "encode_commands"]

#: What a command argument may be.
Arg = Union[str, bytes, bytearray, memoryview, int, float]


def _int_bytes(number: int) -> bytes:
    try:
        return b"%d" % number
    except ValueError:  # over the interpreter's int-to-str digit limit: convert in parts
        sign = b"-" if number < 0 else b""
        number = abs(number)
        parts = []
        while number:
            number, low = divmod(number, 10**1000)
            parts.append(b"%01000d" % low)
        return sign + b"".join(reversed(parts)).lstrip(b"0")


def _arg_bytes(arg: object, position: int) -> bytes:
    kind = type(arg)
    if kind is bytes:
        return arg  # type: ignore[return-value]
    if kind is str:
        return arg.encode()  # type: ignore[attr-defined, no-any-return]
    if kind is int:
        return _int_bytes(arg)  # type: ignore[arg-type]
    if kind is float:
        return repr(arg).encode()
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return str.encode(arg)
    if isinstance(arg, int) and not isinstance(arg, bool):
        return _int_bytes(int(arg))
    if isinstance(arg, float):
        return repr(float(arg)).encode()
    raise TypeError(
        f"command argument {position} is {kind.__name__}: expected str, bytes, bytearray, "
        "memoryview, int or float (convert it explicitly)"
    )


def encode_command(*args: Arg) -> bytes:
    """Return ``args`` as one RESP array of bulk strings, ready to send."""
    if not args:
        raise TypeError("a command needs at least one argument")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for position, arg in enumerate(args):
        kind = type(arg)
        if kind is str:  # the common cases inline: a call costs more than the work
            data = arg.encode()  # type: ignore[union-attr]
        elif kind is bytes:
            data = arg
        else:
            data = _arg_bytes(arg, position)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


def encode_args(*args: Arg) -> bytes:
    """``args`` as bulk strings, without the array header: the part of a command
    that many commands share, encoded once."""
    command = encode_command(*args)
    return command[command.index(b"\n") + 1:]


def encode_commands(commands: list[tuple[Arg, ...]]) -> bytes:
    """Encode several commands into one buffer, to be written at once."""
    return b"".join([encode_command(*command) for command in commands])
