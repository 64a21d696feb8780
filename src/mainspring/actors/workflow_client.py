"""``WorkflowClient``: start, signal, query, cancel and wait for workflows (``node.workflows``)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import attrs

from mainspring.actors.host import ActorHost
from mainspring.actors.workflow import WorkflowDefinition
from mainspring.actors.workflow_runtime import (
    WORKFLOW_ACTOR_TYPE,
    ControlWorkflow,
    DescribeWorkflow,
    QueryWorkflow,
    RecoverWorkflow,
    SignalWorkflow,
    StartReply,
    StartWorkflow,
    WorkflowDescription,
    WorkflowServices,
)
from mainspring.errors import (
    MainspringError,
    NodeClosed,
    StoreUnavailable,
    UsageError,
    WorkflowError,
)
from mainspring.persistence.store import InstanceInfo
from mainspring.seams import Ids
from mainspring.validation import check_id, check_timeout

__all__ = ["WorkflowClient", "WorkflowHandle"]

log: Final = logging.getLogger(__name__)

_ID_LENGTH_MAX: Final = 512
_SIGNAL_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.:\-]{0,99}$")
_RECOVERY_PAGE: Final = 200
_REMOTE_RESULT_POLL_S: Final = 0.05
_REMOTE_RESULT_POLL_MAX_S: Final = 1.0
"""How often ``result`` re-describes a workflow that runs on another node of a cluster."""
_RECOVERY_IN_FLIGHT: Final = 32


def _check_workflow_id(workflow_id: object) -> str:
    return check_id(workflow_id, "workflow_id", _ID_LENGTH_MAX)


@final
class WorkflowHandle:
    """A started workflow: the same operations as the client, bound to one workflow id."""

    def __init__(self, client: WorkflowClient, workflow_id: str) -> None:
        self.client: Final = client
        self.workflow_id: Final = workflow_id

    async def result(self, *, timeout_s: float | None = None) -> Any:
        """See ``WorkflowClient.result``."""
        return await self.client.result(self.workflow_id, timeout_s=timeout_s)

    async def describe(self) -> WorkflowDescription:
        """See ``WorkflowClient.describe``."""
        return await self.client.describe(self.workflow_id)

    async def signal(self, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        """See ``WorkflowClient.signal``."""
        await self.client.signal(self.workflow_id, name, payload, signal_id=signal_id)

    async def query(self, name: str, *args: Any) -> Any:
        """See ``WorkflowClient.query``."""
        return await self.client.query(self.workflow_id, name, *args)

    async def cancel(self, reason: str = "") -> WorkflowDescription:
        """See ``WorkflowClient.cancel``."""
        return await self.client.cancel(self.workflow_id, reason)


@final
class WorkflowClient:
    """Start and drive workflows hosted by a node. Get it as ``node.workflows``.

    Every call validates its arguments and raises ``UsageError`` naming what was wrong.
    """

    def __init__(self, host: ActorHost, services: WorkflowServices, ids: Ids) -> None:
        self._host = host
        self._services = services
        self._ids = ids

    async def _ask(self, workflow_id: str, message: object, message_id: str | None = None) -> Any:
        future = self._host.deliver(
            WORKFLOW_ACTOR_TYPE, workflow_id, message, message_id, want_reply=True
        )
        assert future is not None
        return await future

    def _type_name(self, workflow: WorkflowDefinition[Any, Any] | str) -> str:
        if isinstance(workflow, WorkflowDefinition):
            return workflow.name
        if isinstance(workflow, str) and workflow:
            return workflow
        raise UsageError(
            f"workflow must be a definition made with @mainspring.workflow or its type name, "
            f"got {workflow!r}"
        )

    async def start(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        workflow_id: str,
        input: Any = None,
        *,
        version: int | None = None,
    ) -> WorkflowHandle:
        """Start a workflow, or return the existing one with the same id, type and input.

        Returns once the start is durable: from then on the workflow runs to a terminal state
        whatever happens to this node.

        Args:
            workflow: the definition or its type name.
            workflow_id: the id (the idempotency key of the start).
            input: plain JSON or a registered attrs class.
            version: pin a registered version (default: the newest).

        Raises:
            WorkflowConflict: the id exists with another type or input.
            UsageError: the type or version is not registered on this node.
            CodecError: the input cannot be encoded.
        """
        await self.start_with_outcome(workflow, workflow_id, input, version=version)
        return WorkflowHandle(self, workflow_id)

    async def start_with_outcome(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        workflow_id: str,
        input: Any = None,
        *,
        version: int | None = None,
    ) -> StartReply:
        """``start``, replying whether this call created the workflow (``created``) or found
        it already started with the same type and input, and its description then (with
        ``result`` still encoded as a value envelope).

        Raises:
            The same errors as ``start``.
        """
        type_name = self._type_name(workflow)
        _check_workflow_id(workflow_id)
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise UsageError(f"version must be None or an int >= 1, got {version!r}")
        envelope = self._host.codec.to_value(input)
        reply = await self._ask(workflow_id, StartWorkflow(type_name, envelope, version or 0))
        assert isinstance(reply, StartReply), reply
        assert reply.description.workflow_id == workflow_id, reply
        return reply

    def handle(self, workflow_id: str) -> WorkflowHandle:
        """A handle to an existing workflow (nothing is checked until it is used)."""
        return WorkflowHandle(self, _check_workflow_id(workflow_id))

    async def describe(self, workflow_id: str) -> WorkflowDescription:
        """The workflow's status, result or error, pending steps and timers.

        Raises:
            WorkflowNotFound: no such workflow was started.
        """
        described = await self._describe(_check_workflow_id(workflow_id))
        if described.result is None:
            return described
        return attrs.evolve(described, result=self._host.codec.from_value(described.result))

    async def _describe(self, workflow_id: str) -> WorkflowDescription:
        """The description as the workflow replies it (``result`` still encoded)."""
        description: WorkflowDescription = await self._ask(workflow_id, DescribeWorkflow())
        return description

    async def result(self, workflow_id: str, *, timeout_s: float | None = None) -> Any:
        """Wait for the workflow to end and return its result.

        Raises:
            WorkflowError: it ended failed, cancelled or terminated (``status``, ``error``).
            TimeoutError: ``timeout_s`` passed first; the message says what it is doing.
            WorkflowNotFound: no such workflow was started.
        """
        _check_workflow_id(workflow_id)
        limit = check_timeout(timeout_s)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[WorkflowDescription] = loop.create_future()
        waiters = self._services.waiters.setdefault(workflow_id, set())
        waiters.add(waiter)
        description: WorkflowDescription | None = None
        try:
            description = await self._describe(workflow_id)
            if not description.closed:
                async with asyncio.timeout(limit):
                    description = await self._until_closed(workflow_id, waiter, description)
        except TimeoutError:
            status = description.status if description is not None else "unknown"
            raise TimeoutError(
                f"workflow {workflow_id!r} did not end within {limit} s; it is {status} "
                f"(describe() shows its pending steps, timers and any stall diagnosis)"
            ) from None
        finally:
            waiters.discard(waiter)
            if not waiters and self._services.waiters.get(workflow_id) is waiters:
                del self._services.waiters[workflow_id]
        if description.status == "completed":
            return self._host.codec.from_value(description.result)
        raise WorkflowError(workflow_id, description.status, description.error)

    async def _until_closed(
        self,
        workflow_id: str,
        waiter: asyncio.Future[WorkflowDescription],
        description: WorkflowDescription,
    ) -> WorkflowDescription:
        """The description once closed: told by ``waiter`` when the workflow runs here, else
        (in a cluster, another node runs it) found by describing it now and again."""
        if self._host.router is None:  # a node alone runs every workflow itself
            return await waiter
        pause_s = _REMOTE_RESULT_POLL_S
        while not description.closed:
            if self._host.owns(f"{WORKFLOW_ACTOR_TYPE}/{workflow_id}"):
                try:
                    async with asyncio.timeout(_REMOTE_RESULT_POLL_MAX_S):
                        return await asyncio.shield(waiter)
                except TimeoutError:
                    pass  # ownership may have moved meanwhile: look again
            else:
                try:
                    async with asyncio.timeout(pause_s):
                        return await asyncio.shield(waiter)
                except TimeoutError:
                    pause_s = min(pause_s * 2, _REMOTE_RESULT_POLL_MAX_S)
            description = await self._describe(workflow_id)
        return description

    async def signal(
        self, workflow_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> None:
        """Deliver signal ``name``; returns once it is durably recorded (or buffered).

        A signal with a ``signal_id`` the workflow already accepted is not recorded again.

        Raises:
            WorkflowNotFound: no such workflow was started.
            CommandRejected: the workflow is closed (``code='workflow_closed'``).
        """
        _check_workflow_id(workflow_id)
        if not isinstance(name, str) or not _SIGNAL_NAME.match(name):
            raise UsageError(
                f"signal name must be 1-100 letters, digits, '_', '.', ':' or '-' starting "
                f"with a letter, got {name!r}"
            )
        if signal_id is not None and (not isinstance(signal_id, str) or not signal_id):
            raise UsageError(f"signal_id must be None or a non-empty str, got {signal_id!r}")
        envelope = self._host.codec.to_value(payload)
        message_id = f"signal:{signal_id or self._ids.new_id()}"
        await self._ask(workflow_id, SignalWorkflow(name, envelope), message_id)

    async def query(self, workflow_id: str, name: str, *args: Any) -> Any:
        """Call the workflow code's query handler ``name`` (it writes nothing).

        Raises:
            CommandRejected: no such query handler (``code='unknown_query'``) or stalled.
        """
        _check_workflow_id(workflow_id)
        if not isinstance(name, str) or not name:
            raise UsageError(f"query name must be a non-empty str, got {name!r}")
        encoded_args = self._host.codec.to_value(list(args)) if args else None
        answer = await self._ask(workflow_id, QueryWorkflow(name, encoded_args))
        return self._host.codec.from_value(answer)

    async def _control(self, workflow_id: str, action: str, reason: str) -> WorkflowDescription:
        _check_workflow_id(workflow_id)
        if not isinstance(reason, str):
            raise UsageError(f"reason must be a str, got {reason!r}")
        description: WorkflowDescription = await self._ask(
            workflow_id, ControlWorkflow(action, reason)
        )
        return description

    async def cancel(self, workflow_id: str, reason: str = "") -> WorkflowDescription:
        """Request cancellation: ``asyncio.CancelledError`` is raised in the workflow code at
        its current ``await``; it may catch it to compensate. Returns once recorded."""
        return await self._control(workflow_id, "cancel", reason)

    async def terminate(self, workflow_id: str, reason: str = "") -> WorkflowDescription:
        """End the workflow at once (status ``terminated``): no code runs, nothing is
        compensated; its timers and in-flight steps are dropped."""
        return await self._control(workflow_id, "terminate", reason)

    async def pause(self, workflow_id: str, reason: str = "") -> WorkflowDescription:
        """Stop starting step attempts and feeding events to the code until ``resume``;
        signals, timers and step results that arrive meanwhile are queued durably."""
        return await self._control(workflow_id, "pause", reason)

    async def resume(self, workflow_id: str, reason: str = "") -> WorkflowDescription:
        """Undo ``pause``: the queued events reach the code in order."""
        return await self._control(workflow_id, "resume", reason)

    async def retry(self, workflow_id: str, reason: str = "") -> WorkflowDescription:
        """Retry a workflow that failed in a step from that step: the step runs again (with
        fresh attempts and the same idempotency key) and the code goes on from there.

        Raises:
            CommandRejected: the workflow did not fail, or failed in its own code.
        """
        return await self._control(workflow_id, "retry", reason)

    async def list(
        self, *, status: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[InstanceInfo]:
        """Workflows from the instance index, by id, optionally with one status."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise UsageError(f"limit must be an int >= 1, got {limit!r}")
        cursor = (WORKFLOW_ACTOR_TYPE, after) if after is not None else None
        return await self._host.store.list_instances(WORKFLOW_ACTOR_TYPE, status, limit, cursor)

    async def recover(self, *, skip_live: bool = False, stalled: bool = True) -> int:
        """Wake every workflow the index lists as ``running`` so its in-flight steps run
        again, and (with ``stalled``) every ``stalled`` one, whose history the code deployed
        now may replay. A node does this when it starts, and then now and again, with
        ``skip_live`` and without ``stalled``, for running workflows it does not host live.
        Returns how many were woken."""
        woken = 0
        limiter = asyncio.Semaphore(_RECOVERY_IN_FLIGHT)

        async def wake(workflow_id: str) -> None:
            async with limiter:
                try:
                    await self._ask(workflow_id, RecoverWorkflow())
                except (NodeClosed, StoreUnavailable):
                    raise
                except MainspringError as error:
                    log.warning(
                        "WorkflowRecoveryFailed",
                        extra={"workflow_id": workflow_id, "error": str(error)},
                    )

        for status in ("running", "stalled") if stalled else ("running",):
            woken += await self._wake_all(status, skip_live, wake)
        return woken

    async def _wake_all(
        self, status: str, skip_live: bool, wake: Callable[[str], Awaitable[None]]
    ) -> int:
        woken = 0
        after: tuple[str, str] | None = None
        while True:
            page = await self._host.store.list_instances(
                WORKFLOW_ACTOR_TYPE, status, _RECOVERY_PAGE, after
            )
            if not page:
                return woken
            due = [
                info.actor_id
                for info in page
                if not (skip_live and f"{WORKFLOW_ACTOR_TYPE}/{info.actor_id}" in self._host.live)
                # In a cluster each node wakes only the workflows it owns.
                and self._host.owns(f"{WORKFLOW_ACTOR_TYPE}/{info.actor_id}")
            ]
            await asyncio.gather(*(wake(workflow_id) for workflow_id in due))
            woken += len(due)
            after = (page[-1].actor_type, page[-1].actor_id)
