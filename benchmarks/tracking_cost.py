"""What client tracking costs the server: table memory, invalidation pushes, overflow.

One real valkey-server; for each case, ``N`` ``valkeyaside.Client``s each make a
cached read (``client.get(key, ttl)``, so ``CLIENT CACHING YES`` then
``MULTI PTTL GET EXEC``) of the same ``K`` keys, which were SET beforehand
(values of 100 bytes), so no lock or load is involved. The server's own
figures are read from ``INFO`` on a separate raw socket:

(a) the tracking table before and after the reads: ``tracking_total_keys``,
    ``tracking_total_items`` (one per (key, client)), ``tracking_total_prefixes``
    and ``used_memory``; bytes per key and per item are fitted across the
    cases (least squares of the ``used_memory`` growth on keys and items).
    A control case reads the same way with ``local_cache=False`` (no
    ``CLIENT TRACKING``: OPTIN-free reads add nothing to the table).
(b) one write per key (pipelined ``SET`` from an untracked connection): the
    invalidations the clients received (``stats()["invalidations"]``), the
    table afterwards (every written key leaves it), and the server's cost of
    the pushes: ``total_net_output_bytes`` and ``used_cpu_user+sys`` during
    those writes minus the same writes repeated once the keys are no longer
    tracked (the control), divided by the number of pushes.
(c) overflow: ``CONFIG SET tracking-table-max-keys`` below the table's size;
    the server evicts keys from the table and sends invalidations for them,
    with no write at all. Then the clients close: their items stay in the
    table (the server removes them lazily) until the keys are written.
(d) a hot key: ``N`` clients hold it; before each write, ``R`` of them read it
    again (an invalidated entry is re-read from the server, which tracks it
    again), then one ``SET``: it sends ``R`` pushes, one per reader since the
    last write, each to its own socket. The server's CPU around each write
    (``INFO cpu`` just before and just after the ``SET``, on the writer's
    connection) minus the same with no reader (``R = 0``), divided by ``R``:
    the cost of one push sent alone, as a hot key's fan-out sends them.

Run: ``python -m benchmarks.tracking_cost [--quick] [--url valkey://host:port/db]`` (about
60 s; ``--url`` runs ``FLUSHALL`` on that server)
"""

from __future__ import annotations

import argparse
import gc
import secrets
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks._commandstats import _info
from benchmarks._report import environment, fmt_num, print_table
from benchmarks._server import Server, resp_command, running_server, server_version

TTL = 300
VALUE = "v" * 100
#: (clients, keys per client); every client reads the same keys.
CASES: List[Tuple[int, int]] = [(1, 1_000), (1, 10_000), (10, 1_000), (10, 10_000), (50, 1_000)]
QUICK_CASES: List[Tuple[int, int]] = [(1, 1_000), (10, 1_000), (10, 5_000)]
CONTROL = (10, 1_000)
OVERFLOW = (10, 2_000, 1_000)  # clients, keys, tracking-table-max-keys set afterwards
HOT_CLIENTS = 50
HOT_READERS = (50, 10, 0)  # clients that re-read the hot key before each write
HOT_WRITES = 100
WAIT = 20.0  # longest wait for invalidations to reach the clients


def info(server: Server) -> Dict[str, str]:
    """Every ``INFO`` field (all default sections) as text; ``_bytes``: the reply's size."""
    text = _info(server, "default")
    fields: Dict[str, str] = {"_bytes": str(len(text.encode()) + len(f"${len(text)}\r\n\r\n"))}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value
    return fields


def table(server: Server) -> Dict[str, float]:
    """The figures this benchmark follows, as numbers."""
    f = info(server)
    return {
        "keys": int(f["tracking_total_keys"]),
        "items": int(f["tracking_total_items"]),
        "prefixes": int(f["tracking_total_prefixes"]),
        # the table is part of used_memory; client buffers (which the server's cron
        # resizes in its own time) are left out
        "used_memory": int(f["used_memory"]) - int(f["mem_clients_normal"]),
        "net_out": int(f["total_net_output_bytes"]),
        "cpu": float(f["used_cpu_user"]) + float(f["used_cpu_sys"]),
        "info_bytes": int(f["_bytes"]),
    }


def pipeline_set(server: Server, keys: Sequence[str], value: str) -> None:
    """SET every key to ``value`` from a raw, untracked connection, pipelined."""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(resp_command("SELECT", server.db))
        expected = 5  # +OK\r\n
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            s.sendall(b"".join(resp_command("SET", key, value) for key in chunk))
            expected += 5 * len(chunk)
        received = 0
        while received < expected:
            data = s.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            received += len(data)


