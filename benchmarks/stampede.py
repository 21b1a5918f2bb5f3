"""Stampede: many callers ask for one cold key whose loader is slow.

Two scenarios, each with a fresh key per round:

- 50 threads in one process;
- 8 processes x 20 threads.

The loader sleeps 200 ms (a slow database). For each run: how many times
the loader ran (the point of a cache-aside lock is exactly once), and how
long after the load's end (the loader returning) the callers that did not
load got their value: the last one, and the median (and, for scale, when
the caller that loaded got its own ``get`` back: the cost of the fill). Times are taken with
``time.time()`` in every process, so they compare across processes.

Contenders, on the same server, alternating round by round:

- ``valkeyaside``: ``Client.get(key, ttl, loader)``; waiters are woken by
  the invalidation push that the fill causes;
- ``dogpile.cache``: a region on the ``dogpile.cache.redis`` backend with
  ``distributed_lock=True`` (a redis-py lock, so that processes cooperate),
  ``thread_local_lock=False`` as it requires, ``lock_timeout=10`` and the
  default ``lock_sleep`` (0.1 s: a waiter retries the lock at that pace);
  ``region.get_or_create(key, loader)``.

Every process of a scenario is started once (spawned) and keeps one client
per contender for all rounds, as a service would; a round's callers are
released together after all of them are ready.

And, in the one-process scenario, its floor: ``floor (no server)``, the
same threads in a bare single flight with no client and no server: the
first caller loads, the others sleep on one pipe, as valkeyaside's threads
that follow a get do, and one write wakes them all when the load ends (the
pipes are not closed: the process is the benchmark's). What a client adds to
the tail is the difference.

Targets (issue 11): exactly 1 load; last waiter <= 5 ms after the load's end
with 50 threads, <= 25 ms with 8 x 20 (medians of rounds).

Placement: where this process may use two CPUs or more, the one-process
scenario's worker (and so all its threads) runs on one CPU (the lowest, or
``--pin CPU``) and the server it starts on the others, as the project's
benchmarks pin what compares round trips: the tail is then the client's and
its threads' wake-ups on one core, not where the host's scheduler happens to
spread 50 threads (on a small virtual machine a wake-up that crosses to the
other CPU costs more than one that stays, and how many cross changes from run
to run). The floor runs in the same place, so the two still compare.
``--no-pin`` leaves it all to the scheduler. The eight processes are never
pinned: on one CPU they would measure that CPU's run queue.

Run: ``python -m benchmarks.stampede [--rounds 5] [--load-ms 200]
[--pin CPU | --no-pin] [--url valkey://host:port/db]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import secrets
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from benchmarks._report import environment, fmt_num, median, print_table
from benchmarks._server import Server, running_server, server_version

OURS, DOGPILE, FLOOR = "valkeyaside", "dogpile.cache", "floor (no server)"
SCENARIOS: Tuple[Tuple[int, int, float], ...] = (
    # processes, threads per process, target ms for the last waiter
    (1, 50, 5.0),
    (8, 20, 25.0),
)
_PENDING = object()
TTL = 60
REPORT_TIMEOUT = 60.0


# -- in the worker processes -------------------------------------------------------------


def open_getter(variant: str, server: Server) -> Tuple[Callable[[str, Callable[[str], str]], Any],
                                                       Callable[[], None]]:
    """(get(key, loader), close) for a contender, made inside the worker process."""
    if variant == OURS:
        import valkeyaside

        client = valkeyaside.Client(server.url)
        client.execute("PING")

        def get_ours(key: str, loader: Callable[[str], str]) -> Any:
            return client.get(key, TTL, loader)

        return get_ours, client.close
    if variant == DOGPILE:
        from dogpile.cache import make_region

        region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=TTL,
            arguments={
                "host": server.host,
                "port": server.port,
                "db": server.db,
                "redis_expiration_time": TTL,
                "distributed_lock": True,
                "thread_local_lock": False,
                "lock_timeout": 10,
            },
        )
        region.get("bench:stampede:warm")  # connect now

        def get_dogpile(key: str, loader: Callable[[str], str]) -> Any:
            return region.get_or_create(key, lambda: loader(key))

        return get_dogpile, lambda: None
    if variant == FLOOR:
        return _bare_single_flight(), lambda: None
    raise ValueError(variant)


def _bare_single_flight() -> Callable[[str, Callable[[str], str]], Any]:
    """``get(key, loader)`` of the floor: the first caller of a key loads; the
    others sleep on one pipe, a byte each, and the loader wakes them all with one
    write (as valkeyaside's following threads are woken)."""
    import os

    guard = threading.Lock()
    flights: Dict[str, List[Any]] = {}  # key: [value or _PENDING, sleepers, pipe]

    def get_floor(key: str, loader: Callable[[str], str]) -> Any:
        with guard:
            flight = flights.get(key)
            leading = flight is None
            if flight is None:
                flight = flights[key] = [_PENDING, 0, os.pipe()]
            else:
                flight[1] += 1
        read_fd, write_fd = flight[2]
        if leading:
            value = loader(key)
            with guard:
                flight[0] = value
                sleepers = flight[1]
            if sleepers:
                os.write(write_fd, b"!" * sleepers)
            return value
        os.read(read_fd, 1)
        return flight[0]

    return get_floor


def run_round(get: Callable[..., Any], key: str, threads: int, load_seconds: float,
              ready: Callable[[], None]) -> Tuple[List[Tuple[float, float]], List[Any]]:
    """``threads`` threads call ``get(key, loader)`` together once ``ready()`` returns.

    Returns the loads ``[(start, end)]`` and each caller's ``(return time,
    did it load, value or error text)``.
    """
    loads: List[Tuple[float, float]] = []
    returned: List[Tuple[float, bool, Any]] = []
    mine = threading.local()
    start = threading.Event()

    def load(k: str) -> str:
        began = time.time()
        mine.loaded = True
        time.sleep(load_seconds)
        loads.append((began, time.time()))
        return f"value of {k}"

    def caller() -> None:
        start.wait()
        try:
            value = get(key, load)
        except Exception as exc:
            value = f"error: {exc!r}"
        returned.append((time.time(), bool(getattr(mine, "loaded", False)), value))

    pool = [threading.Thread(target=caller) for _ in range(threads)]
    for t in pool:
        t.start()
    ready()
    start.set()
    for t in pool:
        t.join()
    return loads, returned


def worker_main(index: int, server: Server, tasks: Any, results: Any,
                cpus: Optional[Set[int]] = None) -> None:
    """A worker process (on ``cpus``, when given): runs one round's callers per
    task, reports times.

    A task is ``(variant, key, threads, load_seconds)``; the worker starts
    the threads, reports ``ready``, waits for ``go`` on its task queue, and
    reports ``done`` with what :func:`run_round` returned.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        os.sched_setaffinity(0, cpus)  # before any thread: they inherit it
    getters: Dict[str, Tuple[Callable[..., Any], Callable[[], None]]] = {}

    def ready() -> None:
        results.put(("ready", index))
        if tasks.get() != "go":
            raise RuntimeError("expected go")

    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            variant, key, threads, load_seconds = task
            if variant not in getters:
                getters[variant] = open_getter(variant, server)
            loads, returned = run_round(getters[variant][0], key, threads, load_seconds, ready)
            results.put(("done", index, loads, returned))
    except BaseException:
        results.put(("error", index, traceback.format_exc()))
    finally:
        for _, close in getters.values():
            close()


@dataclass
class Workers:
    """The worker processes and their queues."""

    processes: List[Any]
    tasks: List[Any]
    results: Any

    def receive(self) -> Tuple[Any, ...]:
        try:
            message: Tuple[Any, ...] = self.results.get(timeout=REPORT_TIMEOUT)
        except queue.Empty:
            raise RuntimeError(f"no report from the workers in {REPORT_TIMEOUT:.0f} s") from None
        if message[0] == "error":
            raise RuntimeError(f"worker {message[1]} failed:\n{message[2]}")
        return message

    def stop(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.processes:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def start_workers(server: Server, count: int, cpus: Optional[Set[int]] = None) -> Workers:
    """``count`` spawned worker processes (nothing inherited from this one), on ``cpus``."""
    ctx = multiprocessing.get_context("spawn")
    server = Server(server.host, server.port, server.db)  # picklable: no process handle
    results = ctx.Queue()
    tasks = [ctx.Queue() for _ in range(count)]
    processes = [ctx.Process(target=worker_main, args=(i, server, tasks[i], results, cpus),
                             daemon=True)
                 for i in range(count)]  # fmt: skip
    for p in processes:
        p.start()
    return Workers(processes, tasks, results)


# -- in this process -----------------------------------------------------------------------


@dataclass
class Outcome:
    """One run: loads, and the non-loaders' returns relative to the first load's end (ms)."""

    loads: int
    last_ms: float
    median_ms: float
    loader_ms: float  # the loader's own get returned this long after its load ended
    callers: int
    values: int
    errors: List[str]


def run_once(workers: Workers, processes: int, threads: int, variant: str,
             load_seconds: float) -> Outcome:
    """One round of one contender in one scenario, on a fresh key."""
    key = f"bench:stampede:{secrets.token_hex(6)}"
    for i in range(processes):
        workers.tasks[i].put((variant, key, threads, load_seconds))
    for _ in range(processes):
        workers.receive()
    for i in range(processes):
        workers.tasks[i].put("go")
    loads: List[Tuple[float, float]] = []
    returned: List[Tuple[float, bool, Any]] = []
    for _ in range(processes):
        message = workers.receive()
        loads.extend(message[2])
        returned.extend(message[3])
    errors = [v for _, _, v in returned if isinstance(v, str) and v.startswith("error:")]
    if not loads:
        return Outcome(0, float("nan"), float("nan"), float("nan"), len(returned), 0, errors)
    load_end = min(end for _, end in loads)
    after = sorted((at - load_end) * 1000 for at, loaded, _ in returned if not loaded)
    loader = [(at - load_end) * 1000 for at, loaded, _ in returned if loaded]
    return Outcome(
        loads=len(loads),
        last_ms=after[-1] if after else float("nan"),
        median_ms=median(after),
        loader_ms=min(loader) if loader else float("nan"),
        callers=len(returned),
        values=len({v for _, _, v in returned}),
        errors=errors,
    )


def report(processes: int, threads: int, target_ms: float, outcomes: Dict[str, List[Outcome]],
           rounds: int, load_ms: float) -> None:
    """The table of one scenario, and its targets."""
    shape = f"{threads} threads" if processes == 1 else f"{processes} processes x {threads} threads"
    rows = []
    for variant, runs in outcomes.items():
        rows.append([
            variant,
            ",".join(str(o.loads) for o in runs),
            fmt_num(median([o.last_ms for o in runs])),
            fmt_num(max(o.last_ms for o in runs)),
            fmt_num(median([o.median_ms for o in runs])),
            fmt_num(median([o.loader_ms for o in runs]), 2),
            str(sum(len(o.errors) for o in runs)),
        ])
    print_table(
        f"{shape}, one cold key, loader {load_ms:g} ms, {rounds} rounds: ms after the load's "
        "end (lower is better)",
        ["contender", "loads/round", "last waiter", "worst round", "median waiter",
         "loader itself", "errors"],
        rows,
    )
    ours = outcomes.get(OURS)
    if ours:
        one_load = all(o.loads == 1 for o in ours)
        last = median([o.last_ms for o in ours])
        consistent = all(o.values == 1 and not o.errors for o in ours)
        print_table(
            "targets",
            ["target", "measured", "verdict"],
            [
                ["exactly 1 load", ",".join(str(o.loads) for o in ours),
                 "met" if one_load else "NOT met"],
                [f"last waiter <= {target_ms:g} ms (median of rounds)", f"{last:.1f} ms",
                 "met" if last <= target_ms else "NOT met"],
                ["every caller got the one value", "yes" if consistent else "no",
                 "met" if consistent else "NOT met"],
            ],
        )  # fmt: skip
        floor = outcomes.get(FLOOR)
        if floor:  # what the client adds to the threads' own wake-ups, round by round
            over = median([o.last_ms - f.last_ms for o, f in zip(ours, floor)])
            print(f"{OURS}'s last waiter minus the floor's, same rounds (median): "
                  f"{over:+.1f} ms")
        for o in ours:
            for e in o.errors[:3]:
                print(f"  {OURS} error: {e}")


def usable_cpus() -> Set[int]:
    """The CPUs this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def default_cpu() -> Optional[int]:
    """The CPU the one-process scenario runs on unless told: the lowest this
    process may use, when it may use another for the server; else None
    (unpinned: with one CPU, or no affinity calls, there is nothing to place)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = usable_cpus()
    return min(allowed) if len(allowed) >= 2 else None


def placement(cpu: Optional[int]) -> Tuple[Optional[Set[int]], Optional[Set[int]]]:
    """``(the workers' CPUs, the server's)`` for ``--pin cpu``: the workers on
    ``cpu``, the server on the other CPUs this process may use (on ``cpu`` too
    when there is no other). Unpinned: ``(None, None)``."""
    if cpu is None:
        return None, None
    allowed = usable_cpus()
    if cpu not in allowed:
        raise SystemExit(f"--pin {cpu}: this process may use CPUs {sorted(allowed)} only")
    return {cpu}, (allowed - {cpu}) or {cpu}


def describe_placement(workers: Optional[Set[int]], server: Optional[Set[int]],
                       url: Optional[str]) -> str:
    """One line saying where the callers and the server run."""
    if workers is None:
        return f"placement: unpinned (CPUs {sorted(usable_cpus())})"
    where = "not pinned (--url)" if url else f"on CPU(s) {sorted(server or ())}"
    return (f"placement: one process's threads on CPU {min(workers)} (eight processes "
            f"unpinned), the server {where}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    ap.add_argument("--load-ms", type=float, default=200.0,
                    help="how long the loader sleeps (default 200)")
    ap.add_argument("--url", help="use this server instead of starting one")
    ap.add_argument("--only", choices=[OURS, DOGPILE, FLOOR], help="run one contender only")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--pin", type=int, metavar="CPU",
                       help="the CPU of the one-process scenario's threads (default: the "
                            "lowest, when there are two or more); the server runs on the others")
    where.add_argument("--no-pin", action="store_true",
                       help="pin nothing: the host's scheduler places every thread")
    args = ap.parse_args(argv)
    workers_cpus, server_cpus = placement(
        None if args.no_pin else default_cpu() if args.pin is None else args.pin)
    variants = [args.only] if args.only else [OURS, DOGPILE, FLOOR]
    if DOGPILE in variants:
        try:
            import dogpile.cache  # noqa: F401
            import redis  # noqa: F401
        except ImportError as exc:
            print(f"{DOGPILE}: skipped ({exc}); pip install dogpile.cache redis")
            variants.remove(DOGPILE)

    with running_server(args.url, cpus=server_cpus) as server:
        print(environment(["dogpile.cache", "redis"]))
        print(describe_placement(workers_cpus, server_cpus, args.url))
        pid = f", pid {server.pid}" if server.pid else ""
        print(f"server: {server.url} (valkey {server_version(server)}{pid})")
        for processes, threads, target_ms in SCENARIOS:
            # Pinned, only one process's threads share the CPU: eight processes
            # on one CPU would measure that CPU's run queue instead.
            workers = start_workers(server, processes, workers_cpus if processes == 1 else None)
            try:
                # The floor is one process's: with several, each would load once.
                scenario = [v for v in variants if v != FLOOR or processes == 1]
                outcomes: Dict[str, List[Outcome]] = {v: [] for v in scenario}
                for r in range(args.rounds):
                    order = scenario[r % len(scenario):] + scenario[:r % len(scenario)]
                    for variant in order:
                        outcomes[variant].append(run_once(workers, processes, threads, variant,
                                                          args.load_ms / 1000))
                    progress = ", ".join(f"{v} {outcomes[v][-1].loads} load(s), last waiter "
                                         f"+{outcomes[v][-1].last_ms:.1f} ms" for v in scenario)
                    print(f"  {processes}x{threads} round {r + 1}: {progress}", flush=True)
                report(processes, threads, target_ms, outcomes, args.rounds, args.load_ms)
            finally:
                workers.stop()

if __name__ == "__main__":
    main()
