"""The gateway's request deadlines: one periodic check bounds every wait on the node."""

from __future__ import annotations

import asyncio

import pytest

from mainspring.gateway.handlers import _Deadlines


async def test_a_wait_within_its_limit_returns_its_result() -> None:
    deadlines = _Deadlines(5.0)

    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await deadlines.bound(work()) == 7
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    deadlines.close()


async def test_a_wait_past_its_limit_raises_timeout_error_and_cancels_the_work() -> None:
    deadlines = _Deadlines(0.05)
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await deadlines.bound(work())
    waited = loop.time() - started
    assert cancelled.is_set()
    assert 0.05 <= waited < 0.05 + deadlines.period_s + 1.0, waited
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # and no cancellation is left pending on the task
    deadlines.close()


async def test_many_waits_expire_each_on_its_own() -> None:
    deadlines = _Deadlines(0.05)

    async def slow() -> str:
        await asyncio.sleep(30)
        return "late"

    async def quick() -> str:
        return "on time"

    results = await asyncio.gather(
        *(deadlines.bound(slow()) for _ in range(5)),
        *(deadlines.bound(quick()) for _ in range(5)),
        return_exceptions=True,
    )
    assert [type(result) for result in results[:5]] == [TimeoutError] * 5
    assert results[5:] == ["on time"] * 5
    deadlines.close()


async def test_another_cancellation_is_not_turned_into_a_timeout() -> None:
    deadlines = _Deadlines(30.0)
    entered = asyncio.Event()

    async def work() -> None:
        entered.set()
        await asyncio.sleep(30)

    waiting = asyncio.ensure_future(deadlines.bound(work()))
    await entered.wait()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    deadlines.close()


async def test_work_that_swallows_the_cancellation_leaves_no_cancellation_behind() -> None:
    deadlines = _Deadlines(0.05)

    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    assert await deadlines.bound(stubborn()) == "swallowed"
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # the task is not cancelled later either
    deadlines.close()


async def test_the_check_stops_when_nothing_waits() -> None:
    deadlines = _Deadlines(0.05)

    async def quick() -> None:
        return None

    await deadlines.bound(quick())
    checker = deadlines._checker
    assert checker is not None
    await asyncio.wait_for(asyncio.shield(checker), 2)
    assert deadlines._checker is None
