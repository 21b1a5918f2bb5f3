"""get_many racing get and other get_many calls across processes: one load per key.

PROCESSES spawned children, half threaded ``Client`` fleets and half
``AsyncClient`` tasks, call ``get_many`` and ``get`` over overlapping sets
of one round of cold keys. Each loader counts its loads per key with INCR on
a counter key, and returns a value naming its process and call, so a second
load of a key would show both in the counters and in what callers got.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import threading
import time
from typing import Any

from server import RawConnection

import valkeyaside

PROCESSES = 8
CALLERS = 8  # threads or tasks per process
KEYS = [f"race:{i:02d}" for i in range(40)]
SPAWN = multiprocessing.get_context("spawn")


# -- in the children --------------------------------------------------------------


def _plan(seed: int) -> list[tuple[str, list[str]]]:
    """A caller's calls: get_many over overlapping windows of the keys, and gets."""
    rng = random.Random(seed)
    calls: list[tuple[str, list[str]]] = []
    for _ in range(3):
        start = rng.randrange(len(KEYS))
        window = [KEYS[(start + i) % len(KEYS)] for i in range(rng.randrange(5, 16))]
        rng.shuffle(window)
        calls.append(("get_many", window + window[:2]))  # a few duplicates too
        calls.append(("get", [rng.choice(KEYS)]))
    return calls


def sync_worker(url: str, lua: bool, index: int, start: Any, out: Any) -> None:
    """CALLERS threads of one Client; report what each key was seen as, and loads."""
    try:
        client = valkeyaside.Client(url, use_lua_lock=lua)
    except BaseException as exc:
        out.put(("error", index, repr(exc)))
        return
    try:
        client.execute("PING")  # connected before the race begins
        loads = [0]
        lock = threading.Lock()

        def load_many(missing: list[str]) -> dict[str, str]:
            with lock:
                loads[0] += 1
                call = loads[0]
            for key in missing:
                client.execute("INCR", f"loads:{key}")
            time.sleep(0.05)  # a slow load: other callers arrive while it runs
            return {key: f"{key} by {os.getpid()}/{call}" for key in missing}

        def load_one(key: str) -> str:
            return load_many([key])[key]

        seen: list[tuple[str, Any]] = []
        errors: list[str] = []
        go = threading.Barrier(CALLERS + 1)

        def run(caller: int) -> None:
            try:
                go.wait(30)
                for kind, keys in _plan(index * 100 + caller):
                    if kind == "get_many":
                        values = client.get_many(keys, 60, load_many)
                        if list(values) != list(dict.fromkeys(keys)):
                            errors.append(f"order: {keys} -> {list(values)}")
                        seen.extend(values.items())
                    else:
                        seen.append((keys[0], client.get(keys[0], 60, load_one)))
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CALLERS)]
        for thread in threads:
            thread.start()
        start.wait(60)  # every process is ready
        go.wait(30)
        for thread in threads:
            thread.join(60)
        out.put(("done", index, seen, errors, client.stats()["loads"]))
    except BaseException as exc:
        out.put(("error", index, repr(exc)))
    finally:
        client.close()


def async_worker(url: str, lua: bool, index: int, start: Any, out: Any) -> None:
    """CALLERS tasks of one AsyncClient; the same report as ``sync_worker``."""

    async def main() -> tuple[list[tuple[str, Any]], list[str], int]:
        async with valkeyaside.AsyncClient(url, use_lua_lock=lua) as client:
            await client.execute("PING")
            loads = [0]

            async def load_many(missing: list[str]) -> dict[str, str]:
                loads[0] += 1
                call = loads[0]
                for key in missing:
                    await client.execute("INCR", f"loads:{key}")
                await asyncio.sleep(0.05)
                return {key: f"{key} by {os.getpid()}/{call}" for key in missing}

            async def load_one(key: str) -> str:
                return (await load_many([key]))[key]

            seen: list[tuple[str, Any]] = []
            errors: list[str] = []

            async def run(caller: int) -> None:
                try:
                    for kind, keys in _plan(index * 100 + caller):
                        if kind == "get_many":
                            values = await client.get_many(keys, 60, load_many)
                            if list(values) != list(dict.fromkeys(keys)):
                                errors.append(f"order: {keys} -> {list(values)}")
                            seen.extend(values.items())
                        else:
                            seen.append((keys[0], await client.get(keys[0], 60, load_one)))
                except BaseException as exc:
                    errors.append(repr(exc))

            # Every process is ready: waiting blocks the loop, which has nothing to do yet.
            start.wait(60)
            await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(CALLERS))), 60)
            return seen, errors, client.stats()["loads"]

    try:
        seen, errors, loads = asyncio.run(main())
        out.put(("done", index, seen, errors, loads))
    except BaseException as exc:
        out.put(("error", index, repr(exc)))


# -- in the test process ------------------------------------------------------------


def test_get_many_and_get_across_processes_load_each_key_once(
    server_url: str, lua: bool, raw: RawConnection, children: list[Any]
) -> None:
    start = SPAWN.Barrier(PROCESSES)
    out = SPAWN.Queue()
    for index in range(PROCESSES):
        worker = sync_worker if index % 2 == 0 else async_worker
        process = SPAWN.Process(target=worker, args=(server_url, lua, index, start, out))
        process.start()
        children.append(process)
    reports = [out.get(timeout=90) for _ in range(PROCESSES)]
    for process in children:
        process.join(15)
        assert process.exitcode == 0
    failed = [report for report in reports if report[0] != "done" or report[3]]
    assert failed == []

    server = {key: raw.execute("GET", key) for key in KEYS}
    counts = {key: raw.execute("GET", f"loads:{key}") for key in KEYS}
    seen = [pair for report in reports for pair in report[2]]
    asked = {key for key, _ in seen}
    assert asked == set(KEYS)  # the plans covered the whole round
    assert counts == {key: b"1" for key in KEYS}, "a key was loaded more than once"
    for key, value in server.items():
        assert value is not None and value.startswith(f"{key} by ".encode())
    mismatched = [(key, value) for key, value in seen if value != server[key].decode()]
    assert mismatched == []  # everyone got the one value loaded
    assert sum(report[4] for report in reports) <= len(KEYS)  # loader calls, not keys
    assert sum(report[4] for report in reports) >= 1
