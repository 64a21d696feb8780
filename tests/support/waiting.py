"""Waiting for a condition with a generous deadline (a liveness bound, never a speed claim)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, within_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail if it never does within ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {within_s} s")
        await asyncio.sleep(0.02)
