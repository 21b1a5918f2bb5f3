"""Memory bound of the local cache: many gets over many more keys than fit.

``--keys`` keys (default 100,000) with ``--value-size``-byte values (default
100) are written to the server with pipelined ``SET``s
(``client.connection.call_many``), then one client with
``cache_max_bytes = --max-mib`` MiB (default 10) calls ``get(key, ttl)`` on
uniformly random keys ``--gets`` times (default 1,000,000), checking every
value returned. Throughout, ``client.stats()['bytes']`` must stay within the
bound (it is checked after every ``get``); the process's resident set size
(from ``/proc/self/statm``) is sampled after the fill, after the first half
of the gets and at the end, and must stop growing: the second half may add
at most ``--rss-slack-mib`` MiB (default 8).

Run: ``python -m benchmarks.memory [--gets 1000000] [--keys 100000]
[--max-mib 10] [--url valkey://host:port/db]`` (a throwaway valkey-server is
started unless ``--url`` is given). The exit status is non-zero when a bound
was broken.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import random
import sys
import time
from typing import Any, Callable, List, Optional

__all__ = ["MemoryResult", "fill_keys", "rss_bytes", "run_memory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (0 if unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def key_name(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def value_of(index: int, size: int) -> str:
    """The value stored under key ``index``: its number, then padding to ``size`` bytes."""
    head = f"{index:08d}:"
    return head + "v" * max(0, size - len(head))


def fill_keys(client: Any, prefix: str, keys: int, value_size: int, batch: int = 1000) -> None:
    """SET every key with pipelined batches of ``batch`` commands."""
    for start in range(0, keys, batch):
        commands = [("SET", key_name(prefix, i), value_of(i, value_size))
                    for i in range(start, min(start + batch, keys))]
        replies = client.connection.call_many(commands, timeout=60)
        bad = [r for r in replies if r != "OK"]
        if bad:
            raise RuntimeError(f"SET failed while filling: {bad[0]!r}")


@dataclasses.dataclass
class MemoryResult:
    gets: int = 0
    seconds: float = 0.0
    max_bytes: int = 0
    bytes_max_seen: int = 0
    over_bound: int = 0  # gets after which stats()['bytes'] exceeded the bound
    wrong_values: int = 0
    rss_before: int = 0  # after the fill, before the first get
    rss_half: int = 0
    rss_end: int = 0
    rss_samples: List[int] = dataclasses.field(default_factory=list)
    blocks_before: int = 0  # sys.getallocatedblocks(): Python's own allocations
    blocks_half: int = 0
    blocks_end: int = 0
    stats: dict = dataclasses.field(default_factory=dict)  # type: ignore[type-arg]

    @property
    def rate(self) -> float:
        return self.gets / self.seconds if self.seconds > 0 else 0.0

    @property
    def second_half_growth(self) -> int:
        return self.rss_end - self.rss_half


def run_memory(
    url: str,
    *,
    gets: int = 1_000_000,
    keys: int = 100_000,
    max_bytes: int = 10 * 2**20,
    value_size: int = 100,
    seed: int = 0,
    prefix: str = "mem:",
    progress: Optional[Callable[[int, MemoryResult], None]] = None,
) -> MemoryResult:
    """Fill, then ``gets`` random gets through a client bounded to ``max_bytes``."""
    import valkeyaside

    rng = random.Random(seed)
    result = MemoryResult(max_bytes=max_bytes)
    with valkeyaside.Client(url, cache_max_bytes=max_bytes) as client:
        fill_keys(client, prefix, keys, value_size)
        names = [key_name(prefix, i) for i in range(keys)]
        gc.collect()
        result.rss_before = rss_bytes()
        result.blocks_before = sys.getallocatedblocks()
        get = client.get
        stats = client.stats
        randrange = rng.randrange
        half = gets // 2
        sample_every = max(1, gets // 100)
        started = time.perf_counter()
        for n in range(1, gets + 1):
            i = randrange(keys)
            value = get(names[i], 3600)
            if value != value_of(i, value_size):
                result.wrong_values += 1
            held = stats()["bytes"]
            if held > result.bytes_max_seen:
                result.bytes_max_seen = held
                if held > max_bytes:
                    result.over_bound += 1
            if n % sample_every == 0:
                result.rss_samples.append(rss_bytes())
                if progress is not None and n % (sample_every * 10) == 0:
                    result.gets = n
                    result.seconds = time.perf_counter() - started
                    progress(n, result)
            if n == half:
                result.rss_half = rss_bytes()
                result.blocks_half = sys.getallocatedblocks()
        result.seconds = time.perf_counter() - started
        result.gets = gets
        result.rss_end = rss_bytes()
        result.blocks_end = sys.getallocatedblocks()
        result.stats = client.stats()
    return result


def report(result: MemoryResult) -> None:
    mib = 2**20
    s = result.stats
    print(f"gets               {result.gets:,} in {result.seconds:.1f} s "
          f"({result.rate:,.0f} gets/s)")
    print(f"client stats       hits {s.get('hits', 0):,}, misses {s.get('misses', 0):,}, "
          f"evictions {s.get('evictions', 0):,}, entries {s.get('entries', 0):,}")
    print(f"local cache bytes  max seen {result.bytes_max_seen:,} of the bound "
          f"{result.max_bytes:,} ({result.over_bound} gets over it); at the end "
          f"{s.get('bytes', 0):,}")
    print(f"wrong values       {result.wrong_values}")
    print(f"RSS                before the gets {result.rss_before / mib:.1f} MiB, after half "
          f"{result.rss_half / mib:.1f} MiB, at the end {result.rss_end / mib:.1f} MiB "
          f"(second half: {result.second_half_growth / mib:+.2f} MiB; max sampled "
          f"{max(result.rss_samples, default=0) / mib:.1f} MiB)")
    print(f"allocated blocks   before {result.blocks_before:,}, after half "
          f"{result.blocks_half:,}, at the end {result.blocks_end:,} (sys.getallocatedblocks)")
    print("RSS every 10 %      " + " ".join(f"{r / mib:.1f}" for r in result.rss_samples[9::10]))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--gets", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--max-mib", type=float, default=10.0)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--rss-slack-mib", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", default=None, help="an existing server (else one is started)")
    args = parser.parse_args(argv)
    from benchmarks._server import running_server

    def progress(n: int, r: MemoryResult) -> None:
        print(f"  {n:,} gets, {r.rate:,.0f}/s, RSS {rss_bytes() / 2**20:.1f} MiB", flush=True)

    with running_server(args.url) as server:
        result = run_memory(server.url, gets=args.gets, keys=args.keys,
                            max_bytes=int(args.max_mib * 2**20), value_size=args.value_size,
                            seed=args.seed, progress=progress)
    report(result)
    ok = (result.over_bound == 0 and result.wrong_values == 0
          and result.second_half_growth <= args.rss_slack_mib * 2**20)
    print("verdict: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
