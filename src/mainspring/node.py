"""Node: one process hosting actor types over a store.

``async with Node("node-1", store=SqliteStore("app.db"), actors=[Account]) as node:`` opens the
store, starts the group-commit journal, the lease renewer, the reminder scan and the outbox
relay, and serves ``ask``/``tell``. Leaving the block stops accepting messages, drains every
mailbox, snapshots and releases leases, and closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, final

from mainspring.actors.actor import Actor
from mainspring.actors.host import ActorHost
from mainspring.actors.scans import ScanStatistics, start_scans
from mainspring.actors.workflow import WorkflowDefinition
from mainspring.actors.workflow_client import WorkflowClient
from mainspring.actors.workflow_runtime import (
    WORKFLOW_ACTOR_TYPE,
    WorkflowActorBase,
    WorkflowServices,
    workflow_actor_type,
)
from mainspring.cluster.config import ClusterConfig
from mainspring.codec import Registry, registry
from mainspring.config import NodeConfig
from mainspring.errors import NodeClosed, StoreUnavailable, UsageError
from mainspring.observability import Telemetry
from mainspring.persistence.journal import Journal
from mainspring.persistence.store import Store
from mainspring.seams import Clock, Ids, Random, SeededRandom, SystemClock, SystemIds
from mainspring.validation import check_id, check_timeout

if TYPE_CHECKING:
    from mainspring.cluster.runtime import Cluster

__all__ = ["Node"]

log: Final = logging.getLogger(__name__)

R = TypeVar("R")

_NODE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_ACTOR_ID_LENGTH_MAX: Final = 512
_MESSAGE_ID_LENGTH_MAX: Final = 256


def _check_actor_id(actor_id: object) -> str:
    return check_id(actor_id, "actor_id", _ACTOR_ID_LENGTH_MAX)


def _check_message_id(message_id: object) -> str | None:
    return (
        None if message_id is None else check_id(message_id, "message_id", _MESSAGE_ID_LENGTH_MAX)
    )


def _cluster(node: Node, config: ClusterConfig) -> Cluster:
    from mainspring.cluster.runtime import Cluster  # only clustered nodes load the HTTP client

    return Cluster(node.host, config)


@final
class Node:
    """A mainspring node: hosts actors over a store and serves ``ask`` and ``tell``.

    Args:
        node_id: this node's name, the owner recorded on its leases. A restarted node with the
            same id takes its own leases back at once.
        store: the durable store; the node opens it on start and closes it on stop.
        actors: the actor types this node hosts.
        workflows: the workflow definitions this node runs (several versions of one type may
            be given); use them through ``node.workflows``.
        config: settings; see ``NodeConfig``.
        clock: the clock seam (system clock by default).
        random: the random seam (seeded from the OS by default).
        ids: the id seam (UUID4 by default).
        codec: the type registry (the process-wide one by default).
        telemetry: where the node's metrics and spans go (see ``Telemetry``).
        cluster: run as one member of a cluster over a shared store (see ``ClusterConfig``
            and docs/architecture.md); None (the default) runs alone, owning every actor.
    """

    def __init__(
        self,
        node_id: str,
        *,
        store: Store,
        actors: Sequence[type[Actor[Any]]] = (),
        workflows: Sequence[WorkflowDefinition[Any, Any]] = (),
        config: NodeConfig | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
        ids: Ids | None = None,
        codec: Registry | None = None,
        telemetry: Telemetry | None = None,
        cluster: ClusterConfig | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not _NODE_ID_PATTERN.match(node_id):
            raise UsageError(
                f"node_id must be 1-100 letters, digits, '_', '.', ':' or '-' starting with a "
                f"letter or digit, got {node_id!r}"
            )
        if config is not None and not isinstance(config, NodeConfig):
            raise UsageError(f"config must be a NodeConfig, got {type(config).__name__}")
        if cluster is not None and not isinstance(cluster, ClusterConfig):
            raise UsageError(f"cluster must be a ClusterConfig, got {type(cluster).__name__}")
        self.node_id: Final = node_id
        self.config: Final = config or NodeConfig()
        self.clock: Final[Clock] = clock or SystemClock()
        self.random: Final[Random] = random or SeededRandom()
        self.ids: Final[Ids] = ids or SystemIds()
        self.codec: Final = codec or registry
        self.telemetry: Final = telemetry or Telemetry()
        self.store: Final = store
        self.journal: Final = Journal(
            store,
            self.clock,
            batch_requests_max=self.config.journal_batch_max,
            commits_in_flight_max=self.config.journal_commits_in_flight_max,
        )
        self.workflow_services: Final = WorkflowServices()
        self.workflow_services.telemetry = self.telemetry
        workflow_actor = workflow_actor_type(workflows, self.workflow_services)
        if any(getattr(a, "type_name", None) == WORKFLOW_ACTOR_TYPE for a in actors):
            raise UsageError(f"actor type name {WORKFLOW_ACTOR_TYPE!r} is reserved for workflows")
        self.host: Final = ActorHost(
            node_id,
            store,
            self.journal,
            [*actors, workflow_actor],
            self.config,
            self.clock,
            self.codec,
            self.random,
        )
        self.workflows: Final = WorkflowClient(self.host, self.workflow_services, self.ids)
        """Start, signal, query, cancel and await workflows (see ``WorkflowClient``)."""
        self.cluster: Final[Cluster | None] = None if cluster is None else _cluster(self, cluster)
        """This node's membership and routing when it runs in a cluster, else None."""
        self.scan_statistics: Final = ScanStatistics()
        self._wire_telemetry()
        self._tasks: list[asyncio.Task[None]] = []
        self._state = "new"
        self._unwire: Callable[[], None] = lambda: None

    def _wire_telemetry(self) -> None:
        telemetry = self.telemetry
        if not isinstance(telemetry, Telemetry):
            raise UsageError(f"telemetry must be a Telemetry, got {type(telemetry).__name__}")
        telemetry.observe(self)
        if telemetry.tracing:
            self.host.tracer = telemetry.tracer
            self.journal.tracer = telemetry.tracer
        self.journal.on_commit = telemetry.journal_committed

    # Lifecycle ----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    async def start(self) -> None:
        """Open the store and start the node's background work.

        Raises:
            StoreUnavailable: the store cannot be opened.
        """
        if self._state != "new":
            raise UsageError(f"node {self.node_id!r} was already started (state {self._state})")
        self._state = "starting"
        await self.store.open()
        await self.journal.start()
        if self.cluster is not None:
            await self.cluster.start()
        timers, relay, self._unwire = start_scans(self.host, self.scan_statistics)
        self._spawn(self._renew_leases(), "lease-renewer")
        self._spawn(timers.run(), "timer-scan")
        self._spawn(relay.run(), "outbox-relay")
        self._state = "running"
        self._spawn(self._recover_workflows(), "workflow-recovery")
        if self.telemetry.workflow_counts_interval_s is not None:
            self._spawn(self._count_workflows(self.telemetry.workflow_counts_interval_s), "metrics")
        log.info("NodeStarted", extra={"node_id": self.node_id})

    async def stop(self) -> None:
        """Stop accepting messages, let step attempts in flight finish and drain mailboxes
        (each for up to ``shutdown_timeout_s``), snapshot and release leases, and close the
        store. Idempotent."""
        if self._state in {"stopping", "stopped"}:
            return
        self._state = "stopping"
        if self.cluster is not None:
            await self.cluster.leave()  # hand every actor off while steps settle
        await self._settle_steps()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._unwire()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("NodeTaskFailed", exc_info=result)
        await self.host.drain()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.journal.close()
        await self.store.close()
        self._state = "stopped"
        log.info("NodeStopped", extra={"node_id": self.node_id})

    async def _settle_steps(self) -> None:
        """Let the step attempts in flight finish and their outcomes commit, for up to
        ``shutdown_timeout_s``: an attempt cut short runs again after a restart, repeating its
        side effects (safe with idempotency keys, but a second call all the same)."""
        attempts = [
            slot.task
            for activation in list(self.host.live.values())
            if isinstance(activation.actor, WorkflowActorBase) and activation.actor.run is not None
            for slot in activation.actor.run.steps.values()
            if slot.task is not None
        ]
        if not attempts:
            return
        _, pending = await asyncio.wait(attempts, timeout=self.config.shutdown_timeout_s)
        if pending:
            log.warning(
                "ShutdownAbandonedSteps", extra={"node_id": self.node_id, "steps": len(pending)}
            )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=f"mainspring-{name}"))

    async def _recover_workflows(self) -> None:
        """Wake the running workflows at start, then, now and again, any running workflow that
        is not live here (a wake-up lost to a failed commit must not strand it)."""
        skip_live = False
        while True:
            try:
                woken = await self.workflows.recover(skip_live=skip_live, stalled=not skip_live)
            except (StoreUnavailable, NodeClosed) as error:
                log.warning("WorkflowRecoveryIncomplete", extra={"error": str(error)})
            else:
                if woken:
                    log.info(
                        "WorkflowsRecovered", extra={"node_id": self.node_id, "workflows": woken}
                    )
                skip_live = True
            if self.cluster is None:
                await asyncio.sleep(self.config.workflow_recovery_interval_s)
            else:
                # A ring change wakes it early: workflows handed to this node mid-step have
                # no message coming to wake them.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.workflow_recovery_interval_s):
                        await self.cluster.ring_changed.wait()
                self.cluster.ring_changed.clear()

    async def _count_workflows(self, interval_s: float) -> None:
        """Keep ``mainspring_workflows`` (counts by status from the instance index) fresh, from
        the first time the metrics are read on (a node nobody watches never counts)."""
        await self.telemetry.wait_until_read()
        while True:
            try:
                await self.telemetry.refresh_workflow_counts()
            except StoreUnavailable as error:
                log.debug("WorkflowCountFailed", extra={"error": str(error)})
            await asyncio.sleep(interval_s)

    async def _renew_leases(self) -> None:
        config = self.config
        while True:
            await asyncio.sleep(config.lease_renew_interval_s)
            held = self.host.held_leases()
            if not held:
                continue
            try:
                lost = await self.store.renew_leases(
                    self.node_id, held, self.clock.wall_ms(), config.lease_ttl_ms
                )
            except StoreUnavailable as error:
                log.warning("LeaseRenewalFailed", extra={"error": str(error)})
                continue
            assert len(lost) <= len(held), (len(lost), len(held))
            self.host.statistics.leases_renewed += len(held) - len(lost)
            if lost:
                log.warning("LeasesLost", extra={"streams": len(lost)})
                self.host.lost_leases(lost)

    # Messaging ---------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != "running":
            if self._state == "new":
                raise UsageError(
                    f"node {self.node_id!r} is not started; use 'async with node:' or "
                    "'await node.start()' first"
                )
            raise NodeClosed(f"node {self.node_id!r} is {self._state}; it accepts no messages")

    async def ask(
        self,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        message_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Send ``message`` to an actor and return its handler's reply once the events the
        handler emitted are committed.

        Args:
            actor: the actor class, or its type name.
            actor_id: the actor's id (activated on first use).
            message: an instance of a message class the actor handles.
            message_id: an idempotency key; a message with an id the actor already accepted
                is not applied again and returns the stored reply.
            timeout_s: give up waiting after this long (the message may still be handled).

        Raises:
            UnknownActorType: the node does not host ``actor``.
            Overloaded: the actor's mailbox is full.
            CommandRejected: the handler refused the message.
            TimeoutError: ``timeout_s`` passed first.
            NodeClosed: the node is stopping.
            Any exception the handler raised: nothing was written.
        """
        self._check_running()
        _check_actor_id(actor_id)
        if message_id is not None:
            _check_message_id(message_id)
        if timeout_s is not None:
            check_timeout(timeout_s)
        future = self.host.deliver(actor, actor_id, message, message_id, want_reply=True)
        assert future is not None
        if timeout_s is None:
            return await future
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(future)

    async def tell(
        self,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        message_id: str | None = None,
    ) -> None:
        """Queue ``message`` for an actor without waiting for it to be handled.

        Nothing is durable when this returns: use ``ask`` (or an actor's ``ctx.tell``, which goes
        through the outbox) when the message must survive a crash.

        Raises:
            UnknownActorType: the node does not host ``actor``.
            Overloaded: the actor's mailbox is full.
            NodeClosed: the node is stopping.
        """
        self._check_running()
        _check_actor_id(actor_id)
        _check_message_id(message_id)
        self.host.deliver(actor, actor_id, message, message_id, want_reply=False)

    def statistics(self) -> dict[str, Any]:
        """Counters of the node's parts, for logs, tests and metrics."""
        import attrs

        return {
            "live_actors": len(self.host.live),
            "host": attrs.asdict(self.host.statistics),
            "journal": attrs.asdict(self.journal.statistics),
            "scans": attrs.asdict(self.scan_statistics),
            "workflows": {
                "replays": self.workflow_services.replays,
                "events_replayed": self.workflow_services.events_replayed,
                "stalls": self.workflow_services.stalls,
                "slow_tasks": self.workflow_services.slow_tasks,
            },
        }
