"""Soak test: many reader processes, one writer, and a staleness checker.

One writer process bumps version numbers of ``--keys`` keys at
``--write-rate`` writes per second, through a plain :class:`valkeyaside.Client`:
each write stores version ``v`` in the "database" (the source key
``<prefix>db:<i>``) and then updates the cache key ``<prefix>c:<i>``, either
write-through (``execute("SET", key, value, "PX", ttl)``) or by ``delete``
(the readers' loaders then refill it from the database). Versions are one
global sequence (1, 2, 3, ...), so a version also names its key. Values are
``"<version>:"`` followed by padding (``--pad`` bytes).

Reader processes (``--processes``) call ``client.get(key, ttl, loader)`` on
random keys, where the loader reads the source key with ``execute("GET", ...)``.
``--front`` says what a reader process is: ``sync`` (the default), ``--threads``
threads sharing one ``Client``; ``async``, ``--tasks`` tasks of one event loop
sharing one ``AsyncClient`` (the loader an ``async def``; each task yields to
the loop after each read, as a request handler would); ``mixed``, the two
alternating (even processes threaded, odd ones asyncio). Both kinds run the
same checker: it is written once, as generators that do no I/O
(``_reads``, ``_fences``), and a thread or a task performs what they yield.
Nothing is stored per read: every read is checked as it completes, so the
memory figures measure the client, not the checker.

Staleness, precisely
--------------------
The writer publishes, in memory shared with every process, ``acked[key]``
(the newest version of each key whose write was acknowledged) and
``t_ack[v]`` (``time.monotonic()``, a system-wide clock on Linux, taken when
both commands of write ``v`` had been acknowledged), in that order.

Each reader process runs a *fence*: it copies ``acked`` (snapshot taken at
``t_snap``), then sends ``PING`` on the client's own connection and waits for
the reply, then publishes the snapshot as that process's ``floor``. The
server queues the invalidation push for a tracked key to the reader's
connection while it executes the write, before it acknowledges the write;
the ``PING`` was sent after that acknowledgement, so its reply follows the
push on the same connection, and the client handles frames in order (the
threaded client's reader thread; the asyncio client's protocol, which applies
pushes before any later reply is looked at): when the fence's reply arrives,
every invalidation of a write in the snapshot has been applied to the local
cache. Hence the definition:

    A read is **stale** when it returned version ``r`` of key ``k`` while the
    ``floor`` it read before starting (from a fence completed before it
    began) says ``floor[k] > r``.

That is exactly "the read began after the write was acknowledged and after
its invalidation provably reached this client, yet returned an older
version". It holds across reconnects too: a fence answered on a new
connection proves nothing about keys cached through the old one, whose
invalidations died with it, so the client must have dropped those entries
before the new connection carried anything. Stale reads must be 0.

For each stale read the reader also asks the server (uncached ``GET``) what
the key holds now: a version older than the floor there too means the old
value was written back to the server (a cache-aside fill that should have
been refused), not merely kept locally.

Also checked and reported:

- **impossible reads**: a version that the writer had not begun to write
  (``r > begun[k]``, read after the ``get`` returned), or a value that does
  not parse: must be 0 (it would mean a corrupted or misrouted reply).
- **errors**: exceptions from ``get`` or the fence (must be 0, except
  connection errors while ``--kill-every`` makes the writer kill the
  readers' connections on purpose).
- **old-value window**: reads returning a version older than the newest one
  acknowledged before they began, but not yet covered by a fence (allowed:
  the invalidation was still in flight). The longest such window is
  ``t_start - t_ack`` of the newer version: how long after a write's
  acknowledgement a read could still begin and see the previous value.
- **visibility lag**: for each process and each version that some read in
  it returned, the time from the write's acknowledgement to the end of the
  first read in that process returning it (0 when the version was seen
  before the writer had its acknowledgement). Max, p50 and p99 (p50 and p99
  to a power-of-two microsecond bucket).
- **memory**: the resident set size of every reader process (from
  ``/proc/self/statm``) after connecting, once warm (after 10 % of the run),
  at every tenth of the run and at the end, with ``sys.getallocatedblocks()``
  beside it (flat blocks with a growing RSS point at the allocator, not at
  live Python objects); ``--trace-memory`` also runs ``tracemalloc`` in the
  readers and lists where traced memory grew between warm and end.

``--broken-cache`` is the negative control: readers put a naive local memo
(kept 0.5 s, never invalidated) in front of ``get``; the checker must then
report stale reads.

Run: ``python -m benchmarks.soak --seconds 60 --processes 8 [--threads 4]
[--front sync|async|mixed] [--tasks 16] [--keys 16] [--write-rate 500]
[--delete-share 0.5] [--kill-every 0] [--url valkey://host:port/db]``
(a throwaway valkey-server is started unless ``--url`` is given). The exit
status is non-zero when a stale or impossible read or an unexpected error
was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import queue
import random
import re
import secrets
import sys
import threading
import time
import traceback
import tracemalloc
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

from benchmarks.memory import rss_bytes

__all__ = ["FRONTS", "SoakConfig", "SoakResult", "cluster_chaos", "run_soak"]

FRONTS = ("sync", "async", "mixed")
_BUCKETS = 48  # visibility lag histogram: bucket i holds lags < 2**i microseconds
_MAX_EXAMPLES = 10
_READY_TIMEOUT = 60.0
_RESULT_GRACE = 60.0


@dataclasses.dataclass
class SoakConfig:
    """What to run; see the module docstring."""

    url: str
    seconds: float = 10.0
    processes: int = 3
    threads: int = 4
    front: str = "sync"  # "sync", "async", or "mixed" (even processes sync, odd async)
    tasks: int = 16  # reader tasks of each asyncio process
    keys: int = 16
    write_rate: float = 500.0
    delete_share: float = 0.5
    ttl: float = 10.0
    pad: int = 64
    fence_interval: float = 0.005
    kill_every: float = 0.0
    broken_cache: bool = False
    trace_memory: bool = False
    seed: Optional[int] = None
    prefix: str = ""

    def key(self, index: int) -> str:
        return f"{self.prefix}c:{index}"

    def front_of(self, index: int) -> str:
        """``"sync"`` (threads of one ``Client``) or ``"async"`` (tasks of one
        ``AsyncClient``): the front end of reader process ``index``."""
        if self.front not in FRONTS:
            raise ValueError(f"front must be one of {', '.join(FRONTS)}, not {self.front!r}")
        if self.front == "mixed":
            return "async" if index % 2 else "sync"
        return self.front

    def readers(self) -> str:
        """The reader processes, in words."""
        fronts = [self.front_of(i) for i in range(self.processes)]
        parts = []
        for front, each in (("sync", f"{self.threads} threads"),
                            ("async", f"{self.tasks} asyncio tasks")):
            count = fronts.count(front)
            if count:
                parts.append(f"{count} reader process{'es' if count != 1 else ''} x {each}")
        return " + ".join(parts) or "no reader processes"

    def source_key(self, index: int) -> str:
        return f"{self.prefix}db:{index}"


@dataclasses.dataclass
class SoakResult:
    """Totals of one run; ``ok`` tells whether the checker found nothing wrong."""

    config: SoakConfig
    elapsed: float = 0.0
    reads: int = 0
    writes: int = 0
    writes_through: int = 0
    writes_deleted: int = 0
    write_errors: List[str] = dataclasses.field(default_factory=list)
    kills: int = 0
    stale: int = 0
    stale_on_server: int = 0
    stale_examples: List[str] = dataclasses.field(default_factory=list)
    impossible: int = 0
    impossible_examples: List[str] = dataclasses.field(default_factory=list)
    errors: int = 0
    connection_errors: int = 0
    error_examples: List[str] = dataclasses.field(default_factory=list)
    fenced_reads: int = 0
    old_reads: int = 0
    old_window_max: float = 0.0
    lag_count: int = 0
    lag_max: float = 0.0
    lag_histogram: List[int] = dataclasses.field(default_factory=lambda: [0] * _BUCKETS)
    fences: int = 0
    fence_rtt_max: float = 0.0
    client_stats: Dict[str, int] = dataclasses.field(default_factory=dict)
    processes: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ops_per_second(self) -> float:
        return self.reads / self.elapsed if self.elapsed > 0 else 0.0

    def lag_percentile(self, q: float) -> float:
        """Upper bound (seconds) of the bucket holding the ``q`` percentile lag."""
        if not self.lag_count:
            return 0.0
        rank = max(1, int(q / 100.0 * self.lag_count + 0.999999))
        seen = 0
        for i, count in enumerate(self.lag_histogram):
            seen += count
            if seen >= rank:
                return min((2**i) / 1e6, self.lag_max)
        return self.lag_max

    @property
    def unexpected_errors(self) -> int:
        tolerated = self.connection_errors if self.config.kill_every > 0 else 0
        return self.errors - tolerated + len(self.write_errors)

    @property
    def ok(self) -> bool:
        return self.stale == 0 and self.impossible == 0 and self.unexpected_errors == 0


# -- shared state --------------------------------------------------------------


@dataclasses.dataclass
class _Shared:
    acked: Any  # RawArray('q', keys): newest acknowledged version per key
    begun: Any  # RawArray('q', keys): newest version whose write has begun, per key
    t_ack: Any  # RawArray('d', capacity): acknowledgement time per version
    t_stop: Any  # RawValue('d'): when everyone stops (monotonic)
    t_warm: Any  # RawValue('d'): when the run counts as warm (monotonic)
    capacity: int


def _value(version: int, pad: str) -> str:
    return f"{version}:{pad}"


def _version(value: Any) -> int:
    if isinstance(value, bytes):
        value = value.decode()
    return int(value.split(":", 1)[0])


# -- the writer ------------------------------------------------------------------


def _writer_main(cfg: SoakConfig, shared: _Shared, ready: Any, start: Any, results: Any) -> None:
    import valkeyaside

    out: Dict[str, Any] = {"role": "writer", "writes": 0, "through": 0, "deleted": 0,
                           "errors": [], "kills": 0}
    try:
        rng = random.Random(None if cfg.seed is None else cfg.seed * 7919 + 1)
        pad = "x" * cfg.pad
        ttl_ms = int(cfg.ttl * 1000)
        client = valkeyaside.Client(cfg.url, client_name="soak-writer")
        try:
            for i in range(cfg.keys):
                client.execute("SET", cfg.source_key(i), _value(0, pad))
                client.delete(cfg.key(i))
                shared.acked[i] = 0
                shared.begun[i] = 0
            ready.put(("writer", os.getpid()))
            if not start.wait(_READY_TIMEOUT * 2):
                raise RuntimeError("never told to start")
            t_stop = shared.t_stop.value
            killer = None
            stop_killing = threading.Event()
            if cfg.kill_every > 0:
                killer = threading.Thread(
                    target=_killer, args=(client, cfg.kill_every, stop_killing, out), daemon=True
                )
                killer.start()
            interval = 1.0 / cfg.write_rate
            next_at = time.monotonic()
            version = 0
            acked = shared.acked
            begun = shared.begun
            t_ack = shared.t_ack
            while True:
                now = time.monotonic()
                if now >= t_stop or version + 1 >= shared.capacity:
                    break
                if next_at > now:
                    time.sleep(min(next_at - now, t_stop - now))
                    continue
                next_at = max(next_at + interval, now - 10 * interval)  # no long bursts
                version += 1
                k = rng.randrange(cfg.keys)
                value = _value(version, pad)
                begun[k] = version
                try:
                    client.execute("SET", cfg.source_key(k), value)
                    if rng.random() < cfg.delete_share:
                        client.delete(cfg.key(k))
                        out["deleted"] += 1
                    else:
                        reply = client.execute("SET", cfg.key(k), value, "PX", ttl_ms)
                        if reply != "OK":
                            raise RuntimeError(f"SET answered {reply!r}")
                        out["through"] += 1
                except Exception as exc:  # a write that may or may not have happened
                    out["errors"].append(f"write of version {version}: {exc!r}")
                    break  # its version is unknown to readers: stop writing
                t_ack[version] = time.monotonic()
                acked[k] = version
                out["writes"] += 1
            stop_killing.set()
            if killer is not None:
                killer.join(10)
        finally:
            client.close()
    except Exception:
        out["errors"].append(traceback.format_exc())
        ready.put(("writer", os.getpid()))  # let the parent stop waiting
    results.put(out)


_CLIENT_LINE = re.compile(r"\bid=(\d+)\b.*\bname=(soak-reader-\S*)")


def _killer(client: Any, every: float, stop: threading.Event, out: Dict[str, Any]) -> None:
    """Kill the reader processes' connections every ``every`` seconds (chaos)."""
    while not stop.wait(every):
        try:
            listing = client.execute("CLIENT", "LIST", "TYPE", "normal")
            if isinstance(listing, bytes):
                listing = listing.decode()
            for line in str(listing).splitlines():
                match = _CLIENT_LINE.search(line)
                if match:
                    client.execute("CLIENT", "KILL", "ID", match.group(1))
                    out["kills"] += 1
        except Exception as exc:
            out["errors"].append(f"killer: {exc!r}")
            return


