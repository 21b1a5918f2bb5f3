"""Client.get across processes: one load per cold key, and a holder that dies mid-load.

Children are started with the ``spawn`` method, so each makes its own client
from nothing (no socket or thread is inherited). The worker functions live at
module level so that a spawned child can import them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from typing import Any

import frontends
import pytest
from server import RawConnection

import valkeyaside

PROCESSES = 8
THREADS = 20
SPAWN = multiprocessing.get_context("spawn")
FORK = multiprocessing.get_context("fork") if hasattr(os, "fork") else None


# -- in the children --------------------------------------------------------------


def stampede_worker(url: str, key: str, counter: str, lua: bool, start: Any, out: Any) -> None:
    """THREADS threads of one client get ``key`` at once; report values and loads."""
    try:
        client = valkeyaside.Client(url, use_lua_lock=lua)
    except BaseException as exc:
        out.put(("error", repr(exc)))
        return
    try:
        client.execute("PING")  # connected before the race begins

        def load(k: str) -> str:
            client.execute("INCR", counter)
            time.sleep(0.1)  # a slow load: every other caller arrives while it runs
            return f"value of {k}"

        values: list[Any] = []
        go = threading.Barrier(THREADS + 1)

        def run() -> None:
            try:
                go.wait(30)
                values.append(client.get(key, 30, load))
            except BaseException as exc:
                values.append(exc)

        threads = [threading.Thread(target=run) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        start.wait(60)  # every process is ready
        go.wait(30)
        for thread in threads:
            thread.join(30)
        out.put(
            (
                "done",
                [v if isinstance(v, str) else repr(v) for v in values],
                client.stats()["loads"],
            )
        )
    except BaseException as exc:
        out.put(("error", repr(exc)))
    finally:
        client.close()


def hold_forever(url: str, key: str, lua: bool, loading: Any) -> None:
    """Lock ``key`` and never fill it: the loader blocks until the process is killed."""
    client = valkeyaside.Client(url, use_lua_lock=lua, client_ttl=1)

    def load(k: str) -> str:
        loading.set()
        threading.Event().wait()
        return "never"

    client.get(key, 30, load)


def hold_forever_async(url: str, key: str, lua: bool, loading: Any) -> None:
    """As ``hold_forever``, with an ``AsyncClient`` and an ``async def`` loader."""

    async def main() -> None:
        client = valkeyaside.AsyncClient(url, use_lua_lock=lua, client_ttl=1)

        async def load(k: str) -> str:
            loading.set()
            await asyncio.Event().wait()
            return "never"

        await client.get(key, 30, load)

    asyncio.run(main())


def forked_child(client: valkeyaside.Client, changed: Any, out: Any) -> None:
    """In a fork of a process whose client is in use: the same client object."""
    try:
        if not changed.wait(10):
            raise AssertionError("the parent never changed the shared key")
        seen = {"shared": client.get("shared", 30)}

        def load(key: str) -> str:
            seen["placeholder"] = client.execute("GET", key)
            return "from the child"

        seen["loaded"] = client.get("child-key", 30, load)
        # A key of its own beside "shared" (one slot on a cluster): a reply meant
        # for the parent, over a socket both used, would show here.
        client.execute("SET", "{shared}:child", "the child's")
        seen["reads"] = [client.execute("GET", "{shared}:child") for _ in range(200)]
        out.put(seen)
    except BaseException as exc:
        out.put({"error": repr(exc)})


# -- in the test process ------------------------------------------------------------


def test_processes_and_threads_one_cold_key_one_load(
    server_url: str, lua: bool, raw: RawConnection, children: list[Any]
) -> None:
    start = SPAWN.Barrier(PROCESSES)
    out = SPAWN.Queue()
    for _ in range(PROCESSES):
        process = SPAWN.Process(
            target=stampede_worker, args=(server_url, "cold", "loads", lua, start, out)
        )
        process.start()
        children.append(process)
    reports = [out.get(timeout=45) for _ in range(PROCESSES)]
    for process in children:
        process.join(15)
        assert process.exitcode == 0
    errors = [report for report in reports if report[0] != "done"]
    assert errors == []
    values = [value for report in reports for value in report[1]]
    assert values == ["value of cold"] * (PROCESSES * THREADS)
    assert sum(report[2] for report in reports) == 1
    assert raw.execute("GET", "loads") == b"1"
    assert raw.execute("GET", "cold") == b"value of cold"


def test_holder_process_killed_while_loading(
    server_url: str, lua: bool, front: str, raw: RawConnection, children: list[Any]
) -> None:
    # The holder and the waiter are both of the front end under test.
    client_ttl = 1
    loading = SPAWN.Event()
    hold = hold_forever if front == "sync" else hold_forever_async
    holder = SPAWN.Process(target=hold, args=(server_url, "k", lua, loading))
    holder.start()
    children.append(holder)
    assert loading.wait(30), "the holder never started loading"
    placeholder = raw.execute("GET", "k")
    assert placeholder.startswith(valkeyaside.PLACEHOLDER_PREFIX.encode())

    client = frontends.make(front, server_url, use_lua_lock=lua, client_ttl=client_ttl)
    try:
        result: dict[str, Any] = {}

        def wait_for_key() -> None:
            try:
                result["value"] = client.get("k", 30, lambda key: "taken over")
            except BaseException as exc:
                result["error"] = exc
            result["at"] = time.monotonic()

        waiter = threading.Thread(target=wait_for_key)
        waiter.start()
        deadline = time.monotonic() + 10
        while client.stats()["lock_waits"] < 1:  # parked on the holder's placeholder
            assert time.monotonic() < deadline, "the waiter never waited"
            assert waiter.is_alive(), result
            time.sleep(0.005)

        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        waiter.join(10)
        assert not waiter.is_alive()
        assert "error" not in result, result
        assert result["value"] == "taken over"
        assert result["at"] - killed_at < client_ttl + 1.0
        assert client.stats()["takeovers"] >= 1
        assert client.stats()["loads"] == 1
    finally:
        frontends.shutdown(client)
    assert raw.execute("GET", "k") == b"taken over"
    assert raw.execute("EXISTS", placeholder) == 0
    holder.join(10)
    assert holder.exitcode == -signal.SIGKILL


@pytest.mark.skipif(FORK is None, reason="no fork on this platform")
def test_client_used_across_fork(server_url: str, raw: RawConnection, children: list[Any]) -> None:
    assert FORK is not None
    with valkeyaside.Client(server_url) as client:
        seen: dict[str, Any] = {}

        def load(key: str) -> str:
            seen["placeholder"] = client.execute("GET", key)
            return "from the parent"

        assert client.get("parent-key", 30, load) == "from the parent"
        raw.execute("SET", "shared", "before fork")
        assert client.get("shared", 30) == "before fork"
        assert client.get("shared", 30) == "before fork"  # cached in the parent, then forked

        changed = FORK.Event()
        out = FORK.Queue()
        child = FORK.Process(target=forked_child, args=(client, changed, out))
        child.start()
        children.append(child)
        raw.execute("SET", "shared", "after fork")  # the child gets no invalidation for it
        changed.set()
        report = out.get(timeout=20)
        child.join(10)
        assert "error" not in report, report
        assert report["shared"] == "after fork"
        assert report["loaded"] == "from the child"
        assert report["placeholder"].startswith(valkeyaside.PLACEHOLDER_PREFIX.encode())
        assert report["placeholder"] != seen["placeholder"]  # a marker of its own
        assert child.exitcode == 0

        # The parent's connection was left alone by the child.
        client.execute("PING")
        assert client.get("shared", 30) == "after fork"
        assert client.get("child-key", 30) == "from the child"
        assert raw.execute("EXISTS", seen["placeholder"]) == 1
