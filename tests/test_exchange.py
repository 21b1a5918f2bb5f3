"""The exchange (sans-I/O): replies matched to requests, pushes handed on in order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from valkeyaside.errors import ProtocolError
from valkeyaside.resp3 import Push
from valkeyaside.resp3._exchange import Exchange


class _Request:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.replies: list[Any] = []


def _invalidate(*keys: bytes) -> bytes:
    return b">2\r\n$10\r\ninvalidate\r\n*%d\r\n" % len(keys) + b"".join(
        b"$%d\r\n%s\r\n" % (len(key), key) for key in keys)


def _exchange() -> tuple[Exchange, list[Any]]:
    """An exchange whose handlers note, in order, each push and each completion."""
    seen: list[Any] = []
    exchange = Exchange(lambda push: seen.append(("push", list(push))),
                        lambda request: seen.append(("done", request.replies)))
    return exchange, seen


def test_invalidations_between_the_replies_of_one_request_come_as_one_before_it_completes(
) -> None:
    # A batch locking keys this client reads: a push per key, between replies
    # no one looks at until the last: handed on as one invalidation, first.
    exchange, seen = _exchange()
    exchange.expect(_Request(3))
    exchange.receive(_invalidate(b"a") + b"_\r\n" + _invalidate(b"b") + b"_\r\n"
                     + _invalidate(b"c", b"d") + b"_\r\n")
    assert seen == [("push", [b"invalidate", [b"a", b"b", b"c", b"d"]]),
                    ("done", [None, None, None])]


def test_pushes_keep_their_order_around_completions_and_other_pushes() -> None:
    exchange, seen = _exchange()
    first, second = _Request(1), _Request(1)
    exchange.expect(first)
    exchange.expect(second)
    flush = b">2\r\n$10\r\ninvalidate\r\n_\r\n"  # FLUSHALL: no keys
    other = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"
    exchange.receive(_invalidate(b"a") + _invalidate(b"b") + b"+OK\r\n" + _invalidate(b"c")
                     + flush + _invalidate(b"d") + other + _invalidate(b"e") + b":1\r\n"
                     + _invalidate(b"f"))
    assert seen == [
        ("push", [b"invalidate", [b"a", b"b"]]),
        ("done", ["OK"]),
        ("push", [b"invalidate", [b"c"]]),
        ("push", [b"invalidate", None]),  # never merged: it drops everything
        ("push", [b"invalidate", [b"d"]]),
        ("push", [b"message", b"ch", b"x"]),
        ("push", [b"invalidate", [b"e"]]),
        ("done", [1]),
        ("push", [b"invalidate", [b"f"]]),  # after the last reply: at the end of the chunk
    ]


def test_a_lone_push_is_handed_on_as_it_came() -> None:
    pushes: list[Push] = []
    exchange = Exchange(pushes.append, lambda request: None)
    exchange.receive(_invalidate(b"a"))
    assert len(pushes) == 1 and type(pushes[0]) is Push
    assert pushes[0] == [b"invalidate", [b"a"]]


def test_pushes_read_before_a_protocol_error_are_handed_on() -> None:
    exchange, seen = _exchange()
    exchange.expect(_Request(2))
    with pytest.raises(ProtocolError):
        exchange.receive(_invalidate(b"a") + b"+OK\r\n" + _invalidate(b"b") + b"!garbage\r\n")
    assert seen == [("push", [b"invalidate", [b"a", b"b"]])]


def test_a_reply_nobody_asked_for_hands_on_the_pushes_before_it() -> None:
    exchange, seen = _exchange()
    with pytest.raises(ProtocolError, match="nobody asked"):
        exchange.receive(_invalidate(b"a") + b"+OK\r\n")
    assert seen == [("push", [b"invalidate", [b"a"]])]


def test_the_replies_of_one_request_may_come_over_several_receives() -> None:
    exchange, seen = _exchange()
    first, second = _Request(3), _Request(2)
    exchange.expect(first)
    exchange.expect(second)
    exchange.receive(b":1\r\n:2")
    assert seen == [] and first.replies == [1]
    exchange.receive(b"\r\n")
    assert seen == [] and first.replies == [1, 2]
    exchange.receive(b":3\r\n:4\r\n")  # the end of one, the start of the next
    assert seen == [("done", [1, 2, 3])] and second.replies == [4]
    exchange.receive(b"+OK\r\n")
    assert seen == [("done", [1, 2, 3]), ("done", [4, "OK"])]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.data())
def test_any_stream_split_anywhere_completes_every_request_in_order(
    sizes: list[int], data: st.DataObject
) -> None:
    """Replies of requests of ``sizes`` replies each, with invalidations of keys
    anywhere among them, fed in chunks split anywhere: every request gets its
    own replies and completes in order, and every invalidation is handed on,
    in order, before the request whose reply came after it completes."""
    replies = [[len(sizes) * 10 + i * 5 + j for j in range(size)]
               for i, size in enumerate(sizes)]
    stream: list[bytes] = []
    pushed_before: list[int] = []  # per request: invalidations sent before its last reply
    key = 0
    for values in replies:
        for value in values:
            for _ in range(data.draw(st.integers(0, 2))):
                stream.append(_invalidate(b"k%d" % key))
                key += 1
            stream.append(b":%d\r\n" % value)
        pushed_before.append(key)
    for _ in range(data.draw(st.integers(0, 2))):
        stream.append(_invalidate(b"k%d" % key))
        key += 1
    wire = b"".join(stream)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=8)))
    exchange, seen = _exchange()
    for size in sizes:
        exchange.expect(_Request(size))
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        exchange.receive(wire[start:end])
    assert [replies for what, replies in seen if what == "done"] == replies
    keys: list[bytes] = []
    done = 0
    for what, value in seen:
        if what == "push":
            keys += value[1]
        else:
            assert len(keys) >= pushed_before[done], "a push was handed on after a later reply"
            done += 1
    assert keys == [b"k%d" % k for k in range(key)]


def test_a_reply_beyond_every_request_fails_after_the_ones_before_it_complete() -> None:
    exchange, seen = _exchange()
    exchange.expect(_Request(2))
    with pytest.raises(ProtocolError, match="nobody asked"):
        exchange.receive(b":1\r\n:2\r\n:3\r\n")
    assert seen == [("done", [1, 2])]