# -- the readers -----------------------------------------------------------------


class _ProcessState:
    """What the threads of one reader process share."""

    def __init__(self, keys: int) -> None:
        self.floor: List[int] = [0] * keys  # replaced whole by the fence thread
        self.first_seen: List[int] = [0] * keys  # newest version returned so far, per key
        self.lag_histogram = [0] * _BUCKETS
        self.lag_count = 0
        self.lag_max = 0.0
        self.lag_max_at = ""
        self.rss_warm = 0
        self.rss_max = 0
        self.fences = 0
        self.fence_rtt_max = 0.0
        self.traced_warm: Any = None
        self.rss_samples: List[int] = []
        self.block_samples: List[int] = []  # sys.getallocatedblocks(): Python's own objects
        self.next_sample = 0.0
        self.sample_every = 1.0


class _ThreadStats:
    __slots__ = ("connection_errors", "error_examples", "errors", "fenced", "impossible",
                 "impossible_examples", "old", "old_window_max", "reads", "stale",
                 "stale_examples", "stale_on_server")

    def __init__(self) -> None:
        self.reads = 0
        self.fenced = 0
        self.stale = 0
        self.stale_on_server = 0
        self.stale_examples: List[str] = []
        self.impossible = 0
        self.impossible_examples: List[str] = []
        self.errors = 0
        self.connection_errors = 0
        self.error_examples: List[str] = []
        self.old = 0
        self.old_window_max = 0.0


