"""Node settings, validated when built: each bad value is named with the rule it breaks."""

from __future__ import annotations

from typing import Any

import attrs

from mainspring.errors import UsageError

__all__ = ["NodeConfig"]


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UsageError(f"{attribute.name} must be a number > 0, got {value!r}")


def _bool(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"{attribute.name} must be True or False, got {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{attribute.name} must be an int >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class NodeConfig:
    """How a node runs its actors. Every field has a production default.

    Attributes:
        lease_ttl_s: how long an actor's lease lasts without renewal. A crashed node's actors
            can be taken over by another node after this long.
        lease_renew_interval_s: how often leases of live actors are renewed (< lease_ttl_s / 2).
        idle_timeout_s: an actor with no message for this long is passivated.
        live_actors_max: above this many live actors, the least recently used idle ones are
            passivated.
        mailbox_messages_max: the most queued messages per actor; beyond it senders get
            ``Overloaded``.
        handler_batch_max: the most messages an actor handles before one commit.
        journal_batch_max: the most actors' appends in one store transaction.
        journal_commits_in_flight_max: the most store transactions in flight at once (over
            disjoint actors), so handling new messages overlaps committing earlier ones.
        timer_poll_interval_s: how often due reminders are scanned for (they are also woken
            directly when set on this node).
        outbox_poll_interval_s: how often undelivered outbox messages are scanned for.
        outbox_retry_interval_s: the pause before a failed outbox delivery is tried again.
        shutdown_timeout_s: how long ``stop`` drains mailboxes before it gives up on them.
        snapshot_on_passivate: write a snapshot when an actor with events since its last
            snapshot is passivated.
        create_with_first_write: an actor activated by a message whose class says it usually
            finds no actor yet (``creates_actor = True``, as a workflow start) is assumed new:
            its first write creates the stream and takes the lease in one transaction, instead
            of a lease transaction and then the write. If the actor exists after all, nothing
            is written and the activation starts over the usual way (lease, then read).
        workflow_task_warn_s: log a ``WorkflowTaskSlow`` warning when workflow code runs this
            long without yielding (it is never killed: move blocking work into a step).
        workflow_recovery_interval_s: how often running workflows that are not live on this
            node are woken (at start, all running workflows are).
    """

    lease_ttl_s: float = attrs.field(default=30.0, validator=_positive)
    lease_renew_interval_s: float = attrs.field(default=10.0, validator=_positive)
    idle_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    live_actors_max: int = attrs.field(default=100_000, validator=_positive_int)
    mailbox_messages_max: int = attrs.field(default=1_000, validator=_positive_int)
    handler_batch_max: int = attrs.field(default=64, validator=_positive_int)
    journal_batch_max: int = attrs.field(default=500, validator=_positive_int)
    journal_commits_in_flight_max: int = attrs.field(default=2, validator=_positive_int)
    timer_poll_interval_s: float = attrs.field(default=1.0, validator=_positive)
    outbox_poll_interval_s: float = attrs.field(default=1.0, validator=_positive)
    outbox_retry_interval_s: float = attrs.field(default=1.0, validator=_positive)
    shutdown_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    snapshot_on_passivate: bool = attrs.field(default=True, validator=_bool)
    create_with_first_write: bool = attrs.field(default=True, validator=_bool)
    workflow_task_warn_s: float = attrs.field(default=1.0, validator=_positive)
    workflow_recovery_interval_s: float = attrs.field(default=60.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.lease_renew_interval_s * 2 > self.lease_ttl_s:
            raise UsageError(
                f"lease_renew_interval_s ({self.lease_renew_interval_s}) must be at most half of "
                f"lease_ttl_s ({self.lease_ttl_s}), or a slow renewal loses the lease"
            )

    @property
    def lease_ttl_ms(self) -> int:
        """``lease_ttl_s`` in whole milliseconds."""
        return int(self.lease_ttl_s * 1000)
