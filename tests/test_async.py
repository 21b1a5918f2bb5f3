"""What only the asyncio front end has: async loaders, its event loop, cancellation,
and mixed fleets of threaded and asyncio processes on the same keys.

The behaviour both front ends share is tested once, for both, in test_aside,
test_faults and test_deadlink (through ``frontends``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import multiprocessing
import random
import time
from typing import Any, Iterator

import pytest
from helpers import command_calls
from server import RawConnection, ValkeyServer
from test_aside_processes import stampede_worker

import valkeyaside
from valkeyaside import PLACEHOLDER_PREFIX, AsyncClient, AsyncTypedClient
from valkeyaside.resp3 import Request, encode_command
from valkeyaside.resp3._aio import receive

SPAWN = multiprocessing.get_context("spawn")
TASKS = 100


@contextlib.contextmanager
def counted_writes(client: AsyncClient, word: bytes) -> Iterator[list[int]]:
    """How many times ``word`` is in each write of ``client``'s connection meanwhile."""
    transport = client.connection._link.transport  # type: ignore[attr-defined]
    writes: list[int] = []
    write = transport.write

    def counted(data: bytes) -> None:
        writes.append(data.count(word))
        write(data)

    transport.write = counted
    try:
        yield writes
    finally:
        transport.write = write


def run(coroutine: Any, timeout: float = 60) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


# -- loaders and the loop ------------------------------------------------------------


def test_async_def_loader_with_override(server_url: str, raw: RawConnection) -> None:
    calls = []

    async def load(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.05)  # other tasks run meanwhile: they wait for this fill
        valkeyaside.override_cache_ttl(100)
        return f"value of {key}"

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            values = await asyncio.gather(*(client.get("k", 30, load) for _ in range(50)))
            return [*values, client.stats()["loads"]]

    *values, loads = run(main())
    assert values == ["value of k"] * 50
    assert calls == ["k"] and loads == 1
    assert 90_000 < raw.execute("PTTL", "k") <= 100_000  # the override, not get's ttl


def test_plain_and_async_loaders_and_negative_caching(server_url: str) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(server_url, negative_ttl=5) as client:
            async def none(_key: str) -> None:
                return None

            return [
                await client.get("plain", 30, lambda key: key.upper()),
                await client.get("none", 30, none),
                await client.get("none", 30, lambda key: "never called"),
                await client.get("absent", 30),
            ]

    assert run(main()) == ["PLAIN", None, None, None]


def test_async_loader_exception_releases_the_lock(server_url: str, raw: RawConnection) -> None:
    async def fail(_key: str) -> str:
        await asyncio.sleep(0)
        raise LookupError("no such row")

    async def main() -> None:
        async with AsyncClient(server_url) as client:
            with pytest.raises(LookupError, match="no such row"):
                await client.get("k", 30, fail)
            assert raw.execute("GET", "k") is None  # released before the error reached us
            assert await client.get("k", 30, lambda key: "second") == "second"

    run(main())


def test_requests_made_in_one_loop_iteration_go_out_in_one_write(
    server_url: str, raw: RawConnection
) -> None:
    # Auto-pipelining: 50 tasks each send a command in the same iteration;
    # the connection writes them all at once, and each task gets its own reply.
    raw.execute("MSET", *(part for i in range(50) for part in (f"p{i}", f"v{i}")))

    async def main() -> tuple[list[Any], list[int]]:
        async with AsyncClient(server_url) as client:
            assert await client.execute("PING") == "PONG"  # connected
            with counted_writes(client, b"GET") as writes:
                replies = await asyncio.gather(
                    *(client.execute("GET", f"p{i}") for i in range(50)))
            return replies, writes

    replies, writes = run(main())
    assert replies == [f"v{i}".encode() for i in range(50)]
    assert writes == [50]