def _note_error(stats: _ThreadStats, exc: BaseException, connection_error: type) -> None:
    stats.errors += 1
    if isinstance(exc, connection_error):
        stats.connection_errors += 1
    if len(stats.error_examples) < _MAX_EXAMPLES:
        stats.error_examples.append(f"{type(exc).__name__}: {exc}")


# The checker is written once, as generators that do no I/O (the way the
# client's own algorithm is): ``_reads`` picks each read and checks what it
# returned, ``_fences`` publishes the floors. A thread or a task drives them:
# it performs what they yield and sends the reply back in (or throws the
# ``ValkeyError``). Threaded readers (``_read_loop``, ``_fence_loop``) and
# asyncio readers (``_read_task``, ``_fence_task``) differ in nothing else.

_GET = 0  # yielded with k: ``get(key k, ttl, loader)``; send its value
_SERVER = 1  # yielded with k: ``execute("GET", key k)`` (uncached); send its reply
_PING = 0  # yielded by the fence: ``execute("PING")`` on the reader's client
_SLEEP = 1  # yielded by the fence: wait ``fence_interval``


def _reads(cfg: SoakConfig, shared: _Shared, state: _ProcessState, stats: _ThreadStats,
           seed: int) -> Generator[Tuple[int, int], Any, None]:
    """The checker of one reader (a thread or a task): yields ``(_GET, k)`` for each
    read and ``(_SERVER, k)`` to ask the server about a stale one; ends at ``t_stop``."""
    import valkeyaside

    rng = random.Random(seed)
    acked = shared.acked
    begun = shared.begun
    t_ack = shared.t_ack
    t_stop = shared.t_stop.value
    nkeys = cfg.keys
    monotonic = time.monotonic
    first_seen = state.first_seen
    memo: Dict[int, Any] = {}  # only with cfg.broken_cache
    broken = cfg.broken_cache
    valkey_error = valkeyaside.ValkeyError
    connection_error = valkeyaside.ConnectionError
    while True:
        k = int(rng.random() * nkeys)
        floor = state.floor[k]  # from a fence completed before this read began
        newest = acked[k]  # t_ack[newest] was written before acked[k]
        t0 = monotonic()
        if t0 >= t_stop:
            return
        try:
            if broken:
                held = memo.get(k)
                if held is not None and t0 - held[1] < 0.5:
                    value = held[0]
                else:
                    value = yield _GET, k
                    memo[k] = (value, t0)
            else:
                value = yield _GET, k
        except valkey_error as exc:
            _note_error(stats, exc, connection_error)
            continue
        t1 = monotonic()
        stats.reads += 1
        try:
            r = _version(value)
        except (AttributeError, ValueError, UnicodeDecodeError):
            r = -1
        if r < 0 or r > begun[k]:
            stats.impossible += 1
            if len(stats.impossible_examples) < _MAX_EXAMPLES:
                stats.impossible_examples.append(
                    f"key {k}: got {value!r:.40} while the newest version begun is {begun[k]}")
            continue
        if floor:
            stats.fenced += 1
            if r < floor:
                stats.stale += 1
                # Where is the old value: only here, or on the server too?
                try:
                    held = _version((yield _SERVER, k))
                except (valkey_error, AttributeError, ValueError, UnicodeDecodeError):
                    held = -1  # absent, a placeholder, or no answer
                if 0 <= held < floor:
                    stats.stale_on_server += 1
                if len(stats.stale_examples) < _MAX_EXAMPLES:
                    stats.stale_examples.append(
                        f"key {k}: got version {r}, fenced floor {floor} acknowledged "
                        f"{(t0 - t_ack[floor]) * 1e3:.3f} ms before the read began; "
                        f"the server now holds {held if held >= 0 else 'no version'}")
        if r < newest:
            stats.old += 1
            window = t0 - t_ack[newest]
            if window > stats.old_window_max:
                stats.old_window_max = window
        if r > first_seen[k]:
            first_seen[k] = r
            acked_at = t_ack[r]
            lag = t1 - acked_at if acked_at > 0 and t1 > acked_at else 0.0
            state.lag_count += 1
            state.lag_histogram[min(int(lag * 1e6).bit_length(), _BUCKETS - 1)] += 1
            if lag > state.lag_max:
                state.lag_max = lag
                state.lag_max_at = f"key {k} version {r}"


