"""The Lua scripts of placeholder locking, run by SHA with a fallback to EVAL.

The set and delete scripts are the ones Go's valkeyaside runs, so Python and
Go clients may hold and release each other's placeholders.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from .._effects import Steps, receive_all, send_all
from ..errors import ResponseError
from ..resp3 import Arg, Request, encode_command

__all__ = ["ACQUIRE", "DELETE_IF_HOLDER", "SET_IF_HOLDER", "SET_IF_HOLDER_MANY", "Script"]


class Script:
    """A Lua script known by its SHA1; loaded on first ``NOSCRIPT``."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, keys: list[Arg], args: list[Arg], timeout: Optional[float] = None) -> Steps[Any]:
        """EVALSHA; on NOSCRIPT (first use, or after SCRIPT FLUSH) EVAL the source.
        An error reply is raised."""
        reply = (yield from self.run_many([(keys, args)], timeout))[0]
        if type(reply) is ResponseError:
            raise reply
        return reply

    def run_many(self, calls: list[tuple[list[Arg], list[Arg]]],
                 timeout: Optional[float] = None) -> Steps[list[Any]]:
        """Run the script once per ``(keys, args)``, all in one write; the calls
        answered NOSCRIPT go again as EVAL, in a second write. The replies in
        order, error replies as values."""
        requests = self.requests(calls)
        yield from send_all(requests, timeout)
        return (yield from self.replies(calls, requests, timeout))

    def requests(self, calls: list[tuple[list[Arg], list[Arg]]]) -> list[Request]:
        """One ``EVALSHA`` per ``(keys, args)``, to be written together; then ``replies``."""
        return [_call("EVALSHA", self.sha, keys, args) for keys, args in calls]

    def replies(self, calls: list[tuple[list[Arg], list[Arg]]], requests: list[Request],
                timeout: Optional[float] = None) -> Steps[list[Any]]:
        """The replies of ``requests`` (``requests(calls)``, written), error replies
        as values; the calls answered NOSCRIPT go again as EVAL, in a second write."""
        replies = yield from receive_all(requests, timeout)
        unknown = [i for i, reply in enumerate(replies)
                   if type(reply) is ResponseError and reply.code == "NOSCRIPT"]
        if unknown:
            again = [_call("EVAL", self.source, *calls[i]) for i in unknown]
            yield from send_all(again, timeout)
            for i, reply in zip(unknown, (yield from receive_all(again, timeout))):
                replies[i] = reply
        return replies


def _call(verb: str, body: str, keys: list[Arg], args: list[Arg]) -> Request:
    """``verb body numkeys keys... args...``, routed by its first key."""
    key = keys[0] if keys else None
    return Request(encode_command(verb, body, len(keys), *keys, *args),
                   key=key if isinstance(key, str) else None)


#: KEYS[1]=key ARGV[1]=marker ARGV[2]=value ARGV[3]=ttl ms: fill only while we hold the lock.
SET_IF_HOLDER = Script(
    'if redis.call("GET",KEYS[1]) == ARGV[1] then return redis.call("SET",KEYS[1],ARGV[2],'
    '"PX",ARGV[3]) else return 0 end'
)

#: KEYS=keys ARGV[1]=marker, then each key's value and ttl ms (ARGV[2i], ARGV[2i+1]):
#: ``SET_IF_HOLDER`` for many keys of one server in one call, which costs the
#: server a fraction of a call per key. Per key, 1 when it was filled, else 0.
SET_IF_HOLDER_MANY = Script(
    'local filled = {} for i, key in ipairs(KEYS) do '
    'if redis.call("GET",key) == ARGV[1] then '
    'redis.call("SET",key,ARGV[2*i],"PX",ARGV[2*i+1]) filled[i] = 1 '
    'else filled[i] = 0 end end return filled'
)

#: KEYS[1]=key ARGV[1]=marker: release only our own placeholder.
DELETE_IF_HOLDER = Script(
    'if redis.call("GET",KEYS[1]) == ARGV[1] then return redis.call("DEL",KEYS[1]) '
    'else return 0 end'
)

#: KEYS[1]=key ARGV[1]=marker ARGV[2]=ttl ms: SET NX PX, else the current value (for
#: servers without SET ... NX GET). Returns nil when the lock was taken.
ACQUIRE = Script(
    'local v = redis.call("GET",KEYS[1]) if v then return v end '
    'redis.call("SET",KEYS[1],ARGV[1],"PX",ARGV[2]) return false'
)