def test_the_write_that_ends_an_iteration_goes_out_as_its_last_task_waits(
    server_url: str,
) -> None:
    # With nothing else left to run in the loop iteration, no other request can
    # be made in it: the write goes out as the task starts to wait, a turn of
    # the loop sooner. With a callback still to run, it waits for the end of
    # the iteration, so that what that callback sends shares the write.
    async def main() -> list[list[int]]:
        async with AsyncClient(server_url) as client:
            assert await client.execute("PING") == "PONG"  # connected
            connection = client.connection
            seen = []
            with counted_writes(client, b"PING") as writes:
                for other_callback in (False, True):
                    if other_callback:
                        asyncio.get_running_loop().call_soon(lambda: None)
                    request = Request(encode_command("PING"))
                    await connection.submit(request)
                    waiting = receive(request, 5.0)
                    waiting.send(None)  # up to its wait
                    seen.append(list(writes))
                    waiting.close()
                    assert await receive(request, 5.0) == ["PONG"]
                    writes.clear()
            return seen

    assert run(main()) == [[1], []]


def test_a_second_event_loop_is_refused(server_url: str) -> None:
    client = AsyncClient(server_url)
    assert run(client.get("k", 30, lambda key: "v")) == "v"
    with pytest.raises(RuntimeError, match="another event loop"):
        run(client.get("other", 30))
    with pytest.raises(RuntimeError, match="another event loop"):
        run(client.execute("PING"))
    # Its own loop is gone; closing from a new one is refused too, so close what we can.
    with pytest.raises(RuntimeError):
        run(client.delete("k"))