def _fences(cfg: SoakConfig, shared: _Shared, state: _ProcessState,
            stats: _ThreadStats) -> Generator[int, Any, None]:
    """The fence of one reader process: yields ``_PING`` (its reply sent back, or its
    error thrown in) and ``_SLEEP``; also samples memory. Ends at ``t_stop``."""
    import valkeyaside

    acked = shared.acked
    t_stop = shared.t_stop.value
    t_warm = shared.t_warm.value
    monotonic = time.monotonic
    while True:
        now = monotonic()
        if now >= t_stop:
            return
        if not state.rss_warm and now >= t_warm:
            state.rss_warm = rss_bytes()
            if tracemalloc.is_tracing():
                state.traced_warm = tracemalloc.take_snapshot()
        if now >= state.next_sample:  # ten samples over the run
            state.rss_samples.append(rss_bytes())
            state.block_samples.append(sys.getallocatedblocks())
            state.next_sample += state.sample_every
        snapshot = acked[:]
        sent = monotonic()
        try:
            yield _PING
        except valkeyaside.ValkeyError as exc:
            _note_error(stats, exc, valkeyaside.ConnectionError)
            yield _SLEEP
            continue
        rtt = monotonic() - sent
        state.floor = snapshot
        state.fences += 1
        if rtt > state.fence_rtt_max:
            state.fence_rtt_max = rtt
        if state.fences % 64 == 0:
            state.rss_max = max(state.rss_max, rss_bytes())
        yield _SLEEP


def _fence_ping(client: Any) -> None:
    """``PING`` on every link of the client: on a cluster, one per primary."""
    each = getattr(client.connection, "call_each_primary", None)
    if each is None:
        client.execute("PING")
    else:
        _raise_any(each("PING"))


async def _fence_ping_async(client: Any) -> None:
    each = getattr(client.connection, "call_each_primary", None)
    if each is None:
        await client.execute("PING")
    else:
        _raise_any(await each("PING"))


def _raise_any(replies: Dict[Any, Any]) -> None:
    for reply in replies.values():
        if isinstance(reply, Exception):
            raise reply


def _source_loader(execute: Callable[..., Any], cfg: SoakConfig) -> Callable[[str], Any]:
    """The readers' loader: the key's row from the "database" (an uncached GET);
    awaitable when ``execute`` is."""
    sources = [cfg.source_key(i) for i in range(cfg.keys)]

    def loader(key: str) -> Any:
        return execute("GET", sources[int(key.rsplit(":", 1)[1])])

    return loader


