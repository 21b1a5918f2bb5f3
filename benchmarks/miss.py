"""A miss: ``Client.get(key, ttl, fn)`` on a key nobody holds, loaded and filled.

What is measured, on the same server in the same run:

(a) round trips and commands of one miss-and-fill, steady state (the
    client's marker key exists and the Lua scripts are loaded). Round
    trips are counted as requests written to the connection (each is one
    write and one wait for its replies); commands are counted by the
    server (``INFO commandstats`` deltas). Also shown: the first miss of a
    fresh client (connected already), which creates its marker key once,
    and the ``get`` that follows a fill.
(b) time of a miss-and-fill (``fn`` returns at once), median µs over the
    keys of a round, against references built from ``client.execute``:
    one ``GET`` round trip, and ``GET`` then ``SET ... PX`` (a cache-aside
    fill without a lock: the least any fill can do).

Variants alternate round by round (rotating order); every call uses a new
key. Target: a miss-and-fill costs at most 3 round trips plus ``fn``.

Run: ``python -m benchmarks.miss [--rounds 7] [--keys 300] [--url valkey://host:port/db]``
"""

from __future__ import annotations

import argparse
import gc
import secrets
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks._commandstats import commandstats, delta
from benchmarks._report import environment, fmt_num, interleaved_rounds, median, print_table, ratio
from benchmarks._server import Server, running_server, server_version

TTL = 60
VALUE = "v" * 100
OURS = "valkeyaside get (miss, fill)"
GET_RT = "execute GET (1 round trip)"
GET_SET = "execute GET + SET PX (no lock)"


class RequestCounter:
    """Counts the requests a client's connection writes: one per round trip."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        connection = client.connection
        submit = connection.submit

        def counting_submit(request: Any, *args: Any) -> None:
            self.count += 1
            submit(request, *args)

        connection.submit = counting_submit  # an instance attribute: this client only


def loader(key: str) -> str:
    """The database: answers at once, so the figures are the client's and the server's."""
    return VALUE


def fresh_keys(n: int) -> List[str]:
    """``n`` keys that nobody has used."""
    tag = secrets.token_hex(4)
    return [f"bench:miss:{tag}:{i}" for i in range(n)]


# -- (a) counting ----------------------------------------------------------------------


def count_one(server: Server, client: Any, counter: RequestCounter,
              action: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """(round trips, commands by name) of ``action()``."""
    before_stats = commandstats(server)
    before = counter.count
    action()
    trips = counter.count - before
    return trips, delta(before_stats, commandstats(server))


def count_misses(server: Server) -> List[List[str]]:
    """Rows of table (a): a fresh client's first miss, a steady miss, the get after a fill."""
    import valkeyaside

    rows: List[List[str]] = []
    with valkeyaside.Client(server.url) as client:
        counter = RequestCounter(client)
        client.execute("PING")  # connect: the handshake is not a miss's cost
        first, steady = fresh_keys(2)
        for label, action in (
            ("first miss of a new client (makes its marker)",
             lambda: client.get(first, TTL, loader)),
            ("miss and fill (steady state)", lambda: client.get(steady, TTL, loader)),
            ("get right after the fill", lambda: client.get(steady, TTL, loader)),
            ("get again (local hit)", lambda: client.get(steady, TTL, loader)),
        ):  # fmt: skip
            trips, commands = count_one(server, client, counter, action)
            spelled = ", ".join(f"{name.upper()} {n}" if n > 1 else name.upper()
                                for name, n in sorted(commands.items()))
            rows.append([label, str(trips), str(sum(commands.values())), spelled or "-"])
    return rows


def check_steady(server: Server, misses: int = 20) -> Tuple[float, float]:
    """(round trips, commands) per miss-and-fill, averaged over ``misses`` warm misses."""
    import valkeyaside

    with valkeyaside.Client(server.url) as client:
        counter = RequestCounter(client)
        client.get(fresh_keys(1)[0], TTL, loader)  # marker made, scripts loaded
        keys = fresh_keys(misses)
        before_stats, before = commandstats(server), counter.count
        for key in keys:
            client.get(key, TTL, loader)
        trips = (counter.count - before) / misses
        commands = sum(delta(before_stats, commandstats(server)).values()) / misses
    return trips, commands


# -- (b) timing --------------------------------------------------------------------------


def timed(call: Callable[[str], Any], keys: List[str]) -> float:
    """Median µs of ``call(key)`` over ``keys``, each timed on its own."""
    clock = time.perf_counter_ns
    samples: List[int] = []
    for key in keys:
        t0 = clock()
        call(key)
        samples.append(clock() - t0)
    return median(samples) / 1000


def time_variants(client: Any, rounds: int, keys_per_round: int) -> Dict[str, List[float]]:
    """Median µs per round of each variant, interleaved round by round."""
    get, execute = client.get, client.execute

    def miss_and_fill(key: str) -> Any:
        return get(key, TTL, loader)

    def get_round_trip(key: str) -> Any:
        return execute("GET", key)

    def get_then_set(key: str) -> Any:
        if execute("GET", key) is None:
            execute("SET", key, loader(key), "PX", TTL * 1000)

    calls = {OURS: miss_and_fill, GET_RT: get_round_trip, GET_SET: get_then_set}
    variants = {name: (lambda call=call: timed(call, fresh_keys(keys_per_round)))
                for name, call in calls.items()}
    for call in calls.values():  # warm up
        timed(call, fresh_keys(50))
    return interleaved_rounds(variants, rounds, before_each=gc.collect)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--keys", type=int, default=300,
                    help="misses per variant per round (default 300)")
    ap.add_argument("--url", help="use this server instead of starting one")
    args = ap.parse_args(argv)

    import valkeyaside

    with running_server(args.url) as server:
        print(environment([]))
        pid = f", pid {server.pid}" if server.pid else ""
        print(f"server: {server.url} (valkey {server_version(server)}{pid})")
        rows = count_misses(server)
        trips, commands = check_steady(server)
        with valkeyaside.Client(server.url) as client:
            results = time_variants(client, args.rounds, args.keys)
            stats = client.stats()
    print_table("(a) one get: round trips (requests written) and commands (INFO commandstats)",
                ["get", "round trips", "commands", "which (Lua's own calls included)"], rows)
    print(f"  averaged over 20 warm misses: {trips:g} round trips, {commands:g} commands per "
          "miss-and-fill")
    us = {name: median(values) for name, values in results.items()}
    table = [[name, fmt_num(value, 1), ratio(value, us[GET_RT])] for name, value in us.items()]
    print_table(
        f"(b) time per call, fn returns at once: median us over {args.keys} new keys, median of "
        f"{args.rounds} rounds (lower is better)",
        ["variant", "us", "vs 1 round trip"],
        table,
    )
    print(f"  valkeyaside counters: loads={stats['loads']:,} misses={stats['misses']:,} "
          f"lock_waits={stats['lock_waits']}")
    verdict = "met" if trips <= 3 else "NOT met"
    print_table("target", ["target", "measured", "verdict"],
                [["miss-and-fill <= 3 round trips plus fn", f"{trips:g}", verdict],
                 ["miss-and-fill time / 1 round trip", ratio(us[OURS], us[GET_RT]), ""]])


if __name__ == "__main__":
    main()
