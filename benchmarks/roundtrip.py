"""Round trips to a real server: valkeyaside's ``execute`` against valkey-py.

What is measured, on the same server in the same run:

(a) latency of one uncached ``GET`` from one thread: ``Client.execute("GET",
    key)`` against valkey-py's ``execute_command("GET", key)``; median and
    p99 microseconds per call. This is the cost of the client around one
    network round trip: encoding, the socket calls, parsing, dispatch. A
    bare socket sending a pre-encoded GET is timed alongside as the floor.
(b) throughput of 4 threads doing ``GET`` through one shared client: one
    ``valkeyaside.Client`` against one ``valkey.Valkey`` over a
    ``ConnectionPool``; total GETs per second.

valkey-py is forced onto its pure-Python code path, like valkeyaside: it
picks libvalkey's C parser and C command packer whenever the ``libvalkey``
package is importable, so the pool is built with ``parser_class=
_RESP3Parser`` and a ``PythonRespSerializer`` (checked on a live
connection). It speaks RESP3 (``protocol=3``) and returns bytes, as
valkeyaside does.

The server is a fresh valkey-server on a free loopback port (see
``benchmarks._server``) unless ``--url`` names one. On a machine with few
CPUs, where the client and the server run decides much of a round trip
(a same-CPU hand-off and a cross-CPU wake-up differ several-fold);
``--pin`` puts this process and the server on one CPU for steadier numbers.

Variants alternate round by round (rotating order); the tables give medians
over rounds and the ratio valkeyaside / valkey-py (below 1 is better for
latency, above 1 is better for throughput).

Run: ``python -m benchmarks.roundtrip [--rounds 5] [--seconds 1] [--pin [CPU]]
[--threads 4] [--url valkey://host:port/db]``
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple

from benchmarks._peers import pure_python_valkey
from benchmarks._report import (
    environment,
    fmt_num,
    interleaved_rounds,
    median,
    percentile,
    print_table,
    ratio,
    threaded_rate,
)
from benchmarks._server import (
    Server,
    resp_command,
    running_server,
    server_version,
    simple_command,
)

KEY = "bench:roundtrip:key"
VALUE = b"v" * 100
OURS, VALKEY_PY, FLOOR = "valkeyaside", "valkey-py", "raw socket"
WARMUP_CALLS = 500


@dataclass
class Contender:
    """A client under test: ``op`` does one GET of ``KEY``; ``close`` releases it."""

    name: str
    op: Callable[[], Any]
    close: Callable[[], None]


def open_ours(server: Server) -> Contender:
    """One ``valkeyaside.Client`` for every thread."""
    import valkeyaside

    client = valkeyaside.Client(server.url)
    return Contender(OURS, functools.partial(client.execute, "GET", KEY), client.close)


def open_valkey_py(server: Server) -> Contender:
    """One ``valkey.Valkey`` over a ``ConnectionPool``, on the pure-Python parser and packer."""
    client = pure_python_valkey(server)
    return Contender(VALKEY_PY, functools.partial(client.execute_command, "GET", KEY), client.close)


def open_floor(server: Server) -> Contender:
    """A bare socket sending a pre-encoded GET: the round trip with no client around it.

    Only a reference line for (a): what is left of a client's latency above
    it is the client's own work.
    """
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(resp_command("SELECT", server.db))
    if sock.recv(64) != b"+OK\r\n":
        raise RuntimeError("SELECT failed")
    request = resp_command("GET", KEY)
    header = b"$%d\r\n" % len(VALUE)
    size = len(header) + len(VALUE) + 2

    def op() -> bytes:
        sock.sendall(request)
        data = sock.recv(65536)
        while len(data) < size:
            data += sock.recv(65536)
        return data[len(header) : -2]

    return Contender(FLOOR, op, sock.close)


def open_contenders(server: Server) -> Tuple[List[Contender], Dict[str, str]]:
    """The clients that could be opened, and why the others could not."""
    contenders: List[Contender] = []
    missing: Dict[str, str] = {}
    for name, opener in ((OURS, open_ours), (VALKEY_PY, open_valkey_py)):
        try:
            contenders.append(opener(server))
        except (ImportError, AttributeError) as exc:
            missing[name] = f"{type(exc).__name__}: {exc}"
    return contenders, missing


def prepare(contenders: Sequence[Contender], server: Server) -> None:
    """Store ``KEY``, check that every client reads back the same value, warm them up."""
    reply = simple_command(server, "SET", KEY, VALUE)
    if reply != b"+OK":
        raise RuntimeError(f"cannot store the benchmark key: {reply!r}")
    for c in contenders:
        got = c.op()
        if got != VALUE:
            raise AssertionError(f"{c.name} GET returned {got!r:.60}")
        for _ in range(WARMUP_CALLS):
            c.op()


def latency_run(op: Callable[[], Any], seconds: float) -> Tuple[float, float]:
    """Call ``op`` back to back for ``seconds``; (median, p99) of one call, in µs."""
    clock = time.perf_counter_ns
    samples: List[int] = []
    deadline = clock() + int(seconds * 1e9)
    while True:
        t0 = clock()
        op()
        t1 = clock()
        samples.append(t1 - t0)
        if t1 >= deadline:
            break
    samples.sort()
    return median(samples) / 1e3, percentile(samples, 99) / 1e3


def throughput_run(op: Callable[[], Any], threads: int, seconds: float) -> float:
    """``threads`` threads call ``op`` for ``seconds``; total calls per second."""

    def step() -> int:
        op()
        return 1

    return threaded_rate(step, threads, seconds)


def report_latency(
    results: Dict[str, List[Tuple[float, float]]], rounds: int, seconds: float
) -> None:
    """Median over rounds of each round's median and p99 latency."""
    med = {n: median([r[0] for r in rs]) for n, rs in results.items()}
    p99 = {n: median([r[1] for r in rs]) for n, rs in results.items()}
    rows = [[n, fmt_num(med[n]), fmt_num(p99[n])] for n in results if n != FLOOR]
    if FLOOR in results:
        rows.append([f"{FLOOR} (floor)", fmt_num(med[FLOOR]), fmt_num(p99[FLOOR])])
    if OURS in results and VALKEY_PY in results:
        rows.append([f"{OURS}/{VALKEY_PY}", ratio(med[OURS], med[VALKEY_PY]),
                     ratio(p99[OURS], p99[VALKEY_PY])])  # fmt: skip
    title = (f"(a) GET latency, 1 thread, {seconds:g} s per run, median of {rounds} rounds "
             "(us per call; lower is better)")  # fmt: skip
    print_table(title, ["client", "median us", "p99 us"], rows)