def _read_loop(client: Any, cfg: SoakConfig, shared: _Shared, state: _ProcessState,
               stats: _ThreadStats, seed: int) -> None:
    """A reader thread of a threaded process: drives ``_reads`` through ``client.get``."""
    import valkeyaside

    keys = [cfg.key(i) for i in range(cfg.keys)]
    get = client.get
    execute = client.execute
    loader = _source_loader(execute, cfg)
    ttl = cfg.ttl
    valkey_error = valkeyaside.ValkeyError
    reads = _reads(cfg, shared, state, stats, seed)
    send = reads.send
    try:
        what, k = next(reads)
        while True:
            try:
                value = get(keys[k], ttl, loader) if what == _GET else execute("GET", keys[k])
            except valkey_error as exc:
                what, k = reads.throw(exc)
            else:
                what, k = send(value)
    except StopIteration:
        return


def _fence_loop(client: Any, cfg: SoakConfig, shared: _Shared, state: _ProcessState,
                stats: _ThreadStats) -> None:
    """The fence thread of a threaded process: drives ``_fences``."""
    import valkeyaside

    fences = _fences(cfg, shared, state, stats)
    try:
        step = next(fences)
        while True:
            if step == _SLEEP:
                time.sleep(cfg.fence_interval)
                step = next(fences)
                continue
            try:
                _fence_ping(client)
            except valkeyaside.ValkeyError as exc:
                step = fences.throw(exc)
            else:
                step = next(fences)
    except StopIteration:
        return


async def _read_task(client: Any, cfg: SoakConfig, shared: _Shared, state: _ProcessState,
                     stats: _ThreadStats, seed: int) -> None:
    """A reader task of an asyncio process: drives ``_reads`` through ``await client.get``
    (with an ``async def`` loader). It yields to the loop after every read, as a
    request handler would: a local hit returns without suspending, and a task that
    never suspends would keep the connection's pushes from being read at all."""
    import valkeyaside

    keys = [cfg.key(i) for i in range(cfg.keys)]
    get = client.get
    execute = client.execute
    load_row = _source_loader(execute, cfg)

    async def loader(key: str) -> Any:
        return await load_row(key)

    ttl = cfg.ttl
    valkey_error = valkeyaside.ValkeyError
    pause = asyncio.sleep
    reads = _reads(cfg, shared, state, stats, seed)
    send = reads.send
    try:
        what, k = next(reads)
        while True:
            try:
                if what == _GET:
                    value = await get(keys[k], ttl, loader)
                else:
                    value = await execute("GET", keys[k])
            except valkey_error as exc:
                what, k = reads.throw(exc)
            else:
                what, k = send(value)
            await pause(0)
    except StopIteration:
        return


async def _fence_task(client: Any, cfg: SoakConfig, shared: _Shared, state: _ProcessState,
                      stats: _ThreadStats) -> None:
    """The fence task of an asyncio process: drives ``_fences`` on the readers' client."""
    import valkeyaside

    fences = _fences(cfg, shared, state, stats)
    try:
        step = next(fences)
        while True:
            if step == _SLEEP:
                await asyncio.sleep(cfg.fence_interval)
                step = next(fences)
                continue
            try:
                await _fence_ping_async(client)
            except valkeyaside.ValkeyError as exc:
                step = fences.throw(exc)
            else:
                step = next(fences)
    except StopIteration:
        return


def _reader_main(index: int, cfg: SoakConfig, shared: _Shared, ready: Any, start: Any,
                 results: Any) -> None:
    out: Dict[str, Any] = {"role": "reader", "index": index, "pid": os.getpid(), "fatal": None,
                           "front": cfg.front_of(index), "traced_growth": []}
    if cfg.trace_memory:
        tracemalloc.start()
    try:
        if out["front"] == "async":
            asyncio.run(_async_reader(index, cfg, shared, ready, start, out))
        else:
            _threaded_reader(index, cfg, shared, ready, start, out)
    except Exception:
        out["fatal"] = traceback.format_exc()
        ready.put(("reader", os.getpid()))
    results.put(out)


def _connected(cfg: SoakConfig, ready: Any, out: Dict[str, Any]) -> _ProcessState:
    """The reader's client is connected: note the RSS, tell the parent."""
    out["rss_start"] = rss_bytes()
    state = _ProcessState(cfg.keys)
    ready.put(("reader", os.getpid()))
    return state


def _started(cfg: SoakConfig, shared: _Shared, state: _ProcessState, told: bool) -> None:
    if not told:
        raise RuntimeError("never told to start")
    state.sample_every = cfg.seconds / 10
    state.next_sample = shared.t_stop.value - cfg.seconds + state.sample_every


def _seed(index: int, reader: int, base: int) -> int:
    return base * 1000003 + index * 101 + reader


def _collect(out: Dict[str, Any], state: _ProcessState, all_stats: List[_ThreadStats],
             client_stats: Dict[str, int]) -> None:
    """What a reader process reports once its readers and its fence have stopped."""
    out["rss_end"] = rss_bytes()
    if state.traced_warm is not None:
        diff = tracemalloc.take_snapshot().compare_to(state.traced_warm, "lineno")
        total = sum(d.size_diff for d in diff)
        out["traced_growth"] = [f"total {total / 1024:+.1f} KiB"] + [
            f"{d.size_diff / 1024:+.1f} KiB ({d.count_diff:+d} blocks) "
            f"{d.traceback[0].filename}:{d.traceback[0].lineno}"
            for d in diff[:6]
        ]
    out["rss_warm"] = state.rss_warm or out["rss_end"]
    out["rss_max"] = max(state.rss_max, out["rss_end"])
    for name in _ThreadStats.__slots__:
        values = [getattr(s, name) for s in all_stats]
        if name.endswith("_examples"):
            out[name] = [e for v in values for e in v][:_MAX_EXAMPLES]
        elif name.endswith("_max"):
            out[name] = max(values)
        else:
            out[name] = sum(values)
    out["lag_histogram"] = state.lag_histogram
    out["lag_count"] = state.lag_count
    out["lag_max"] = state.lag_max
    out["lag_max_at"] = state.lag_max_at
    out["fences"] = state.fences
    out["rss_samples"] = state.rss_samples
    out["block_samples"] = state.block_samples
    out["fence_rtt_max"] = state.fence_rtt_max
    out["client_stats"] = client_stats