def command(server: Server, *args: str) -> bytes:
    """One command on its own connection; the first line of its reply."""
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(resp_command(*args))
        return s.recv(4096).split(b"\r\n")[0]


def invalidations(clients: Sequence[Any]) -> int:
    """Invalidated keys the clients have received so far."""
    return sum(int(c.stats()["invalidations"]) for c in clients)


def wait_for(clients: Sequence[Any], expected: int, seconds: float = WAIT) -> Tuple[int, float]:
    """Wait until ``expected`` invalidations arrived (or ``seconds``); (count, seconds)."""
    t0 = time.monotonic()
    got = invalidations(clients)
    while got < expected and time.monotonic() - t0 < seconds:
        time.sleep(0.005)
        got = invalidations(clients)
    return got, time.monotonic() - t0


def open_clients(server: Server, n: int, *, local_cache: bool = True) -> List[Any]:
    """``n`` connected clients (their handshake done before any measurement)."""
    import valkeyaside

    clients = [valkeyaside.Client(server.url, local_cache=local_cache) for _ in range(n)]
    for c in clients:
        c.execute("PING")
    return clients


def read_all(clients: Sequence[Any], keys: Sequence[str]) -> float:
    """Every client makes a cached read of every key; seconds taken."""
    t0 = time.perf_counter()
    for c in clients:
        get = c.get
        for key in keys:
            if get(key, TTL) != VALUE:
                raise RuntimeError(f"unexpected value for {key}")
    return time.perf_counter() - t0


def fresh_keys(n: int) -> List[str]:
    """``n`` new keys of equal length (``bench:track:<8 hex>:<6 digits>``, 27 bytes)."""
    tag = secrets.token_hex(4)
    return [f"bench:track:{tag}:{i:06d}" for i in range(n)]


def settle(server: Server) -> Dict[str, float]:
    """The figures after 1.1 s: the server's cron has visited every client since
    (it resizes their buffers and updates ``mem_clients_normal``)."""
    gc.collect()
    time.sleep(1.1)
    return table(server)


def run_case(server: Server, n: int, k: int, *, local_cache: bool = True) -> Dict[str, float]:
    """One case, phases (a) and (b); its figures."""
    keys = fresh_keys(k)
    pipeline_set(server, keys, VALUE)
    clients = open_clients(server, n, local_cache=local_cache)
    try:
        before = settle(server)
        read_s = read_all(clients, keys)
        after = settle(server)
        got0 = invalidations(clients)

        pipeline_set(server, keys, VALUE + "2")  # one write per key: the pushes
        written = table(server)
        expected = int(after["items"] - before["items"])
        got, waited = wait_for(clients, got0 + expected)
        emptied = settle(server)

        pipeline_set(server, keys, VALUE + "3")  # the same writes, nothing tracked now
        control = table(server)
        late = invalidations(clients) - got
    finally:
        for c in clients:
            c.close()
    command(server, "FLUSHALL")  # no tracking client is left to be told
    return {
        "clients": n, "keys": k, "reads": n * k, "read_s": read_s,
        "keys_before": before["keys"], "items_before": before["items"],
        "keys_after": after["keys"], "items_after": after["items"],
        "prefixes": after["prefixes"],
        "mem": after["used_memory"] - before["used_memory"],
        "cpu_read": after["cpu"] - before["cpu"],
        "mem_freed": after["used_memory"] - emptied["used_memory"],
        "keys_left": emptied["keys"], "items_left": emptied["items"],
        "pushes": got - got0, "expected": expected, "wait_s": waited, "late": late,
        # both deltas hold the SET replies and one INFO reply; the tracked one also
        # holds the INFO that took ``written``, taken out here
        "out_tracked": emptied["net_out"] - after["net_out"] - written["info_bytes"],
        "out_control": control["net_out"] - emptied["net_out"],
        "cpu_tracked": written["cpu"] - after["cpu"],
        "cpu_control": control["cpu"] - emptied["cpu"],
    }