def report_throughput(
    results: Dict[str, List[float]], rounds: int, seconds: float, threads: int
) -> None:
    """Median over rounds of the total GET/s of all threads."""
    rate = {n: median(rs) for n, rs in results.items()}
    rows = [[n, fmt_num(rate[n], 0)] for n in results]
    if OURS in results and VALKEY_PY in results:
        rows.append([f"{OURS}/{VALKEY_PY}", ratio(rate[OURS], rate[VALKEY_PY])])
    title = (f"(b) GET throughput, {threads} threads sharing one client, {seconds:g} s per run, "
             f"median of {rounds} rounds (higher is better)")  # fmt: skip
    print_table(title, ["client", "GET/s"], rows)


def pin_self(cpu: int | None) -> Set[int] | None:
    """Pin this process (and the threads it will start) to ``cpu``; the CPU set used."""
    if cpu is None:
        return None
    os.sched_setaffinity(0, {cpu})
    return {cpu}


def describe_placement(cpus: Set[int] | None, url: str | None) -> str:
    """One line saying where the client and the server run."""
    if cpus is None:
        return f"placement: unpinned ({os.cpu_count()} CPUs)"
    where = "this process" + ("" if url else " and the server")
    note = " (the --url server is not pinned)" if url else ""
    return f"placement: {where} pinned to CPU {min(cpus)}{note}"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per run (default 1)")
    ap.add_argument("--threads", type=int, default=4, help="threads for (b) (default 4)")
    ap.add_argument("--url", help="use this server instead of starting one")
    ap.add_argument("--pin", type=int, nargs="?", const=0, default=None, metavar="CPU",
                    help="pin this process and the server to one CPU (default CPU 0)")  # fmt: skip
    args = ap.parse_args(argv)

    cpus = pin_self(args.pin)
    with running_server(args.url, cpus=cpus) as server:
        contenders, missing = open_contenders(server)
        floor = open_floor(server)
        print(environment(["valkey"]))
        print(describe_placement(cpus, args.url))
        pid = f", pid {server.pid}" if server.pid else ""
        print(f"server: {server.url} (valkey {server_version(server)}{pid})")
        for name, why in missing.items():
            print(f"{name}: skipped, {why}")
        try:
            prepare([*contenders, floor], server)
            lat = interleaved_rounds(
                {
                    c.name: functools.partial(latency_run, c.op, args.seconds)
                    for c in [*contenders, floor]
                },
                args.rounds,
            )
            tput = interleaved_rounds(
                {
                    c.name: functools.partial(throughput_run, c.op, args.threads, args.seconds)
                    for c in contenders
                },
                args.rounds,
            )
        finally:
            for c in [*contenders, floor]:
                c.close()
    report_latency(lat, args.rounds, args.seconds)
    report_throughput(tput, args.rounds, args.seconds, args.threads)


if __name__ == "__main__":
    main()