def _threaded_reader(index: int, cfg: SoakConfig, shared: _Shared, ready: Any, start: Any,
                     out: Dict[str, Any]) -> None:
    """``cfg.threads`` reader threads and a fence thread sharing one ``Client``."""
    import valkeyaside

    client = valkeyaside.Client(cfg.url, client_name=f"soak-reader-{index}")
    try:
        client.execute("PING")
        state = _connected(cfg, ready, out)
        _started(cfg, shared, state, start.wait(_READY_TIMEOUT * 2))
        base_seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
        all_stats = [_ThreadStats() for _ in range(cfg.threads + 1)]
        threads = [
            threading.Thread(
                target=_read_loop,
                args=(client, cfg, shared, state, all_stats[t], _seed(index, t, base_seed)),
                daemon=True,
            )
            for t in range(cfg.threads)
        ]
        threads.append(threading.Thread(
            target=_fence_loop, args=(client, cfg, shared, state, all_stats[-1]),
            daemon=True,
        ))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, shared.t_stop.value - time.monotonic()) + 30)
            if thread.is_alive():
                raise RuntimeError(f"reader thread {thread.name} did not stop")
        _collect(out, state, all_stats, client.stats())
    finally:
        client.close()


async def _async_reader(index: int, cfg: SoakConfig, shared: _Shared, ready: Any, start: Any,
                        out: Dict[str, Any]) -> None:
    """``cfg.tasks`` reader tasks and a fence task sharing one ``AsyncClient``."""
    import valkeyaside

    client = valkeyaside.AsyncClient(cfg.url, client_name=f"soak-reader-{index}")
    try:
        await client.execute("PING")
        state = _connected(cfg, ready, out)
        loop = asyncio.get_running_loop()  # wait off the loop: the client's link stays served
        _started(cfg, shared, state,
                 await loop.run_in_executor(None, start.wait, _READY_TIMEOUT * 2))
        base_seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
        all_stats = [_ThreadStats() for _ in range(cfg.tasks + 1)]
        tasks = [
            loop.create_task(_read_task(client, cfg, shared, state, all_stats[t],
                                        _seed(index, t, base_seed)))
            for t in range(cfg.tasks)
        ]
        tasks.append(loop.create_task(_fence_task(client, cfg, shared, state, all_stats[-1])))
        done, pending = await asyncio.wait(
            tasks, timeout=max(0.0, shared.t_stop.value - time.monotonic()) + 30)
        for task in pending:
            task.cancel()
        if pending:
            raise RuntimeError(f"{len(pending)} reader tasks did not stop")
        for task in done:
            task.result()  # a reader's own failure is this process's
        _collect(out, state, all_stats, client.stats())
    finally:
        await client.aclose()


# -- the conductor ------------------------------------------------------------------


def run_soak(cfg: SoakConfig, *, log: Any = None,
             during: Optional[Callable[[float], None]] = None) -> SoakResult:
    """Run the writer and the readers for ``cfg.seconds``; return what the checker saw.

    ``during(t_stop)``, if given, runs in a thread of this process while they
    run (chaos such as slot migrations); an exception from it is an error."""
    if not cfg.prefix:
        cfg = dataclasses.replace(cfg, prefix=f"soak:{secrets.token_hex(4)}:")
    ctx = multiprocessing.get_context("spawn")
    capacity = int(cfg.write_rate * cfg.seconds * 1.2) + 1000
    shared = _Shared(
        acked=ctx.RawArray("q", cfg.keys),
        begun=ctx.RawArray("q", cfg.keys),
        t_ack=ctx.RawArray("d", capacity),
        t_stop=ctx.RawValue("d", 0.0),
        t_warm=ctx.RawValue("d", 0.0),
        capacity=capacity,
    )
    ready = ctx.Queue()
    results = ctx.Queue()
    start = ctx.Event()
    procs = [ctx.Process(target=_writer_main, args=(cfg, shared, ready, start, results),
                         name="soak-writer", daemon=True)]
    procs += [
        ctx.Process(target=_reader_main, args=(i, cfg, shared, ready, start, results),
                    name=f"soak-reader-{i}", daemon=True)
        for i in range(cfg.processes)
    ]
    result = SoakResult(config=cfg)
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + _READY_TIMEOUT
        for _ in procs:
            ready.get(timeout=max(0.1, deadline - time.monotonic()))
        began = time.monotonic()
        shared.t_warm.value = began + 0.1 * cfg.seconds
        shared.t_stop.value = began + cfg.seconds
        start.set()
        chaos: List[str] = []
        if during is not None:
            chaos_thread = threading.Thread(target=_chaos, args=(during, began + cfg.seconds,
                                                                 chaos), daemon=True)
            chaos_thread.start()
        if log:
            log(f"running {cfg.seconds:g} s: 1 writer, {cfg.readers()}, {cfg.keys} keys")
        outs = []
        deadline = began + cfg.seconds + _RESULT_GRACE
        for _ in procs:
            try:
                outs.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
        result.elapsed = time.monotonic() - began
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        if during is not None:
            chaos_thread.join(max(0.1, deadline - time.monotonic()))
            if chaos_thread.is_alive():
                chaos.append("the chaos thread did not finish")
        result.errors += len(chaos)
        result.error_examples += chaos
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    if len(outs) != len(procs):
        result.error_examples.append(f"only {len(outs)} of {len(procs)} processes reported")
        result.errors += len(procs) - len(outs)
    _merge(result, outs, cfg)
    return result


