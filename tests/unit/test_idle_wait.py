"""The activation's wake-up call: one timer handle across waits, never expiring a wait early."""

from __future__ import annotations

import asyncio

from mainspring.actors.host import _Wakeup

TIMEOUT_S = 0.2


async def test_a_wait_without_a_wakeup_expires_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup(TIMEOUT_S)
    started = loop.time()
    assert await wakeup.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_a_woken_wait_reports_the_wakeup() -> None:
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup(TIMEOUT_S)
    loop.call_later(0.01, wakeup.set)
    assert await wakeup.wait() is True
    assert wakeup.is_set()
    wakeup.cancel()


async def test_a_wakeup_before_the_wait_ends_it_at_once_until_cleared() -> None:
    wakeup = _Wakeup(TIMEOUT_S)
    wakeup.set()
    assert await wakeup.wait() is True
    assert await wakeup.wait() is True  # still set
    wakeup.clear()
    assert not wakeup.is_set()
    waiting = wakeup.wait()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    wakeup.set()
    assert await waiting is True
    wakeup.cancel()


async def test_the_handle_of_an_earlier_wait_does_not_cut_a_later_wait_short() -> None:
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup(TIMEOUT_S)
    loop.call_later(TIMEOUT_S / 2, wakeup.set)
    assert await wakeup.wait() is True
    wakeup.clear()
    # The handle armed for the first wait fires halfway through this one: it must re-arm for
    # this wait's own deadline instead of expiring it.
    started = loop.time()
    assert await wakeup.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_a_handle_firing_between_waits_leaves_the_next_wait_its_full_time() -> None:
    loop = asyncio.get_running_loop()
    wakeup = _Wakeup(TIMEOUT_S)
    wakeup.set()
    assert await wakeup.wait() is True  # arms a handle, then returns at once
    wakeup.clear()
    await asyncio.sleep(TIMEOUT_S * 1.5)  # "busy": the handle fires while nobody waits
    started = loop.time()
    assert await wakeup.wait() is False
    assert loop.time() - started >= TIMEOUT_S * 0.99


async def test_a_cancelled_wait_leaves_the_next_wait_working() -> None:
    wakeup = _Wakeup(TIMEOUT_S)
    first = wakeup.wait()
    first.cancel()
    second = wakeup.wait()
    wakeup.set()
    assert await second is True
    wakeup.cancel()


async def test_cancel_drops_the_pending_handle() -> None:
    wakeup = _Wakeup(TIMEOUT_S)
    wakeup.set()
    assert await wakeup.wait() is True
    wakeup.clear()
    waiting = wakeup.wait()
    wakeup.cancel()
    await asyncio.sleep(TIMEOUT_S * 1.5)
    assert not waiting.done()  # nothing fired after the activation left
    assert not wakeup.is_set()
