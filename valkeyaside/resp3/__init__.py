"""RESP3: a sans-I/O parser and encoder, and the socket layer that drives them.

The parser and encoder do no I/O; :class:`Exchange` matches replies to
requests and routes push frames without touching a socket, so the threaded
:class:`Connection` here (and, later, an asyncio one) only move bytes.
"""

from ..errors import ProtocolError
from ._connection import Batch, Connection, Request
from ._encoder import Arg, encode_command, encode_commands
from ._exchange import Exchange
from ._options import ConnectionOptions
from ._parser import NEED_DATA, NeedData, Parser, Push

__all__ = [
    "NEED_DATA",
    "Arg",
    "Batch",
    "Connection",
    "ConnectionOptions",
    "Exchange",
    "Request",
    "NeedData",
    "Parser",
    "ProtocolError",
    "Push",
    "encode_command",
    "encode_commands",
]
