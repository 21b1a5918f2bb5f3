"""Memory bounds: the local cache keeps to ``cache_max_bytes`` under churn, and a
hostile server cannot make the client allocate what a length field announces.

The churn test runs ``SUITE_GETS`` gets (not the 1,000,000 of
``python -m benchmarks.memory``, which takes minutes on a small machine) over
100,000 keys with a 10 MiB bound, with the same checks.
"""

from __future__ import annotations

import socket
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import valkeyaside
from benchmarks.memory import run_memory
from valkeyaside.cache._store import Entry, LocalStore
from valkeyaside.resp3 import ProtocolError

MIB = 2**20
SUITE_GETS = 80_000  # the first half fills the 10 MiB cache (about 25,000 entries)
KEYS = 100_000
MAX_BYTES = 10 * MIB


@pytest.mark.timeout(240)
def test_local_cache_stays_bounded_under_churn(server_url: str) -> None:
    result = run_memory(server_url, gets=SUITE_GETS, keys=KEYS, max_bytes=MAX_BYTES,
                        value_size=100, seed=7)
    stats = result.stats
    assert result.wrong_values == 0
    assert result.over_bound == 0, f"stats()['bytes'] reached {result.bytes_max_seen}"
    assert stats["bytes"] <= MAX_BYTES
    # The bound was actually reached, and kept by evicting.
    assert result.bytes_max_seen >= 0.9 * MAX_BYTES
    assert stats["evictions"] > 10_000
    assert stats["misses"] > SUITE_GETS // 2
    # The process stops growing once the cache is full ...
    assert result.second_half_growth <= 4 * MIB, (result.rss_half, result.rss_end)
    # ... and what it holds is of the order of the bound (about 25,000 entries).
    assert result.rss_end - result.rss_before <= 2 * MAX_BYTES + 4 * MIB


# -- a hostile server -------------------------------------------------------------

HELLO_REPLY = b"%1\r\n$5\r\nproto\r\n:3\r\n"


def _store_state(store: LocalStore) -> Any:
    return ([(key, entry.size, entry.used) for key, entry in store.entries.items()],
            store.bytes, store.evictions)


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 60), st.booleans()),
                max_size=12),
       st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(1, 120)),
                max_size=10, unique_by=lambda item: item[0]))
def test_put_many_keeps_what_puts_one_by_one_keep(
    before: List[Tuple[str, int, bool]], batch: List[Tuple[str, int]]
) -> None:
    """A batch's entries go into the bounded store in one call: the same entries,
    bytes and evictions as putting them one by one."""
    one_by_one, at_once = LocalStore(100), LocalStore(100)
    for store in (one_by_one, at_once):
        for key, size, used in before:
            entry = Entry(b"", "", True, 0.0, size)
            store.put(key, entry)
            entry.used = used
    for key, size in batch:
        one_by_one.put(key, Entry(b"", "", True, 0.0, size))
    at_once.put_many([(key, Entry(b"", "", True, 0.0, size)) for key, size in batch])
    assert _store_state(at_once) == _store_state(one_by_one)
    assert at_once.bytes <= 100


def _take_command(buf: bytes) -> Tuple[Optional[List[bytes]], bytes]:
    """One RESP array of bulk strings off the front of ``buf``, or (None, buf)."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None, buf
    assert buf[:1] == b"*", buf[:40]
    count = int(buf[1:end])
    pos = end + 2
    args: List[bytes] = []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, buf
        length = int(buf[pos + 1:end])
        if len(buf) < end + 2 + length + 2:
            return None, buf
        args.append(buf[end + 2:end + 2 + length])
        pos = end + 2 + length + 2
    return args, buf[pos:]


class FakeServer:
    """A stdlib TCP server that answers like Valkey during the handshake
    (``HELLO`` gets a RESP3 map, ``CLIENT TRACKING`` gets ``+OK``), then
    answers the first other command with ``payload``; with ``close_after``
    it then hangs up."""

    def __init__(self, payload: bytes, *, close_after: bool = False) -> None:
        self.payload = payload
        self.close_after = close_after
        self.commands: List[List[bytes]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:
                    command, buf = _take_command(buf)
                    if command is None:
                        break
                    self.commands.append(command)
                    name = command[0].upper()
                    if name == b"HELLO":
                        reply = HELLO_REPLY
                    elif name == b"CLIENT" and command[1].upper() == b"TRACKING":
                        reply = b"+OK\r\n"
                    else:
                        reply = self.payload
                    try:
                        conn.sendall(reply)
                    except OSError:  # the client gave up on us: fine
                        return
                    if reply is self.payload and self.close_after:
                        return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def fake_server() -> Any:
    servers: List[FakeServer] = []

    def make(payload: bytes, **kwargs: Any) -> FakeServer:
        server = FakeServer(payload, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="module", autouse=True)
def _lazy_imports_done() -> None:
    """One untraced round trip first: connecting imports modules lazily (the
    ``idna`` codec, about 1 MiB the first time), which is no allocation of ours."""
    server = FakeServer(b"+PONG\r\n")
    try:
        with valkeyaside.Client(server.url, socket_timeout=10) as client:
            assert client.execute("PING") == "PONG"
    finally:
        server.close()


def _traced_call(url: str, call: Callable[[valkeyaside.Client], Any]) -> Tuple[Any, int]:
    """(what ``call(client)`` returned or raised, the tracemalloc peak during it)."""
    client = valkeyaside.Client(url, socket_timeout=10, connect_timeout=5)
    tracemalloc.start()
    try:
        try:
            outcome: Any = call(client)
        except Exception as exc:
            outcome = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        client.close()
    return outcome, peak


CALLS = {
    "execute": lambda client: client.execute("GET", "k"),
    "get": lambda client: client.get("k", 10),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    "payload",
    [
        b"$4294967296\r\n",
        b"*4294967297\r\n",
        b"%4294967297\r\n",
        b"=4294967296\r\n",
        b"!4294967296\r\n",
        b"$?\r\n;4294967296\r\n",
        b"$" + b"9" * 40 + b"\r\n",
    ],
    ids=lambda p: repr(p[:16])[2:-1],
)
def test_hostile_length_costs_no_allocation(fake_server: Any, payload: bytes, call: str) -> None:
    server = fake_server(payload)
    outcome, peak = _traced_call(server.url, CALLS[call])
    assert isinstance(outcome, valkeyaside.ConnectionError), repr(outcome)
    assert isinstance(outcome.__cause__, ProtocolError), repr(outcome.__cause__)
    assert peak < 1 * MIB, f"peak {peak} bytes"
    assert [c[0].upper() for c in server.commands[:2]] == [b"HELLO", b"CLIENT"]


def test_bulk_at_the_limit_costs_nothing_until_its_bytes_arrive(fake_server: Any) -> None:
    # 512 MiB announced (the default max_bulk_len), 1000 bytes sent, then hang up.
    server = fake_server(b"$536870912\r\n" + b"x" * 1000, close_after=True)
    outcome, peak = _traced_call(server.url, CALLS["execute"])
    assert isinstance(outcome, valkeyaside.ConnectionError), repr(outcome)
    assert not isinstance(outcome.__cause__, ProtocolError)
    assert peak < 1 * MIB, f"peak {peak} bytes"


def test_traced_peak_does_see_what_the_reader_thread_allocates(fake_server: Any) -> None:
    # The control for the tests above: a real 1 MiB reply shows up in the peak.
    body = b"x" * MIB
    server = fake_server(b"$%d\r\n%s\r\n" % (len(body), body))
    outcome, peak = _traced_call(server.url, CALLS["execute"])
    assert outcome == body
    assert peak >= MIB