def run_overflow(server: Server, n: int, k: int, limit: int) -> Dict[str, float]:
    """Phase (c): a table of ``k`` keys, then ``tracking-table-max-keys`` set to ``limit``."""
    keys = fresh_keys(k)
    pipeline_set(server, keys, VALUE)
    clients = open_clients(server, n)
    try:
        read_all(clients, keys)
        full = settle(server)
        got0 = invalidations(clients)
        command(server, "CONFIG", "SET", "tracking-table-max-keys", str(limit))
        t0 = time.monotonic()
        shrunk = table(server)
        while shrunk["keys"] > limit and time.monotonic() - t0 < WAIT:
            time.sleep(0.05)  # the cron trims it (more keys each turn); so does every command
            shrunk = table(server)
        trimmed_s = time.monotonic() - t0
        evicted_items = full["items"] - shrunk["items"]
        got, _ = wait_for(clients, got0 + int(evicted_items))
    finally:
        command(server, "CONFIG", "SET", "tracking-table-max-keys", "0")  # 0: no limit
        for c in clients:
            c.close()
    closed = settle(server)  # a closed client's items stay until their keys change
    pipeline_set(server, keys, VALUE + "2")
    written = settle(server)
    command(server, "CONFIG", "SET", "tracking-table-max-keys", "1000000")
    command(server, "FLUSHALL")
    return {
        "clients": n, "keys": k, "limit": limit,
        "keys_full": full["keys"], "items_full": full["items"],
        "keys_after": shrunk["keys"], "items_after": shrunk["items"],
        "trim_s": trimmed_s, "pushes": got - got0,
        "mem_freed": full["used_memory"] - shrunk["used_memory"],
        "keys_closed": closed["keys"], "items_closed": closed["items"],
        "keys_written": written["keys"], "items_written": written["items"],
    }


class Writer:
    """A raw, untracked connection that writes one key and reads ``INFO cpu``."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.sock.sendall(resp_command("SELECT", server.db))
        self._reply()

    def _reply(self) -> bytes:
        data = self.sock.recv(1 << 16)
        if data.startswith(b"$"):
            head, _, body = data.partition(b"\r\n")
            while len(body) < int(head[1:]) + 2:
                body += self.sock.recv(1 << 16)
            return body
        return data

    def cpu(self) -> float:
        """The server's ``used_cpu_user + used_cpu_sys`` now."""
        self.sock.sendall(resp_command("INFO", "cpu"))
        fields = dict(line.split(":", 1) for line in self._reply().decode().splitlines()
                      if ":" in line)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])

    def set(self, key: str, value: str) -> None:
        self.sock.sendall(resp_command("SET", key, value))
        if not self._reply().startswith(b"+OK"):
            raise RuntimeError("SET failed")

    def close(self) -> None:
        self.sock.close()


def run_hot(server: Server) -> Dict[int, Dict[str, float]]:
    """Phase (d): per number of readers, server CPU and pushes per write of a hot key."""
    key = fresh_keys(1)[0]
    pipeline_set(server, [key], VALUE)
    clients = open_clients(server, HOT_CLIENTS)
    writer = Writer(server)
    out = {r: {"cpu": 0.0, "pushes": 0.0, "writes": 0.0, "missing": 0.0} for r in HOT_READERS}
    try:
        for w in range(HOT_WRITES):
            for readers in HOT_READERS[w % 3:] + HOT_READERS[:w % 3]:  # rotating order
                for c in clients[:readers]:
                    c.get(key, TTL)  # dropped by the last push: read from the server again
                got0 = invalidations(clients)
                t0 = writer.cpu()
                writer.set(key, f"{VALUE}{w}:{readers}")
                t1 = writer.cpu()
                got, _ = wait_for(clients, got0 + readers, 5.0)
                o = out[readers]
                o["cpu"] += t1 - t0
                o["pushes"] += got - got0
                o["writes"] += 1
                o["missing"] += got0 + readers - got
    finally:
        writer.close()
        for c in clients:
            c.close()
    command(server, "FLUSHALL")
    return out