def test_aclose_leaves_no_task_behind(server_url: str, raw: RawConnection) -> None:
    # The marker's keeper is mid-round (its link was killed: it deletes the
    # retired marker, over a new connection) when the client closes: aclose
    # returns only once that task has ended, so nothing is left for a loop
    # that closes next to collect half-done.
    async def main() -> set[asyncio.Task[Any]]:
        before = asyncio.all_tasks()
        client = AsyncClient(server_url)
        assert await client.get("keeper:k", 30, lambda key: "v") == "v"
        raw.execute("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        for _ in range(100):  # the loss is seen within a few iterations
            await asyncio.sleep(0.001)
            if client._aside.locks.marker.current is None:
                break
        assert client._aside.locks.marker.current is None  # retired: the keeper's to delete
        await client.aclose()
        return {task for task in asyncio.all_tasks() - before if not task.done()}

    assert run(main()) == set()


def test_a_keeper_round_that_ignores_cancellation_cannot_hold_up_aclose() -> None:
    # Before 3.12 ``wait_for`` may swallow a cancellation; a keeper that missed
    # its own ends at its next look, and aclose waits for it a bounded time.
    from valkeyaside._effects import Load
    from valkeyaside.aio import _KEEPER_STOP_WAIT, _KeeperTask

    events: list[asyncio.Event] = []  # made in the loop (3.9 binds them at creation)

    async def stubborn(_arg: object) -> None:
        entered, let_go = events
        entered.set()
        while not let_go.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # as if swallowed
                await let_go.wait()

    def keep() -> Any:
        yield Load(stubborn, None)
        return None

    async def main() -> float:
        events[:] = entered, let_go = asyncio.Event(), asyncio.Event()
        keeper = _KeeperTask(keep, None)  # type: ignore[arg-type]
        await entered.wait()
        started = time.monotonic()
        keeper.stop()
        await keeper.stopped()
        waited = time.monotonic() - started
        let_go.set()  # the round ends; the keeper, stopped, does not start another
        await asyncio.wait_for(keeper._task, 5)
        return waited

    waited = run(main())
    assert _KEEPER_STOP_WAIT - 0.1 < waited < _KEEPER_STOP_WAIT + 1.0


def test_a_connection_closed_as_it_is_made_is_a_connection_error(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that closes the connection at once (a cluster node dying): its
    # socket is gone by the time its options are set (EBADF). That is a lost
    # connection like any other, which callers (a waiter reading a marker on
    # a dying node) handle; the next call connects again.
    from valkeyaside.resp3 import _aio

    def gone(_sock: object) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    async def main() -> None:
        client = AsyncClient(server_url)
        monkeypatch.setattr(_aio, "keepalive", gone)
        with pytest.raises(valkeyaside.ConnectionError, match="lost as it was made"):
            await client.execute("PING")
        monkeypatch.undo()
        assert await client.execute("PING") == "PONG"
        await client.aclose()

    run(main())


def test_bad_input_is_refused_before_anything_is_sent(server_url: str,
                                                      raw: RawConnection) -> None:
    async def main() -> None:
        async with AsyncClient(server_url) as client:
            with pytest.raises(TypeError):
                await client.get(b"k", 30)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await client.get("k", 0)
            with pytest.raises(TypeError):
                await client.get("k", 30, lambda key: 42)  # type: ignore[arg-type,return-value]
            with pytest.raises(ValueError):
                await client.get("k", 30, lambda key: PLACEHOLDER_PREFIX + "x")
            with pytest.raises(ValueError, match="refused"):
                await client.execute("MULTI")
            assert client.connection.generation == 1  # only the loaders' get connected

    run(main())
    assert raw.execute("GET", "k") is None  # every refused value released its lock


def test_async_typed_client(server_url: str, raw: RawConnection) -> None:
    async def load(key: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"id": key}

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            typed: AsyncTypedClient[Any] = AsyncTypedClient(client, json.dumps, json.loads)
            first = await typed.get("user:1", 30, load)
            second = await typed.get("user:1", 30)
            deleted = await typed.delete("user:1")
            return [first, second, deleted]

    assert run(main()) == [{"id": "user:1"}, {"id": "user:1"}, 1]


def test_hits_are_local_and_writes_invalidate(server_url: str, raw: RawConnection) -> None:
    async def main() -> None:
        async with AsyncClient(server_url) as client:
            assert await client.get("k", 30, lambda key: "v1") == "v1"
            assert await client.execute("PING") == "PONG"  # the read behind the fill is in
            before = command_calls(raw)
            for _ in range(100):
                assert await client.get("k", 30) == "v1"
            after = command_calls(raw)
            after["info"] -= 1  # our own look
            assert after == before  # no command was sent
            raw.execute("SET", "k", "v2")
            assert await client.execute("PING") == "PONG"  # the push came before this reply
            assert await client.get("k", 30) == "v2"

    run(main())


# -- cancellation ------------------------------------------------------------------------


def test_tasks_missing_one_key_follow_the_first(server_url: str, raw: RawConnection) -> None:
    # 200 tasks of one client miss one key: the first runs the get (and loads),
    # the others follow it and are woken with its value, without reading again.
    calls = []

    async def load(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.05)
        return "loaded"

    finished: list[int] = []

    async def one(client: AsyncClient, index: int) -> Any:
        value = await client.get("f", 30, load)
        finished.append(index)
        return value

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            before = command_calls(raw).get("get", 0)
            values = await asyncio.gather(*(one(client, i) for i in range(200)))
            left = [len(client._aside.cache.waiters), dict(client._flights._by_key)]
            return [values, client.stats(), command_calls(raw).get("get", 0) - before, left]

    values, stats, gets, left = run(main())
    assert values == ["loaded"] * 200
    assert calls == ["f"] and stats["loads"] == 1
    assert stats["lock_waits"] >= 199  # a follower counts as a wait
    assert gets <= 4  # the first read (or a few), the fill's script, the read behind it
    # The flight landed as the read behind the fill handed the value over,
    # before the first task (which ran the get) was back: it finished last.
    assert finished[-1] == 0 and sorted(finished) == list(range(200))
    assert left == [0, {}]  # no waiter, no flight left behind


def test_followers_resume_in_their_own_context(server_url: str) -> None:
    # The landing resumes every follower in one callback of the loop
    # (``_follow``); each must still run on in its own task's context.
    who: contextvars.ContextVar[int] = contextvars.ContextVar("who")

    async def load(key: str) -> str:
        await asyncio.sleep(0.05)
        return "loaded"

    async def one(client: AsyncClient, index: int) -> tuple[int, Any, int, int]:
        who.set(index)
        value = await client.get("ctx", 30, load)
        resumed_as = who.get()
        await asyncio.sleep(0)  # and after a later turn of the loop
        return index, value, resumed_as, who.get()

    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            return list(await asyncio.gather(*(one(client, i) for i in range(50))))

    assert run(main()) == [(i, "loaded", i, i) for i in range(50)]


def test_followers_go_on_their_own_when_the_first_fails(server_url: str) -> None:
    # The first task's loader raises, or the task is cancelled: its followers
    # do not share its fate; one of them loads, the rest follow that one.
    async def main(how: str) -> list[Any]:
        async with AsyncClient(server_url) as client:
            started = asyncio.Event()
            calls = []

            async def first_load(key: str) -> str:
                started.set()
                await asyncio.sleep(0.05)
                if how == "raise":
                    raise LookupError("the database said no")
                await asyncio.sleep(30)  # cancelled meanwhile
                return "never"

            async def load(key: str) -> str:
                calls.append(key)
                return "second"

            first = asyncio.ensure_future(client.get(how, 30, first_load))
            await started.wait()
            followers = [asyncio.ensure_future(client.get(how, 30, load)) for _ in range(20)]
            lonely = asyncio.ensure_future(client.get(how, 30, load))
            await asyncio.sleep(0)
            lonely.cancel()  # a follower cancelled: the others are unaffected
            if how == "cancel":
                first.cancel()
            outcome = (await asyncio.gather(first, return_exceptions=True))[0]
            values = await asyncio.gather(*followers)
            return [type(outcome).__name__, values, calls, lonely.cancelled()]

    assert run(main("raise")) == ["LookupError", ["second"] * 20, ["raise"], True]
    assert run(main("cancel")) == ["CancelledError", ["second"] * 20, ["cancel"], True]


def test_a_follower_with_less_time_goes_alone(server_url: str) -> None:
    # A task whose deadline comes before the first task's does not follow it:
    # it waits on its own, and times out on time.
    async def main() -> list[Any]:
        async with AsyncClient(server_url) as client:
            started = asyncio.Event()

            async def slow(key: str) -> str:
                started.set()
                await asyncio.sleep(1.0)
                return "slow"

            first = asyncio.ensure_future(client.get("t", 30, slow))
            await started.wait()
            began = time.monotonic()
            with pytest.raises(valkeyaside.TimeoutError):
                await client.get("t", 30, slow, timeout=0.2)
            waited = time.monotonic() - began
            return [await first, waited]

    value, waited = run(main())
    assert value == "slow"
    assert 0.2 <= waited < 0.8


def test_cancellation_fuzz_leaves_nothing_behind(server_url: str, raw: RawConnection) -> None:
    """2,000 gets cancelled at random points (cold, locked, waiting, filling): no
    placeholder outlives its lock, every registry empties, and later gets succeed."""
    rng = random.Random(8)
    keys = [f"fuzz:{i}" for i in range(25)]
    outcomes = {"done": 0, "cancelled": 0}

    async def load(key: str) -> str:
        await asyncio.sleep(rng.random() * 0.004)
        return f"value of {key}"

    async def one(client: AsyncClient) -> None:
        key = rng.choice(keys)
        task = asyncio.ensure_future(client.get(key, 5, load))
        await asyncio.sleep(rng.random() * 0.006)
        if rng.random() < 0.3:
            raw_delete.append(key)  # keys come and go: more cold reads and fresh locks
        if rng.random() < 0.75:  # the rest run to the end, so keys get filled too
            task.cancel()
        try:
            await task
            outcomes["done"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1

    raw_delete: list[str] = []

    async def main() -> None:
        async with AsyncClient(server_url, client_ttl=2) as client:
            for _ in range(20):
                await asyncio.gather(*(one(client) for _ in range(100)))
                if raw_delete:
                    await client.delete(*raw_delete)
                    raw_delete.clear()
            assert await client.execute("PING") == "PONG"  # queued releases ran before it
            aside = client._aside
            assert len(aside.cache.waiters) == 0, "a waiter was left registered"
            assert not aside.cache._inflight, "a single-flight read was left behind"
            assert len(aside.gates) == 0, "a load turn was left taken"
            for key in keys:
                value = raw.execute("GET", key)
                assert value is None or not value.startswith(PLACEHOLDER_PREFIX.encode()), (
                    f"{key} holds a placeholder after every get ended")
            values = await asyncio.gather(*(client.get(key, 5, load)
                                            for key in keys * 4))
            assert values == [f"value of {key}" for key in keys * 4]

    run(main(), timeout=120)
    assert outcomes["cancelled"] > 500 and outcomes["done"] > 100, outcomes


def test_timeouts_around_get_release_the_lock(server_url: str, raw: RawConnection) -> None:
    async def slow(_key: str) -> str:
        await asyncio.sleep(10)
        return "never"

    async def main() -> None:
        async with AsyncClient(server_url) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get("k", 30, slow), 0.2)
            assert await client.execute("PING") == "PONG"
            assert raw.execute("GET", "k") is None  # released at once
            assert await client.get("k", 30, lambda key: "next") == "next"

    run(main())


# -- mixed fleets -----------------------------------------------------------------------


def async_stampede_worker(url: str, key: str, counter: str, lua: bool, start: Any,
                          out: Any) -> None:
    """TASKS tasks of one AsyncClient get ``key`` at once; report values and loads."""

    async def main() -> None:
        async with AsyncClient(url, use_lua_lock=lua) as client:
            await client.execute("PING")

            async def load(k: str) -> str:
                await client.execute("INCR", counter)
                await asyncio.sleep(0.1)
                return f"value of {k}"

            await asyncio.get_running_loop().run_in_executor(None, start.wait, 60)
            values = await asyncio.gather(*(client.get(key, 30, load) for _ in range(TASKS)),
                                          return_exceptions=True)
            out.put(("done", [v if isinstance(v, str) else repr(v) for v in values],
                     client.stats()["loads"]))

    try:
        asyncio.run(main())
    except BaseException as exc:
        out.put(("error", repr(exc)))


@pytest.mark.parametrize("lua", [False, True], ids=["set-nx-get", "lua-lock"])
def test_sync_and_async_processes_load_once(clean_server: ValkeyServer, raw: RawConnection,
                                            lua: bool) -> None:
    start = SPAWN.Event()
    out = SPAWN.Queue()
    args = (clean_server.url, "fleet", "fleet:loads", lua, start, out)
    children = [SPAWN.Process(target=stampede_worker, args=args) for _ in range(2)]
    children += [SPAWN.Process(target=async_stampede_worker, args=args) for _ in range(2)]
    for child in children:
        child.start()
    try:
        # Every child connects first; then all race for the cold key together.
        deadline = time.monotonic() + 60
        while raw.execute("CLIENT", "LIST").count(b"cmd=") < len(children) + 1:
            assert time.monotonic() < deadline, "the children did not connect"
            time.sleep(0.02)  # the server's client list has no event to await
        start.set()
        results = [out.get(timeout=60) for _ in children]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    errors = [r for r in results if r[0] != "done"]
    assert not errors, errors
    values = [v for r in results for v in r[1]]
    assert values == ["value of fleet"] * len(values) and len(values) == 2 * 20 + 2 * TASKS
    assert raw.execute("GET", "fleet:loads") == b"1"
    assert sum(r[2] for r in results) == 1
