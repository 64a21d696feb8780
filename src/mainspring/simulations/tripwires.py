"""Tripwires: the real clock, randomness and ids raise ``SimulationEscape`` inside a run.

A workflow or actor that calls ``time.time()``, ``random.random()`` or ``uuid.uuid4()`` makes a
seed irreproducible without any error; ruff's banned-api rule keeps such calls out of
``src/``, but not out of user code. For the duration of a run, ``tripwires`` replaces those
module attributes with wrappers that raise ``SimulationEscape`` (recorded by the loop, so a
swallowed one still fails the run) when they are called from simulated code while the loop
runs, in the loop's thread.

Calls from the standard library (``logging`` stamps records with ``time.time``), from the
simulator itself, from ``mainspring.seams`` and from a few libraries that only use the clock for
their own bookkeeping (OpenTelemetry, pytest) pass through. Code that bound a function before
the run (``from time import time``) is not caught, nor is ``datetime.now()``.
"""

from __future__ import annotations

import contextlib
import os
import random  # noqa: TID251 (replaced by tripwires during a run, never called here)
import secrets  # noqa: TID251 (replaced by tripwires during a run, never called here)
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Final

from mainspring.simulations.loop import SimLoop

__all__ = ["TRIPWIRES", "tripwires"]

TRIPWIRES: Final[dict[ModuleType, tuple[str, ...]]] = {
    time: ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"),
    random: (
        "random",
        "randint",
        "randrange",
        "choice",
        "choices",
        "shuffle",
        "sample",
        "uniform",
        "getrandbits",
        "randbytes",
        "gauss",
        "triangular",
    ),
    uuid: ("uuid1", "uuid4"),
    os: ("urandom",),
    secrets: ("token_bytes", "token_hex", "token_urlsafe", "randbelow", "randbits", "choice"),
}
"""The functions replaced during a run, by module."""

_ALLOWED_PREFIXES: Final = (
    "mainspring.simulations.",
    "mainspring.seams",
    "opentelemetry.",
    "_pytest.",
    "pytest",
    "pluggy.",
    "hypothesis.",
)
_STDLIB: Final = frozenset(sys.stdlib_module_names)


def _allowed(caller: str) -> bool:
    if caller.startswith(_ALLOWED_PREFIXES):
        return True
    top = caller.partition(".")[0]
    return top in _STDLIB and caller != "__main__"


def _wire(
    loop: SimLoop, module: ModuleType, name: str, original: Callable[..., Any], thread: int
) -> Callable[..., Any]:
    qualified = f"{module.__name__}.{name}"

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        if loop.is_running() and threading.get_ident() == thread:
            caller = sys._getframe(1).f_globals.get("__name__", "?")
            if not _allowed(caller):
                loop.escape(
                    f"{qualified}() called from {caller} (use the node's clock, random and ids "
                    "seams, or a workflow's ctx.now_ms()/ctx.random()/ctx.uuid(); the real ones "
                    "make a seed irreproducible)"
                )
        return original(*args, **kwargs)

    tripwire.__name__ = name
    tripwire.__qualname__ = name
    tripwire.__doc__ = original.__doc__
    return tripwire


@contextlib.contextmanager
def tripwires(loop: SimLoop, *, enabled: bool = True) -> Iterator[None]:
    """Replace the functions of ``TRIPWIRES`` while the block runs; restore them after.

    Raises:
        RuntimeError: tripwires are in place already (runs do not nest).
    """
    if not enabled:
        yield
        return
    if getattr(time.time, "__wrapped_by_simulation__", False):  # noqa: TID251 (inspected)
        raise RuntimeError("tripwires are in place already: simulations do not nest")
    thread = threading.get_ident()
    saved: list[tuple[ModuleType, str, Any]] = []
    try:
        for module, names in TRIPWIRES.items():
            for name in names:
                original = getattr(module, name)
                saved.append((module, name, original))
                wire = _wire(loop, module, name, original, thread)
                wire.__wrapped_by_simulation__ = True  # type: ignore[attr-defined]
                setattr(module, name, wire)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
