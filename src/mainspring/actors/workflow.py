"""Workflows: ordinary ``async`` Python, made durable by recording every step in history.

Declare a workflow with ``@workflow``::

    @mainspring.workflow("order", version=1)
    async def order(ctx: WorkflowContext, order: Order) -> Receipt:
        charge = await ctx.step(charge_card, order, retry=RetryPolicy(max_attempts=5))
        await ctx.sleep(timedelta(days=1))
        return Receipt(charge)

The code runs on a deterministic loop (see ``workflow_loop``): everything it learns from the
outside world comes through ``ctx`` and is recorded in the workflow's history, so a restarted
node rebuilds the exact same point by replaying the code against that history.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, TypeVar, cast, get_type_hints

import attrs

from mainspring.actors.retry import RetryPolicy, seconds_of
from mainspring.errors import MainspringError, UsageError

if TYPE_CHECKING:
    from mainspring.actors.actor import Actor
    from mainspring.actors.workflow_runtime import WorkflowRun

__all__ = [
    "ChildWorkflowFailed",
    "ContinueAsNew",
    "Saga",
    "StepContext",
    "StepFailed",
    "WorkflowContext",
    "WorkflowDefinition",
    "step_context",
    "workflow",
]

R = TypeVar("R")
I = TypeVar("I")  # noqa: E741

_NAME_PATTERN: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.:\-]{0,99}$")


# Definitions ------------------------------------------------------------------------------------


@attrs.frozen
class WorkflowDefinition(Generic[I, R]):
    """One version of a workflow type: its stable name, version and code.

    Create it with ``@workflow(name, version=...)``; pass it to ``Node(workflows=[...])``.
    Several versions of one name may be registered side by side: new runs start on the highest
    version, and each run replays on the version pinned in its history.
    """

    name: str
    version: int
    function: Callable[..., Awaitable[R]]
    input_type: Any
    max_concurrent_steps: int
    max_concurrent_children: int = 100

    async def __call__(self, ctx: WorkflowContext, input: I) -> R:
        return await self.function(ctx, input)


def workflow(
    name: str,
    *,
    version: int = 1,
    max_concurrent_steps: int = 100,
    max_concurrent_children: int = 100,
) -> Callable[[Callable[..., Awaitable[R]]], WorkflowDefinition[Any, R]]:
    """Declare an ``async def f(ctx: WorkflowContext, input) -> result`` as a workflow type.

    Args:
        name: the stable type name stored in history (never rename it).
        version: the code version; bump it for incompatible changes and keep the old version
            registered while its runs finish (or use ``ctx.patched``).
        max_concurrent_steps: the most step attempts one run has in flight at once; further
            steps (a large ``asyncio.gather``) wait for a free slot.
        max_concurrent_children: the most child workflows one run waits on at once; further
            ``ctx.child`` calls wait (in the code, deterministically) for one to finish.

    The input is decoded as the annotation of the second parameter (an attrs class or a plain
    JSON type); the result must be plain JSON or a registered attrs class.
    """
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise UsageError(
            f"workflow name must be 1-100 letters, digits, '_', '.', ':' or '-' starting with a "
            f"letter, got {name!r}"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UsageError(f"workflow version must be an int >= 1, got {version!r}")
    for what, bound in (
        ("max_concurrent_steps", max_concurrent_steps),
        ("max_concurrent_children", max_concurrent_children),
    ):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise UsageError(f"{what} must be an int >= 1, got {bound!r}")

    def decorate(function: Callable[..., Awaitable[R]]) -> WorkflowDefinition[Any, R]:
        if not inspect.iscoroutinefunction(function):
            raise UsageError(
                f"workflow {name!r} must be an 'async def' taking (ctx, input), got {function!r}"
            )
        parameters = list(inspect.signature(function).parameters)
        if len(parameters) != 2:
            raise UsageError(
                f"workflow {name!r} must take exactly (ctx, input), got ({', '.join(parameters)})"
            )
        try:
            hints = get_type_hints(function)
        except NameError:
            hints = {}
        return WorkflowDefinition(
            name,
            version,
            function,
            hints.get(parameters[1], Any),
            max_concurrent_steps,
            max_concurrent_children,
        )

    return decorate


# Errors and signals raised inside workflow code -------------------------------------------


class StepFailed(MainspringError):
    """Raised in workflow code when a step failed for good (no attempts left, or an error its
    retry policy says not to retry). Catch it to compensate.

    Attributes:
        step: the step number.
        step_name: the step's name.
        error_type: the class name of the last attempt's error.
        error_message: its message.
        attempts: how many attempts were made.
    """

    def __init__(
        self, step: int, step_name: str, error_type: str, error_message: str, attempts: int
    ) -> None:
        self.step = step
        self.step_name = step_name
        self.error_type = error_type
        self.error_message = error_message
        self.attempts = attempts
        super().__init__(
            f"step {step} ({step_name!r}) failed after {attempts} attempt(s): "
            f"{error_type}: {error_message}"
        )


class ChildWorkflowFailed(MainspringError):
    """Raised in workflow code when a child workflow ended without a result."""

    def __init__(self, child_id: str, status: str, error: dict[str, Any] | None) -> None:
        self.child_id = child_id
        self.status = status
        self.error = error
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        super().__init__(f"child workflow {child_id!r} ended {status}{detail}")


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``: ends this run and starts a fresh one with ``input``."""

    def __init__(self, input: Any) -> None:
        self.input = input
        super().__init__("continue as new")