def fit(rows: Sequence[Dict[str, float]]) -> Tuple[float, float]:
    """Least squares ``mem = a * keys + b * items`` over the cases: (a, b) in bytes."""
    skk = sum(r["keys_after"] ** 2 for r in rows)
    sii = sum(r["items_after"] ** 2 for r in rows)
    ski = sum(r["keys_after"] * r["items_after"] for r in rows)
    skm = sum(r["keys_after"] * r["mem"] for r in rows)
    sim = sum(r["items_after"] * r["mem"] for r in rows)
    det = skk * sii - ski * ski
    if det == 0:
        return float("nan"), float("nan")
    return (skm * sii - sim * ski) / det, (sim * skk - skm * ski) / det


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="smaller cases (about 40 s)")
    ap.add_argument("--url", help="use this server instead of starting one (it is FLUSHALLed)")
    args = ap.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    import valkeyaside

    with running_server(args.url) as server:
        print(environment([]))
        pid = f", pid {server.pid}" if server.pid else ""
        print(f"server: {server.url} (valkey {server_version(server)}{pid})")
        fields = info(server)
        with valkeyaside.Client(server.url, local_cache=False) as probe:
            limit = probe.execute("CONFIG", "GET", "tracking-table-max-keys")
        print(f"allocator: {fields['mem_allocator']}; io-threads {fields.get('io_threads_active')}"
              f" active; tracking-table-max-keys: {next(iter(limit.values()))!r} (default)")
        command(server, "FLUSHALL")
        t_start = time.monotonic()
        run_case(server, *cases[0])  # warm-up: the server's first allocations, not reported
        rows = [run_case(server, n, k) for n, k in cases]
        control = run_case(server, *CONTROL, local_cache=False)
        overflow = run_overflow(server, *OVERFLOW)
        hot = run_hot(server)
        elapsed = time.monotonic() - t_start

    per_key, per_item = fit(rows)
    print_table(
        "(a) the tracking table after N clients each made a cached read of the same K keys",
        ["clients x keys", "reads/s", "server us/read", "keys", "items", "prefixes",
         "used_memory +", "B/item (all)", "fit: a*keys+b*items"],
        [[f"{int(r['clients'])} x {int(r['keys']):,}", fmt_num(r["reads"] / r["read_s"], 0),
          fmt_num(r["cpu_read"] * 1e6 / r["reads"], 2),
          f"{int(r['keys_after'] - r['keys_before']):,}",
          f"{int(r['items_after'] - r['items_before']):,}", f"{int(r['prefixes'])}",
          f"{int(r['mem']):,}", fmt_num(r["mem"] / max(1, r["items_after"]), 1),
          fmt_num(per_key * r["keys_after"] + per_item * r["items_after"], 0)]
         for r in rows]
        + [[f"control: {CONTROL[0]} x {CONTROL[1]:,}, local_cache=False",
            fmt_num(control["reads"] / control["read_s"], 0),
            fmt_num(control["cpu_read"] * 1e6 / control["reads"], 2),
            f"{int(control['keys_after']):,}", f"{int(control['items_after']):,}",
            f"{int(control['prefixes'])}", f"{int(control['mem']):,}", "-", "-"]],
    )
    print(f"fit over the {len(rows)} tracked cases: {per_key:,.1f} bytes per key "
          f"+ {per_item:,.1f} bytes per item (a (key, client) pair)")

    print_table(
        "(b) one SET per key: invalidations received and the table afterwards",
        ["clients x keys", "pushes", "expected", "arrived in s", "keys left", "items left",
         "memory freed", "out B/push", "server CPU us/push"],
        [[f"{int(r['clients'])} x {int(r['keys']):,}", f"{int(r['pushes']):,}",
          f"{int(r['expected']):,}", fmt_num(r["wait_s"], 2),
          f"{int(r['keys_left']):,}", f"{int(r['items_left']):,}", f"{int(r['mem_freed']):,}",
          fmt_num((r["out_tracked"] - r["out_control"]) / max(1, r["pushes"]), 1),
          fmt_num((r["cpu_tracked"] - r["cpu_control"]) * 1e6 / max(1, r["pushes"]), 2)]
         for r in rows],
    )
    late = sum(int(r["late"]) for r in rows)
    print(f"invalidations after the second (untracked) round of writes: {late} (expected 0)")

    o = overflow
    print_table(
        "(c) overflow: tracking-table-max-keys set below the table's size, no writes",
        ["clients x keys", "limit", "keys before", "items before", "keys after", "items after",
         "trimmed in s", "pushes received", "memory freed", "after close", "after SETs"],
        [[f"{int(o['clients'])} x {int(o['keys']):,}", f"{int(o['limit']):,}",
          f"{int(o['keys_full']):,}", f"{int(o['items_full']):,}",
          f"{int(o['keys_after']):,}", f"{int(o['items_after']):,}", fmt_num(o["trim_s"], 2),
          f"{int(o['pushes']):,}", f"{int(o['mem_freed']):,}",
          f"{int(o['keys_closed']):,} / {int(o['items_closed']):,}",
          f"{int(o['keys_written']):,} / {int(o['items_written']):,}"]],
    )
    base = hot[0]["cpu"] / hot[0]["writes"]
    print_table(
        f"(d) a hot key held by {HOT_CLIENTS} clients, {HOT_WRITES} writes per row; "
        "before each write R of them re-read it",
        ["readers R", "pushes per write", "server CPU us per write", "us per push (minus R=0)",
         "missing pushes"],
        [[str(r), fmt_num(h["pushes"] / h["writes"], 1),
          fmt_num(h["cpu"] / h["writes"] * 1e6, 1),
          fmt_num((h["cpu"] / h["writes"] - base) * 1e6 / r, 2) if r else "-",
          str(int(h["missing"]))]
         for r, h in hot.items()],
    )
    print(f"\ntotal {elapsed:.1f} s")


if __name__ == "__main__":
    main()
