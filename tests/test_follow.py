"""The future-like object that tasks following another's get await (``_follow``):
asyncio's tasks take it as they take a future, and the landing resumes them
all in one callback of the loop, each in its own context."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable

import pytest

from valkeyaside._follow import Follow, Resumer

WHO: contextvars.ContextVar[int] = contextvars.ContextVar("who")


def run(main: Callable[[], Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 10)

    return asyncio.run(bounded())


def test_settled_followers_resume_in_one_callback_each_in_its_own_context() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        resumer = Resumer(loop)
        follows = [Follow(resumer) for _ in range(100)]

        async def one(index: int) -> tuple[int, int]:
            WHO.set(index)
            await follows[index]
            return index, WHO.get()

        tasks = [asyncio.ensure_future(one(i)) for i in range(100)]
        await asyncio.sleep(0)  # every task awaits its follow
        scheduled = []
        call_soon = loop.call_soon

        def counted(callback: Any, *args: Any, **kwargs: Any) -> Any:
            scheduled.append(callback)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counted  # type: ignore[method-assign]
        try:
            for follow in follows:
                follow.set_result(None)
        finally:
            loop.call_soon = call_soon  # type: ignore[method-assign]
        return [len(scheduled), await asyncio.gather(*tasks)]

    scheduled, results = run(main)
    assert scheduled == 1
    assert results == [(i, i) for i in range(100)]


def test_a_cancelled_follower_is_cancelled_and_the_others_resume() -> None:
    async def main() -> list[Any]:
        resumer = Resumer(asyncio.get_running_loop())
        follows = [Follow(resumer) for _ in range(3)]
        tasks = [asyncio.ensure_future(_await(follow)) for follow in follows]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        cancelled_early = tasks[1].done() and tasks[1].cancelled()
        for follow in follows:
            follow.set_result(None)  # the cancelled one stays cancelled
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return [cancelled_early, follows[1].cancelled(), [type(o).__name__ for o in outcomes]]

    assert run(main) == [True, True, ["str", "CancelledError", "str"]]


def test_a_follower_cancelled_after_its_flight_landed_is_still_cancelled() -> None:
    async def main() -> list[Any]:
        resumer = Resumer(asyncio.get_running_loop())
        follow = Follow(resumer)
        task = asyncio.ensure_future(_await(follow))
        await asyncio.sleep(0)
        follow.set_result(None)
        task.cancel()  # before the resumer ran: the task was asked to stop
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        return [follow.cancelled(), type(outcome).__name__]

    assert run(main) == [False, "CancelledError"]


def test_a_timeout_around_a_follower_ends_it_on_time() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        follow = Follow(Resumer(loop))
        began = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_await(follow), 0.05)
        waited = loop.time() - began
        follow.set_result(None)  # the flight lands later: nothing to resume
        await asyncio.sleep(0)
        return [follow.cancelled(), waited < 5]

    assert run(main) == [True, True]


def test_a_follow_settled_before_it_is_awaited_does_not_suspend() -> None:
    loop = asyncio.new_event_loop()
    try:
        follow = Follow(Resumer(loop))
        follow.set_result(None)
        with pytest.raises(StopIteration):  # returned at once: it yielded nothing
            follow.__await__().send(None)
    finally:
        loop.close()


def test_a_callback_added_once_settled_is_called_soon() -> None:
    async def main() -> list[Any]:
        follow = Follow(Resumer(asyncio.get_running_loop()))
        follow.set_result(None)
        await asyncio.sleep(0)  # the resumer ran: nobody was waiting yet
        called: list[Any] = []
        follow.add_done_callback(called.append)
        await asyncio.sleep(0)
        return [called == [follow], follow.done(), follow.result()]

    assert run(main) == [True, True, None]


def test_an_unsettled_follow_has_no_result() -> None:
    async def main() -> None:
        Follow(Resumer(asyncio.get_running_loop())).result()

    with pytest.raises(asyncio.InvalidStateError):
        run(main)


async def _await(follow: Follow) -> str:
    await follow
    return "resumed"