# Steps ------------------------------------------------------------------------------------------


@attrs.define
class StepContext:
    """What a running step attempt may know: read it with ``mainspring.step_context()``.

    Attributes:
        workflow_id: the workflow that runs the step.
        step: the step number within the workflow.
        name: the step's name.
        attempt: the attempt number (1 for the first).
        idempotency_key: ``<workflow id>/<step number>``: the same on every attempt and every
            replay. Pass it to external services so that a repeated attempt has no second effect.
    """

    workflow_id: str
    step: int
    name: str
    attempt: int
    idempotency_key: str
    _heartbeat: Callable[[Any], None] = attrs.field(repr=False, alias="heartbeat_callback")
    heartbeat_details: Any = None

    def heartbeat(self, details: Any = None) -> None:
        """Report progress. Steps with a ``heartbeat_timeout`` must call it at least that
        often, or the attempt is cancelled and retried."""
        self.heartbeat_details = details
        self._heartbeat(details)


_CURRENT_STEP: Final[contextvars.ContextVar[StepContext | None]] = contextvars.ContextVar(
    "mainspring_step", default=None
)


def step_context() -> StepContext:
    """The context of the step attempt running in the current task.

    Raises:
        UsageError: called outside a step.
    """
    current = _CURRENT_STEP.get()
    if current is None:
        raise UsageError("step_context() is only available inside a step function")
    return current


def _optional_seconds(value: object, what: str) -> float | None:
    return None if value is None else seconds_of(value, what)


# The workflow context ---------------------------------------------------------------------


