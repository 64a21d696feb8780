"""The event loop each workflow instance runs on: deterministic, driven by its history.

Workflow code is ordinary ``async`` Python. The runtime runs it on a private event loop that
never waits for anything: ``run_until_quiescent`` runs every ready callback, in order, until
none is left, and returns. Time moves only when the runtime sets it from a history event, and a
timer (``asyncio.sleep``, ``asyncio.timeout``, ``wait_for``) becomes a durable timer command, so
the same history always drives the code through the same steps.

The loop is entered synchronously from the actor's handler, which runs on the node's real loop;
while the workflow runs, this loop is the running loop (``asyncio.get_running_loop()`` inside
workflow code returns it), and the node's loop is put back afterwards.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Protocol, TypeVar, final

from mainspring.errors import UsageError

__all__ = ["TimerScheduler", "WorkflowLoop"]

log: Final = logging.getLogger(__name__)

T = TypeVar("T")

_set_running_loop: Final = asyncio.events._set_running_loop
_get_running_loop: Final = asyncio.events._get_running_loop


class TimerScheduler(Protocol):
    """What the loop asks of its runtime when workflow code sets or cancels a timer."""

    def start_timer(self, when_s: float, handle: asyncio.TimerHandle) -> None:
        """Record a durable timer that fires ``handle`` at loop time ``when_s``."""

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        """Workflow code cancelled the timer of ``handle`` before it fired."""


@final
class _NoTimers:
    """The timer scheduler of a closed loop: timers are neither recorded nor cancelled."""

    def start_timer(self, when_s: float, handle: asyncio.TimerHandle) -> None:
        return None

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        return None


_NO_TIMERS: Final = _NoTimers()


@final
class WorkflowLoop(asyncio.AbstractEventLoop):
    """A deterministic event loop for one workflow instance (see the module docstring).

    Only what workflow code may use is implemented; I/O (sockets, subprocesses, threads,
    executors) raises ``UsageError``: do that in a step.
    """

    def __init__(self, timers: TimerScheduler) -> None:
        self._timers: TimerScheduler = timers
        self._ready: deque[asyncio.Handle] = deque()
        self._now_s = 0.0
        self._closed = False
        self._running_depth = 0
        self._exception_handler: Callable[..., Any] | None = None
        self.unhandled: list[dict[str, Any]] = []
        """Contexts passed to ``call_exception_handler`` (errors nobody awaited)."""

    # Driving the loop ---------------------------------------------------------------------

    def set_time_ms(self, now_ms: int) -> None:
        """Move the loop's clock forward to ``now_ms`` (never back)."""
        now_s = now_ms / 1000
        if now_s > self._now_s:
            self._now_s = now_s

    def schedule(self, handle: asyncio.Handle) -> None:
        """Queue an existing handle (a fired timer) to run."""
        self._ready.append(handle)

    def run_until_quiescent(self) -> None:
        """Run ready callbacks until none is left; the workflow is then waiting on history."""
        outer = _get_running_loop()
        _set_running_loop(self)
        self._running_depth += 1
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            self._running_depth -= 1
            _set_running_loop(outer)

    # The AbstractEventLoop surface workflow code uses ------------------------------------------

    def time(self) -> float:
        return self._now_s

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self._now_s + max(delay, 0.0), callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self, context)
        self._timers.start_timer(when, handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self._timers.cancel_timer(handle)

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[T]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def call_soon_threadsafe(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        raise UsageError(
            "workflow code cannot be entered from another thread; run threaded work in a step"
        )

    def is_running(self) -> bool:
        return self._running_depth > 0

    def is_closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
        # Let go of the scheduler (the workflow run, which holds this loop): timers of a
        # closed loop are not recorded, and the run is freed without the garbage collector.
        self._timers = _NO_TIMERS

    def get_debug(self) -> bool:
        return False

    def set_debug(self, enabled: bool) -> None:
        return None

    def get_exception_handler(self) -> Callable[..., Any] | None:
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., Any] | None) -> None:
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        if self._closed:
            return  # an abandoned run's tasks are collected; nothing is wrong
        self.unhandled.append(context)
        log.warning(
            "WorkflowUnhandledError",
            extra={"detail": context.get("message")},
            exc_info=context.get("exception"),
        )

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._exception_handler is not None:
            self._exception_handler(self, context)
        else:
            self.default_exception_handler(context)

    def get_task_factory(self) -> None:
        return None

    # Everything else is not for workflow code -------------------------------------------------

    def _not_in_workflow(self, *args: Any, **kwargs: Any) -> Any:
        raise UsageError(
            "workflow code cannot do I/O, threads or subprocesses: it is replayed from history. "
            "Do that work in a step (ctx.step)."
        )

    run_in_executor = _not_in_workflow  # type: ignore[assignment]
    getaddrinfo = _not_in_workflow
    create_connection = _not_in_workflow
    create_server = _not_in_workflow
    subprocess_exec = _not_in_workflow
    subprocess_shell = _not_in_workflow
    add_reader = _not_in_workflow  # type: ignore[assignment]
    add_writer = _not_in_workflow  # type: ignore[assignment]
    sock_recv = _not_in_workflow
    sock_sendall = _not_in_workflow
    run_forever = _not_in_workflow
    run_until_complete = _not_in_workflow
    add_signal_handler = _not_in_workflow  # type: ignore[assignment]
    connect_read_pipe = _not_in_workflow
    connect_write_pipe = _not_in_workflow
    create_datagram_endpoint = _not_in_workflow
    getnameinfo = _not_in_workflow
    remove_reader = _not_in_workflow
    remove_signal_handler = _not_in_workflow
    remove_writer = _not_in_workflow
    sendfile = _not_in_workflow
    set_default_executor = _not_in_workflow
    set_task_factory = _not_in_workflow
    shutdown_asyncgens = _not_in_workflow
    shutdown_default_executor = _not_in_workflow
    sock_accept = _not_in_workflow
    sock_connect = _not_in_workflow
    sock_recv_into = _not_in_workflow
    sock_recvfrom = _not_in_workflow
    sock_recvfrom_into = _not_in_workflow
    sock_sendfile = _not_in_workflow
    sock_sendto = _not_in_workflow
    start_tls = _not_in_workflow
    stop = _not_in_workflow
    create_unix_connection = _not_in_workflow
    create_unix_server = _not_in_workflow
    connect_accepted_socket = _not_in_workflow
