"""Named crash points: places in the runtime where a simulated node may die.

The runtime calls ``await crash_point("journal.after_commit")`` at the moments where a crash is
most interesting (after a side effect and before it is recorded, after a commit and before its
callers hear of it, ...). In production no hook is installed and the call returns an awaitable
that completes at once, without suspending. The simulator installs a hook for the duration of a
run; when the run's fault profile gives the point a probability and the seeded draw hits, the
hook kills the current node right there: the awaitable it returns never completes, so none of
the node's code runs afterwards, not even the current task's ``finally`` blocks.

The same module holds the seam around a workflow step's call (``step_call``), through which the
simulator injects step faults (an error, a hang past the attempt's timeout).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final, TypeVar, final

__all__ = [
    "CRASH_POINTS",
    "PROCEED",
    "CrashHook",
    "StepHook",
    "crash_point",
    "install",
    "step_call",
]

T = TypeVar("T")

CRASH_POINTS: Final = (
    "step.after_effect",
    "journal.after_commit",
    "host.after_lease",
    "host.mid_passivation",
)
"""Every crash point the runtime has, in the order a message meets them:

* ``step.after_effect``: a workflow step's function returned (its side effect happened) and its
  outcome is not yet handed to the workflow;
* ``journal.after_commit``: the store committed a batch and the appenders are not yet told;
* ``host.after_lease``: an activation took its lease (the epoch rose) and has not hydrated;
* ``host.mid_passivation``: a passivating actor committed its final snapshot and has not
  released its lease (the hand-off).
"""

CrashHook = Callable[[str], Awaitable[None]]
"""Called with a crash point's name; returns what the runtime awaits there."""

StepHook = Callable[[Awaitable[Any], "float | None"], Awaitable[Any]]
"""Called with a step's awaitable and its attempt timeout; returns what the runtime awaits."""


@final
class _Pass:
    """An awaitable that completes at once with None, without suspending."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator function: ``await`` runs it to its (immediate) end


PROCEED: Final = _Pass()
"""What ``crash_point`` returns when the node goes on: completes at once."""
_crash_hook: CrashHook | None = None
_step_hook: StepHook | None = None


def crash_point(name: str) -> Awaitable[None]:
    """The crash point ``name`` (one of ``CRASH_POINTS``): await what it returns.

    Without a hook (production) this is a global read and a comparison.
    """
    hook = _crash_hook
    if hook is None:
        return PROCEED
    assert name in CRASH_POINTS, f"unknown crash point {name!r}"
    return hook(name)


def step_call(work: Awaitable[T], timeout_s: float | None) -> Awaitable[T]:
    """The seam around one call of a workflow step's function: ``work`` itself in production.

    Args:
        work: the step function's awaitable (not started yet).
        timeout_s: the attempt's timeout, if it has one.
    """
    hook = _step_hook
    if hook is None:
        return work
    wrapped: Awaitable[T] = hook(work, timeout_s)
    return wrapped


def install(crash: CrashHook | None, step: StepHook | None) -> Callable[[], None]:
    """Install hooks (the simulator does, for one run); returns the function that restores the
    previous ones.

    Raises:
        RuntimeError: hooks are installed already (runs do not nest).
    """
    global _crash_hook, _step_hook
    if _crash_hook is not None or _step_hook is not None:
        raise RuntimeError("crash-point hooks are installed already: simulations do not nest")
    _crash_hook, _step_hook = crash, step

    def restore() -> None:
        global _crash_hook, _step_hook
        _crash_hook, _step_hook = None, None

    return restore