def cluster_chaos(cluster: Any, cfg: SoakConfig, done: List[str], *,
                  atomic: bool) -> Callable[[float], None]:
    """Chaos for a soak on ``cluster`` (a ``tests/cluster.py`` ``ValkeyCluster``),
    for ``run_soak(during=...)``: at 20 % of the run the slot of the first
    soak key moves the legacy way (ASK in the middle), at 40 % (if ``atomic``)
    the slot of another moves with ``CLUSTER MIGRATESLOTS``, and at 60 % the
    primary of a third fails over to its replica. Each step that finished
    appends its name to ``done``."""
    from valkeyaside.cluster import key_slot

    slots = list(dict.fromkeys(key_slot(cfg.key(i)) for i in range(cfg.keys)))

    def other_primary(slot: int) -> Any:
        owner = cluster.slot_owner(slot)
        return next(node for node in cluster.primaries() if node.node_id != owner.node_id)

    def during(t_stop: float) -> None:
        began = t_stop - cfg.seconds

        def at(share: float) -> None:  # a schedule, not a wait for an event
            time.sleep(max(0.0, began + share * cfg.seconds - time.monotonic()))

        at(0.2)
        cluster.migrate_slot(slots[0], other_primary(slots[0]))
        done.append("legacy migration")
        if atomic:
            at(0.4)
            cluster.migrate_slots_atomic(slots[1], slots[1], other_primary(slots[1]))
            done.append("atomic migration")
        at(0.6)
        (replica,) = cluster.replicas_of(cluster.slot_owner(slots[2]))
        cluster.failover(replica)
        done.append("failover")

    return during


def _chaos(during: Callable[[float], None], t_stop: float, failures: List[str]) -> None:
    try:
        during(t_stop)
    except BaseException:
        failures.append("chaos: " + traceback.format_exc())


def _merge(result: SoakResult, outs: List[Dict[str, Any]], cfg: SoakConfig) -> None:
    for out in outs:
        if out["role"] == "writer":
            result.writes = out["writes"]
            result.writes_through = out["through"]
            result.writes_deleted = out["deleted"]
            result.write_errors = out["errors"]
            result.kills = out["kills"]
            continue
        if out.get("fatal"):
            result.errors += 1
            result.error_examples.append(f"reader {out['index']} died: {out['fatal']}")
            continue
        result.reads += out["reads"]
        result.fenced_reads += out["fenced"]
        result.stale += out["stale"]
        result.stale_on_server += out["stale_on_server"]
        result.stale_examples += out["stale_examples"]
        result.impossible += out["impossible"]
        result.impossible_examples += out["impossible_examples"]
        result.errors += out["errors"]
        result.connection_errors += out["connection_errors"]
        result.error_examples += out["error_examples"]
        result.old_reads += out["old"]
        result.old_window_max = max(result.old_window_max, out["old_window_max"])
        result.lag_count += out["lag_count"]
        result.lag_max = max(result.lag_max, out["lag_max"])
        result.lag_histogram = [a + b for a, b in zip(result.lag_histogram,
                                                      out["lag_histogram"])]
        result.fences += out["fences"]
        result.fence_rtt_max = max(result.fence_rtt_max, out["fence_rtt_max"])
        for name, value in out["client_stats"].items():
            result.client_stats[name] = result.client_stats.get(name, 0) + value
        result.processes.append({
            "index": out["index"], "front": out["front"], "reads": out["reads"],
            "rss_start": out["rss_start"],
            "rss_warm": out["rss_warm"], "rss_end": out["rss_end"], "rss_max": out["rss_max"],
            "lag_max": out["lag_max"], "lag_max_at": out["lag_max_at"],
            "old_window_max": out["old_window_max"], "fences": out["fences"],
            "rss_samples": out["rss_samples"], "traced_growth": out["traced_growth"],
            "block_samples": out["block_samples"],
        })
    result.processes.sort(key=lambda p: p["index"])


