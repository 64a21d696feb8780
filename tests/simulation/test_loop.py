"""SimLoop on its own: virtual time, asyncio primitives, deadlocks, crashes and escapes."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from mainspring.simulations import (
    Deadlock,
    SimulationEscape,
    SimulationStuck,
    World,
    run_simulation,
)
from mainspring.simulations.loop import SimLoop, node_context

THIRTY_DAYS_S = 3600 * 24 * 30


def test_a_month_long_sleep_takes_no_wall_time_and_exactly_a_month_of_virtual_time() -> None:
    async def scenario(world: World) -> int:
        await asyncio.sleep(THIRTY_DAYS_S)
        return world.loop.now_ns

    cpu_before = time.process_time()
    result = run_simulation(0, scenario)
    assert time.process_time() - cpu_before < 1.0
    assert result.value == THIRTY_DAYS_S * 1_000_000_000
    assert result.virtual_s == THIRTY_DAYS_S
    assert result.steps < 20


def test_queue_event_taskgroup_timeout_and_wait_for_behave() -> None:
    async def scenario(world: World) -> dict[str, object]:
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
        received: list[tuple[float, int]] = []

        async def producer() -> None:
            for item in range(5):
                await asyncio.sleep(1.5)
                await queue.put(item)

        async def consumer() -> None:
            for _ in range(5):
                item = await queue.get()
                received.append((world.now_s, item))

        async with asyncio.TaskGroup() as group:
            group.create_task(producer())
            group.create_task(consumer())

        event = asyncio.Event()
        world.loop.call_later(7.0, event.set)
        started = world.now_s
        await event.wait()
        event_waited = world.now_s - started

        started = world.now_s
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.sleep(60)
        timeout_after = world.now_s - started

        started = world.now_s
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(60), timeout=3.0)
        wait_for_after = world.now_s - started
        assert await asyncio.wait_for(asyncio.sleep(1, result="ok"), timeout=3.0) == "ok"

        fast = asyncio.create_task(asyncio.sleep(1), name="fast")
        slow = asyncio.create_task(asyncio.sleep(10), name="slow")
        done, pending = await asyncio.wait({fast, slow}, timeout=5)
        assert (done, pending) == ({fast}, {slow})
        slow.cancel()

        # A failing child cancels its siblings, and the group raises an ExceptionGroup.
        async def fail_after(seconds: float) -> None:
            await asyncio.sleep(seconds)
            raise ValueError("boom")

        sibling_cancelled_at: list[float] = []

        async def long_sibling() -> None:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                sibling_cancelled_at.append(world.now_s)
                raise

        async def failing_group() -> None:
            async with asyncio.TaskGroup() as group:
                group.create_task(fail_after(2))
                group.create_task(long_sibling())

        group_started = world.now_s
        with pytest.raises(ExceptionGroup):
            await failing_group()
        return {
            "received": received,
            "event_waited": event_waited,
            "timeout_after": timeout_after,
            "wait_for_after": wait_for_after,
            "sibling_cancelled_after": sibling_cancelled_at[0] - group_started,
        }

    value = run_simulation(0, scenario).value
    assert value == {
        "received": [(1.5, 0), (3.0, 1), (4.5, 2), (6.0, 3), (7.5, 4)],
        "event_waited": 7.0,
        "timeout_after": 2.0,
        "wait_for_after": 3.0,
        "sibling_cancelled_after": 2.0,
    }


def test_wait_done_set_order_is_the_same_in_every_run() -> None:
    async def scenario(world: World) -> list[str]:
        # All finish at the same instant, so the done set holds all of them at once; its
        # iteration order comes from the tasks' hashes.
        tasks = [asyncio.create_task(asyncio.sleep(1), name=f"t{index}") for index in range(40)]
        for _ in range(200):  # allocate objects between runs so id()-based order would differ
            asyncio.get_running_loop().create_future()
        done, _ = await asyncio.wait(tasks)
        return [task.get_name() for task in done]

    orders = [run_simulation(seed, scenario).value for seed in range(3)]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == sorted(f"t{index}" for index in range(40))


def test_a_deadlock_names_both_blocked_tasks() -> None:
    async def scenario(world: World) -> None:
        first, second = asyncio.Event(), asyncio.Event()

        async def waits_then_sets(wait_for: asyncio.Event, then_set: asyncio.Event) -> None:
            await wait_for.wait()
            then_set.set()

        await asyncio.gather(
            asyncio.create_task(waits_then_sets(first, second), name="worker-a"),
            asyncio.create_task(waits_then_sets(second, first), name="worker-b"),
        )

    with pytest.raises(Deadlock) as raised:
        run_simulation(0, scenario)
    blocked = "\n".join(raised.value.blocked)
    assert "worker-a" in blocked
    assert "worker-b" in blocked
    assert "waits_then_sets" in blocked
    assert "Event.wait" in blocked


def test_a_crashed_nodes_task_never_runs_its_finally_but_a_cancelled_one_does() -> None:
    async def scenario(world: World) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {"crashed": [], "cancelled": []}
        loop = world.loop

        async def worker(log: list[str]) -> None:
            log.append("started")
            try:
                await asyncio.sleep(10)
                log.append("woke")
            except asyncio.CancelledError:
                log.append("cancelled")
                raise
            finally:
                log.append("finally")

        crashed_tag = loop.new_node_tag("doomed")
        crashed = loop.create_task(
            worker(seen["crashed"]), name="doomed-worker", context=node_context(crashed_tag)
        )
        cancelled = asyncio.create_task(worker(seen["cancelled"]), name="cancelled-worker")
        await asyncio.sleep(1)
        assert loop.crash(crashed_tag) == 1
        cancelled.cancel()
        await asyncio.sleep(20)  # past the crashed worker's timer, which was dropped
        assert not crashed.done()
        assert crashed not in loop.live_tasks()
        return {key: list(value) for key, value in seen.items()}

    result = run_simulation(0, scenario)
    assert result.value == {
        "crashed": ["started"],
        "cancelled": ["started", "cancelled", "finally"],
    }
    assert result.dropped == 1
    assert any("node.crash doomed#0 parked 1 tasks" in line for line in result.trace_tail)


def test_run_in_executor_escapes() -> None:
    async def scenario(world: World) -> None:
        await asyncio.get_running_loop().run_in_executor(None, print, "hi")

    with pytest.raises(SimulationEscape, match="run_in_executor"):
        run_simulation(0, scenario)


def test_to_thread_escapes() -> None:
    async def scenario(world: World) -> None:
        await asyncio.to_thread(print, "hi")

    with pytest.raises(SimulationEscape, match="run_in_executor"):
        run_simulation(0, scenario)


def test_an_escape_swallowed_by_simulated_code_still_fails_the_run() -> None:
    async def scenario(world: World) -> None:
        with contextlib.suppress(Exception):  # what careless code would do
            asyncio.get_running_loop().call_soon_threadsafe(print)

    with pytest.raises(SimulationEscape, match="call_soon_threadsafe"):
        run_simulation(0, scenario)


def test_sockets_dns_and_subprocesses_escape() -> None:
    async def scenario(world: World) -> list[str]:
        loop = asyncio.get_running_loop()
        escaped = []
        for name, call in [
            ("getaddrinfo", lambda: loop.getaddrinfo("example.com", 80)),
            ("create_connection", lambda: loop.create_connection(asyncio.Protocol, "x", 1)),
            ("subprocess_exec", lambda: loop.subprocess_exec(asyncio.SubprocessProtocol, "ls")),
            ("add_signal_handler", lambda: loop.add_signal_handler(2, print)),
        ]:
            with pytest.raises(SimulationEscape, match=name):
                call()
            escaped.append(name)
        world.loop.escapes.clear()  # expected here; the run itself is fine
        return escaped

    assert len(run_simulation(0, scenario).value) == 4


def test_a_livelock_runs_out_of_steps() -> None:
    async def scenario(world: World) -> None:
        while True:  # noqa: ASYNC110 (a livelock on purpose)
            await asyncio.sleep(0)

    with pytest.raises(SimulationStuck):
        run_simulation(0, scenario, max_steps=10_000)


def test_timers_due_at_one_instant_fire_in_scheduling_order() -> None:
    async def scenario(world: World) -> list[int]:
        fired: list[int] = []
        loop = asyncio.get_running_loop()
        for index in range(10):
            loop.call_at(5.0, fired.append, index)
        await asyncio.sleep(6)
        return fired

    assert run_simulation(0, scenario).value == list(range(10))


def test_a_timeout_due_now_fires_while_a_task_spins_on_sleep_zero() -> None:
    async def scenario(world: World) -> int:
        spins = 0

        async def spin() -> None:
            nonlocal spins
            async with asyncio.timeout(0):
                while True:
                    spins += 1
                    await asyncio.sleep(0)

        with pytest.raises(TimeoutError):
            await spin()
        return spins

    assert run_simulation(0, scenario, max_steps=1_000).value < 10


def test_the_loop_refuses_to_run_inside_another_loop() -> None:
    async def inside() -> None:
        loop = SimLoop()
        main = asyncio.sleep(0)
        try:
            with pytest.raises(RuntimeError, match="inside another running event loop"):
                loop.run_until_complete(main)
        finally:
            main.close()
            loop.close()

    asyncio.run(inside())