class WorkflowContext:
    """What workflow code may use: steps, timers, signals, children, time, randomness, ids.

    Everything here is either recorded in the workflow's history or derived from it, so a
    replay of the code sees exactly what the first run saw. Do not read clocks, random
    generators or the network in workflow code: use ``now()``, ``random()``, ``uuid()`` and
    steps.
    """

    def __init__(self, run: WorkflowRun) -> None:
        self._run = run

    @property
    def workflow_id(self) -> str:
        """This workflow's id."""
        return self._run.workflow_id

    @property
    def workflow_type(self) -> str:
        """This workflow's type name."""
        return self._run.definition.name

    @property
    def version(self) -> int:
        """The version of the code this run is pinned to."""
        return self._run.definition.version

    @property
    def run_number(self) -> int:
        """1 for the first run; +1 after each ``continue_as_new``."""
        return self._run.run_number

    @property
    def is_replaying(self) -> bool:
        """Whether the code is being replayed from history (side effects already happened)."""
        return self._run.replaying

    # Time, randomness and ids: derived from history ------------------------------------------

    def now_ms(self) -> int:
        """The workflow's time in milliseconds: the time recorded with the history event the
        code is reacting to. It never moves backwards."""
        return self._run.now_ms()

    def now(self) -> datetime:
        """``now_ms()`` as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.now_ms() / 1000, tz=UTC)

    def random(self) -> float:
        """A float in [0, 1) from the run's random source, seeded from history."""
        return self._run.rng.random()

    def uuid(self) -> str:
        """A version-4 UUID from the run's random source: the same on every replay."""
        return str(uuid.UUID(bytes=self._run.rng.randbytes(16), version=4))

    # Steps ---------------------------------------------------------------------------------

    async def step(
        self,
        function: Callable[..., Awaitable[R]] | Callable[..., R],
        *args: Any,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        attempt_timeout: timedelta | float | None = None,
        heartbeat_timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> R:
        """Run ``function(*args, **kwargs)`` as a step and return its recorded result.

        The step runs on the node (an ``async def`` on its loop, a plain function in a
        thread) at least once: after a crash before its result was recorded it runs again,
        with the same ``step_context().idempotency_key``. Its result must be plain JSON or a
        registered attrs class; it is recorded before the workflow goes on.

        Args:
            function: the step's code.
            name: the name recorded in history (default: the function's ``__name__``). The
                code must issue the same step names in the same order on replay.
            retry: the retry policy (default ``RetryPolicy()``: 5 attempts, backoff from 1 s).
            attempt_timeout: the limit of one attempt (a timed-out attempt is retried).
            heartbeat_timeout: cancel an attempt that has not called ``heartbeat()`` for this
                long.

        Raises:
            StepFailed: the step failed for good.
        """
        if not callable(function):
            raise UsageError(f"ctx.step needs a callable, got {function!r}")
        step_name = name if name is not None else getattr(function, "__name__", "step")
        if not isinstance(step_name, str) or not step_name:
            raise UsageError(f"step name must be a non-empty str, got {step_name!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise UsageError(f"retry= takes a RetryPolicy, got {retry!r}")
        future = self._run.schedule_step(
            function,
            args,
            kwargs,
            step_name,
            retry or RetryPolicy(),
            _optional_seconds(attempt_timeout, "step attempt_timeout"),
            _optional_seconds(heartbeat_timeout, "step heartbeat_timeout"),
        )
        return cast("R", await future)

    async def ask(
        self,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        retry: RetryPolicy | None = None,
        attempt_timeout: timedelta | float | None = None,
    ) -> Any:
        """Ask an actor from a step, with the step's idempotency key as the message id: the
        actor's transition happens exactly once however often the step runs. A
        ``CommandRejected`` reply is not retried."""
        target = actor if isinstance(actor, str) else actor.type_name
        policy = retry or RetryPolicy(non_retryable=("CommandRejected", "UnknownActorType"))
        return await self.step(
            self._run.ask_actor,
            target,
            actor_id,
            message,
            name=f"ask:{target}",
            retry=policy,
            attempt_timeout=attempt_timeout,
        )

    def tell(self, actor: type[Actor[Any]] | str, actor_id: str, message: object) -> None:
        """Send ``message`` to an actor through the outbox: delivered at least once after this
        point of the history is committed, applied once by the receiver."""
        target = actor if isinstance(actor, str) else actor.type_name
        self._run.send_message(target, actor_id, message)

    # Timers and signals ------------------------------------------------------------------------

    async def sleep(self, duration: timedelta | float) -> None:
        """Wait durably: the timer survives restarts (``asyncio.sleep`` does the same)."""
        await asyncio.sleep(seconds_of(duration, "sleep duration"))

    async def wait_for_signal(
        self,
        name: str,
        *,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109 (a durable timer)
    ) -> Any:
        """The payload of the next signal ``name``: one that arrived earlier (buffered durably,
        in order) or the next to arrive.

        Raises:
            TimeoutError: ``timeout`` passed first (a durable timer).
        """
        if not isinstance(name, str) or not name:
            raise UsageError(f"signal name must be a non-empty str, got {name!r}")
        seconds = _optional_seconds(timeout, "wait_for_signal timeout")
        future = self._run.signal_future(name)
        if seconds is None:
            return await future
        async with asyncio.timeout(seconds):
            return await future

    def signals_buffered(self, name: str) -> int:
        """How many signals ``name`` arrived and were not consumed yet."""
        return self._run.signals_buffered(name)

    # Children, versioning, queries, continue-as-new ----------------------------------------------

    async def child(
        self,
        definition: WorkflowDefinition[Any, R] | str,
        child_id: str,
        input: Any = None,
        *,
        on_parent_close: str = "cancel",
    ) -> R:
        """Start a child workflow (through the outbox) and wait for its result.

        Args:
            definition: the child's workflow, or its type name.
            child_id: the child's workflow id (a start is idempotent by id).
            input: the child's input.
            on_parent_close: what happens to the child if this workflow ends while the child
                is still running: ``"cancel"`` (the default) requests its cancellation, as
                ``cancel`` would, when this workflow completes, is cancelled, is terminated or
                continues as new; ``"abandon"`` lets it run on. A workflow that fails leaves its
                children running either way: a retry from its failure point waits for them.

        Raises:
            ChildWorkflowFailed: the child failed, was cancelled or terminated.
            UsageError: a malformed ``child_id`` or ``on_parent_close``.
        """
        type_name = definition if isinstance(definition, str) else definition.name
        if not isinstance(child_id, str) or not child_id:
            raise UsageError(f"child_id must be a non-empty str, got {child_id!r}")
        if on_parent_close not in ("cancel", "abandon"):
            raise UsageError(
                f'on_parent_close must be "cancel" or "abandon", got {on_parent_close!r}'
            )
        async with self._run.child_slots():
            return cast(
                "R",
                await self._run.start_child(
                    type_name, child_id, input, abandon=on_parent_close == "abandon"
                ),
            )

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new code path of ``patch_id``.

        True for runs that reach this point with the new code (a marker is recorded); False
        when replaying a history recorded before the patch. Keep the old path until no such
        run is left.
        """
        if not isinstance(patch_id, str) or not patch_id:
            raise UsageError(f"patch id must be a non-empty str, got {patch_id!r}")
        return self._run.patched(patch_id)

    def set_query_handler(self, name: str, handler: Callable[..., Any]) -> None:
        """Answer queries ``name`` with ``handler(*args)``. It must only read: queries write
        nothing and may run at any time between steps."""
        if not isinstance(name, str) or not name or not callable(handler):
            raise UsageError("set_query_handler takes a non-empty name and a callable")
        self._run.queries[name] = handler

    def continue_as_new(self, input: Any = None) -> NoReturn:
        """End this run and start a fresh one of the same workflow id with ``input`` (and the
        newest registered version): the history starts over, so it never grows unbounded."""
        raise ContinueAsNew(input)

    def saga(self) -> Saga:
        """A new compensation stack (see ``Saga``)."""
        return Saga(self)


class Saga:
    """Compensations registered as a workflow goes, run in reverse order when it must undo.

    ::

        saga = ctx.saga()
        try:
            await ctx.step(reserve, item)
            saga.add(release, item)
            await ctx.step(charge, order)
        except (StepFailed, asyncio.CancelledError):
            await saga.compensate()
            raise
    """

    def __init__(self, ctx: WorkflowContext) -> None:
        self._ctx = ctx
        self._compensations: list[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], bool]
        ] = []

    def add(self, function: Callable[..., Any], *args: Any, **step_options: Any) -> None:
        """Register ``function(*args)`` to run as a step if the saga compensates.
        ``step_options`` go to ``ctx.step`` (``name``, ``retry``, ``attempt_timeout``)."""
        if not callable(function):
            raise UsageError(f"Saga.add needs a callable, got {function!r}")
        self._compensations.append((function, args, step_options, True))

    def add_code(self, function: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Register ``await function(*args)`` to run as workflow code if the saga compensates:
        for compensations that use ``ctx.ask``, ``ctx.tell``, children or several steps."""
        if not callable(function):
            raise UsageError(f"Saga.add_code needs an async callable, got {function!r}")
        self._compensations.append((function, args, {}, False))

    @property
    def pending(self) -> int:
        """How many compensations have not run (to completion) yet."""
        return len(self._compensations)

    async def compensate(self) -> None:
        """Run the registered compensations, newest first. Each is removed once it completed:
        if the workflow is cancelled meanwhile, the interrupted one stays registered and a
        later ``compensate()`` runs it (and the older ones) again."""
        while self._compensations:
            function, args, options, as_step = self._compensations[-1]
            if as_step:
                await self._ctx.step(function, *args, **options)
            else:
                await function(*args)
            self._compensations.pop()