# -- report ------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def report(result: SoakResult) -> None:
    """Print the figures of a run."""
    from benchmarks._report import fmt_num, print_table

    cfg = result.config
    print_table(
        "Reader processes (RSS in MiB; lag and window in ms)",
        ["process", "front", "reads", "reads/s", "RSS start", "RSS warm", "RSS end", "RSS max",
         "end-warm", "max lag", "max old window", "fences"],
        [[str(p["index"]), p["front"], f"{p['reads']:,}", fmt_num(p["reads"] / result.elapsed, 0),
          _mib(p["rss_start"]), _mib(p["rss_warm"]), _mib(p["rss_end"]), _mib(p["rss_max"]),
          _mib(p["rss_end"] - p["rss_warm"]), f"{p['lag_max'] * 1e3:.2f}",
          f"{p['old_window_max'] * 1e3:.2f}", f"{p['fences']:,}"]
         for p in result.processes],
    )
    stats = result.client_stats
    growth = [p["rss_end"] - p["rss_warm"] for p in result.processes]
    growth_start = [p["rss_end"] - p["rss_start"] for p in result.processes]
    lines = [
        f"duration            {result.elapsed:.1f} s; {cfg.readers()}; {cfg.keys} keys; "
        f"ttl {cfg.ttl:g} s",
        f"reads               {result.reads:,} ({fmt_num(result.ops_per_second, 0)} reads/s); "
        f"{result.fenced_reads:,} checked against a fence",
        f"writes              {result.writes:,} ({result.writes_through:,} write-through SET, "
        f"{result.writes_deleted:,} delete + refill); {result.kills} connections killed",
        f"client stats        hits {stats.get('hits', 0):,}, misses {stats.get('misses', 0):,}, "
        f"loads {stats.get('loads', 0):,}, lock waits {stats.get('lock_waits', 0):,}, "
        f"invalidations {stats.get('invalidations', 0):,}, flushes {stats.get('flushes', 0):,}",
        f"STALE READS         {result.stale} ({result.stale_on_server} with an older version "
        "still on the server when asked right after)",
        f"impossible reads    {result.impossible}",
        f"errors              {result.errors} ({result.connection_errors} connection errors), "
        f"writer errors {len(result.write_errors)}",
        f"old-value reads     {result.old_reads:,} (invalidation still in flight); longest "
        f"window ack -> read start {result.old_window_max * 1e3:.2f} ms",
        f"visibility lag      {result.lag_count:,} first sightings; max "
        f"{result.lag_max * 1e3:.2f} ms, p50 <= {result.lag_percentile(50) * 1e3:.3f} ms, "
        f"p99 <= {result.lag_percentile(99) * 1e3:.3f} ms",
        f"fences              {result.fences:,}; longest round trip "
        f"{result.fence_rtt_max * 1e3:.2f} ms",
        f"RSS growth          warm -> end: max {_mib(max(growth, default=0))} MiB; "
        f"start -> end: max {_mib(max(growth_start, default=0))} MiB",
    ]
    print()
    print("RSS of each reader (MiB) at 10 %, 20 %, ... of the run; then Python's allocated "
          "blocks (thousands)")
    for p in result.processes:
        print(f"  {p['index']}: " + " ".join(_mib(r) for r in p["rss_samples"])
              + "  |  " + " ".join(f"{b / 1000:.1f}" for b in p["block_samples"]))
        for line in p["traced_growth"]:
            print(f"      traced growth warm -> end: {line}")
    print()
    print("\n".join(lines))
    for title, examples in (("stale", result.stale_examples),
                            ("impossible", result.impossible_examples),
                            ("error", result.error_examples + result.write_errors)):
        for example in examples[:_MAX_EXAMPLES]:
            print(f"  {title}: {example}")
    print("\nverdict: " + ("OK" if result.ok else "FAILED"))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4,
                        help="reader threads per threaded process")
    parser.add_argument("--front", choices=FRONTS, default="sync",
                        help="reader processes: threads of one Client (sync), tasks of one "
                             "AsyncClient (async), or both, alternating (mixed)")
    parser.add_argument("--tasks", type=int, default=16,
                        help="reader tasks per asyncio process")
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--write-rate", type=float, default=500.0, help="writes per second")
    parser.add_argument("--delete-share", type=float, default=0.5,
                        help="share of writes done by delete + refill (else write-through)")
    parser.add_argument("--ttl", type=float, default=10.0)
    parser.add_argument("--pad", type=int, default=64, help="padding bytes per value")
    parser.add_argument("--fence-interval", type=float, default=0.005)
    parser.add_argument("--kill-every", type=float, default=0.0,
                        help="kill the readers' connections every this many seconds (0: never)")
    parser.add_argument("--broken-cache", action="store_true",
                        help="negative control: a never-invalidated memo in front of get")
    parser.add_argument("--trace-memory", action="store_true",
                        help="run tracemalloc in the readers; report where memory grew")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--url", default=None, help="an existing server (else one is started)")
    parser.add_argument("--cluster", action="store_true",
                        help="start a cluster (3 primaries, 3 replicas) and, during the run, "
                             "migrate slots (legacy and atomic) and fail a primary over")
    args = parser.parse_args(argv)

    def config(url: str) -> SoakConfig:
        return SoakConfig(
            url=url, seconds=args.seconds, processes=args.processes,
            threads=args.threads, front=args.front, tasks=args.tasks, keys=args.keys,
            write_rate=args.write_rate,
            delete_share=args.delete_share, ttl=args.ttl, pad=args.pad,
            fence_interval=args.fence_interval, kill_every=args.kill_every,
            broken_cache=args.broken_cache, trace_memory=args.trace_memory, seed=args.seed,
        )

    def log(message: str) -> None:
        print(message, flush=True)

    if args.cluster:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "tests"))
        from cluster import ValkeyCluster, migrateslots_unsupported

        with ValkeyCluster(primaries=3, replicas=1) as cluster:
            url = "valkey://" + ",".join(node.address for node in cluster.primaries()) + "/0"
            cfg = config(url)
            done: List[str] = []
            atomic = migrateslots_unsupported(cluster.binary) is None
            result = run_soak(cfg, log=log, during=cluster_chaos(cluster, cfg, done,
                                                                  atomic=atomic))
            log(f"during the run: {', '.join(done) or 'nothing'}")
    else:
        from benchmarks._server import running_server

        with running_server(args.url) as server:
            result = run_soak(config(server.url), log=log)
    report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
