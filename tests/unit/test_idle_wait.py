"""The activation's idle wait: one timer handle across waits, never expiring a wait early."""

from __future__ import annotations

import asyncio

from mainspring.actors.host import _IdleWait

TIMEOUT_S = 0.2


async def test_a_wait_without_a_wakeup_expires_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    idle = _IdleWait(asyncio.Event(), TIMEOUT_S)
    started = loop.time()
    assert await idle.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_a_woken_wait_reports_the_wakeup() -> None:
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    idle = _IdleWait(wakeup, TIMEOUT_S)
    loop.call_later(0.01, wakeup.set)
    assert await idle.wait() is True
    idle.cancel()


async def test_the_handle_of_an_earlier_wait_does_not_cut_a_later_wait_short() -> None:
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    idle = _IdleWait(wakeup, TIMEOUT_S)
    loop.call_later(TIMEOUT_S / 2, wakeup.set)
    assert await idle.wait() is True
    wakeup.clear()
    # The handle armed for the first wait fires halfway through this one: it must re-arm for
    # this wait's own deadline instead of expiring it.
    started = loop.time()
    assert await idle.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_a_handle_firing_between_waits_leaves_the_next_wait_its_full_time() -> None:
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    idle = _IdleWait(wakeup, TIMEOUT_S)
    wakeup.set()
    assert await idle.wait() is True  # arms a handle, then returns at once
    wakeup.clear()
    await asyncio.sleep(TIMEOUT_S * 1.5)  # "busy": the handle fires while nobody waits
    started = loop.time()
    assert await idle.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_cancel_drops_the_pending_handle() -> None:
    wakeup = asyncio.Event()
    idle = _IdleWait(wakeup, TIMEOUT_S)
    wakeup.set()
    assert await idle.wait() is True
    wakeup.clear()
    idle.cancel()
    await asyncio.sleep(TIMEOUT_S * 1.5)
    assert not wakeup.is_set()  # nothing fired after the activation left
