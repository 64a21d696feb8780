"""Invariant checkers over a store's final contents and the history its ``FaultyStore`` recorded.

Each checker is a plain function ``checker(contents, history)`` that returns nothing and raises
``InvariantViolation`` with a precise message; ``run_checks(world, extra=[...])`` captures the
contents of every store the world wrapped with ``world.faulty_store`` and runs the built-in
checkers, the user's ``extra`` ones, and ``check_replay_equals_memory`` for every actor that is
live on a running node.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from mainspring.actors.actor import Actor, replay
from mainspring.node import Node
from mainspring.persistence.store import LeaseRecord, Store, StoredEvent, StreamHead
from mainspring.simulations.faults import AppendRecord, FaultyStore, LeaseGrant, StoreHistory
from mainspring.simulations.loop import SimulationError

if TYPE_CHECKING:
    from mainspring.simulations.world import World


def shared_store(store: Store) -> Store:
    """The store behind a simulated node's view of it (the world gives each node a view whose
    ``close`` does nothing, so one node's stop does not close the store for the others)."""
    shared = getattr(store, "shared", None)
    return shared if shared is not None else store


__all__ = [
    "BUILTIN_CHECKERS",
    "Checker",
    "InvariantViolation",
    "StoreContents",
    "capture",
    "check_gapless",
    "check_liveness",
    "check_no_acknowledged_event_lost",
    "check_no_message_applied_twice",
    "check_no_stale_epoch_commit",
    "check_replay_equals_memory",
    "check_timers_fire_once_and_not_early",
    "run_checks",
]

_READ_PAGE: Final = 10_000


class InvariantViolation(SimulationError):
    """A run broke an invariant; the message names the invariant, the stream and the evidence.

    Args:
        message: what broke; a message of the form ``"[name] evidence"`` names the invariant.
        invariant: the invariant's short name (by default the ``[name]`` the message starts
            with, else ``"user invariant"``).
    """

    def __init__(self, message: str, invariant: str | None = None) -> None:
        super().__init__(message)
        if invariant is None:
            if message.startswith("[") and "]" in message:
                invariant = message[1 : message.index("]")]
            else:
                invariant = "user invariant"
        self.invariant = invariant


@attrs.frozen
class StoreContents:
    """Everything the checkers read from a store, captured once at the end of a run.

    Attributes:
        heads: every stream's head, by stream id.
        events: every stream's events in seq order, by stream id.
        lease_history: every stream's lease grants as the store keeps them, by stream id.
    """

    heads: dict[str, StreamHead]
    events: dict[str, list[StoredEvent]]
    lease_history: dict[str, list[LeaseRecord]]


Checker = Callable[[StoreContents, StoreHistory], None]
"""An invariant: raises ``InvariantViolation`` when the contents or the history break it."""


async def capture(store: Store) -> StoreContents:
    """Read every stream's head, events and lease history from ``store``.

    Pass the wrapped store (``FaultyStore.inner``), so that no fault or delay applies.
    """
    heads: dict[str, StreamHead] = {}
    events: dict[str, list[StoredEvent]] = {}
    lease_history: dict[str, list[LeaseRecord]] = {}
    for head in await store.list_streams():
        heads[head.stream_id] = head
        stream_events: list[StoredEvent] = []
        while True:
            page = await store.read_events(head.stream_id, len(stream_events), _READ_PAGE)
            stream_events.extend(page)
            if len(page) < _READ_PAGE:
                break
        events[head.stream_id] = stream_events
        lease_history[head.stream_id] = await store.read_lease_history(head.stream_id)
    return StoreContents(heads, events, lease_history)


def _violation(invariant: str, message: str) -> InvariantViolation:
    return InvariantViolation(f"[{invariant}] {message}")


# The built-in checkers ------------------------------------------------------------------------


def check_gapless(contents: StoreContents, history: StoreHistory) -> None:
    """Each stream's events are exactly seq ``1..head``, and the head says so too."""
    for stream_id, head in contents.heads.items():
        seqs = [event.seq for event in contents.events.get(stream_id, [])]
        expected = list(range(1, head.head_seq + 1))
        if seqs != expected:
            missing = sorted(set(expected) - set(seqs))
            extra = sorted(set(seqs) - set(expected))
            raise _violation(
                "gapless",
                f"{stream_id}: head {head.head_seq} but seqs {_span(seqs)} "
                f"(missing {missing[:10]}, unexpected {extra[:10]})",
            )


def check_no_stale_epoch_commit(contents: StoreContents, history: StoreHistory) -> None:
    """Single writer per epoch, and the store never accepts a write from a deposed one.

    * At most one owner per ``(stream, epoch)``, both in the store's lease history and in the
      grants the wrapper saw.
    * Event epochs never decrease along a stream's seqs, and none exceeds the stream's epoch.
    * Every committed append carried at least the newest epoch granted before it was handed to
      the store (in history order), was issued by the node that epoch was granted to, and its
      events are stored under the epoch it carried (a store that rewrites epochs hides the
      first check from the log alone).
    """
    invariant = "no stale-epoch commit"
    for stream_id, records in contents.lease_history.items():
        owners: dict[int, set[str]] = defaultdict(set)
        for record in records:
            owners[record.epoch].add(record.owner)
        for epoch, names in sorted(owners.items()):
            if len(names) > 1:
                raise _violation(
                    invariant, f"{stream_id}: epoch {epoch} was granted to {sorted(names)}"
                )
    granted: dict[tuple[str, int], str] = {}
    for grant in history.leases:
        key = (grant.stream_id, grant.epoch)
        if granted.setdefault(key, grant.owner) != grant.owner:
            raise _violation(
                invariant,
                f"{grant.stream_id}: epoch {grant.epoch} granted to {granted[key]} and then to "
                f"{grant.owner} ({grant.describe()})",
            )
    for stream_id, events in contents.events.items():
        head = contents.heads[stream_id]
        previous: StoredEvent | None = None
        for event in events:
            if event.epoch > head.epoch:
                raise _violation(
                    invariant,
                    f"{stream_id}: event seq {event.seq} has epoch {event.epoch}, above the "
                    f"stream's epoch {head.epoch}",
                )
            if previous is not None and event.epoch < previous.epoch:
                raise _violation(
                    invariant,
                    f"{stream_id}: event seq {event.seq} has epoch {event.epoch} after seq "
                    f"{previous.seq} with epoch {previous.epoch}",
                )
            previous = event
    grants_by_stream: dict[str, list[LeaseGrant]] = defaultdict(list)
    for grant in history.leases:
        grants_by_stream[grant.stream_id].append(grant)
    for append in history.appends:
        if append.committed is False:
            continue
        # Only a grant that completed before the append was handed to the store certainly
        # preceded its commit; one that completed while the store was busy may not have.
        earlier = [
            grant
            for grant in grants_by_stream.get(append.stream_id, [])
            if grant.index < append.invoked_index
        ]
        newest = max(earlier, key=lambda grant: grant.epoch, default=None)
        if append.committed and newest is not None and append.epoch < newest.epoch:
            raise _violation(
                invariant,
                f"{append.stream_id}: {append.describe()} was committed under epoch "
                f"{append.epoch} after {newest.describe()}: a deposed owner wrote",
            )
        owner = granted.get((append.stream_id, append.epoch))
        node_name = append.node.partition("#")[0]
        if append.committed and owner is not None and node_name not in {owner, "world"}:
            raise _violation(
                invariant,
                f"{append.stream_id}: {append.describe()} committed under epoch "
                f"{append.epoch}, which was granted to {owner}",
            )
        if append.committed:
            stored = contents.events.get(append.stream_id, [])
            for seq in range(append.expected_seq + 1, append.new_head_seq + 1):
                if seq <= len(stored) and stored[seq - 1].epoch != append.epoch:
                    raise _violation(
                        invariant,
                        f"{append.stream_id}: event seq {seq} is stored under epoch "
                        f"{stored[seq - 1].epoch} but {append.describe()} carried epoch "
                        f"{append.epoch}",
                    )


def check_no_acknowledged_event_lost(contents: StoreContents, history: StoreHistory) -> None:
    """Every acknowledgement the scenario recorded is in the log, at the position it was told."""
    for ack in history.acknowledged:
        events = contents.events.get(ack.stream_id, [])
        if ack.seq > len(events):
            raise _violation(
                "no acknowledged event lost",
                f"{ack.stream_id}: {ack.message_id!r} was acknowledged as seq {ack.seq} but the "
                f"log ends at seq {len(events)}",
            )
        event = events[ack.seq - 1]
        if event.message_id != ack.message_id:
            raise _violation(
                "no acknowledged event lost",
                f"{ack.stream_id}: {ack.message_id!r} was acknowledged as seq {ack.seq} but "
                f"that event belongs to {event.message_id!r}",
            )


def _commit_of(history: StoreHistory) -> dict[tuple[str, int], AppendRecord]:
    """The committed (or possibly committed) append that wrote each ``(stream, seq)``."""
    writers: dict[tuple[str, int], AppendRecord] = {}
    for append in history.appends:
        if append.committed is False:
            continue
        for seq in range(append.expected_seq + 1, append.new_head_seq + 1):
            known = writers.get((append.stream_id, seq))
            # A certain commit wins over an uncertain one at the same position.
            if known is None or (append.committed and not known.committed):
                writers[(append.stream_id, seq)] = append
    return writers


def check_no_message_applied_twice(contents: StoreContents, history: StoreHistory) -> None:
    """No message id is on the events of two different transitions (two commits).

    A message's transition is the append that committed its events; events without a recorded
    append (the store was not wrapped from the start) fall back to their epoch and timestamp.
    """
    writers = _commit_of(history)
    for stream_id, events in contents.events.items():
        transitions: dict[str, dict[object, StoredEvent]] = defaultdict(dict)
        for event in events:
            if event.message_id is None:
                continue
            writer = writers.get((stream_id, event.seq))
            key: object = (
                ("append", writer.index)
                if writer is not None
                else ("unrecorded", event.epoch, event.recorded_at_ms)
            )
            transitions[event.message_id].setdefault(key, event)
        for message_id, seen in transitions.items():
            if len(seen) > 1:
                places = []
                for event in seen.values():
                    writer = writers.get((stream_id, event.seq))
                    place = f"seq {event.seq} (epoch {event.epoch}"
                    place += f", {writer.describe()})" if writer is not None else ")"
                    places.append(place)
                raise _violation(
                    "no message applied twice",
                    f"{stream_id}: message {message_id!r} was applied {len(seen)} times: "
                    + "; ".join(places),
                )


BUILTIN_CHECKERS: Final[tuple[Checker, ...]] = (
    check_gapless,
    check_no_stale_epoch_commit,
    check_no_acknowledged_event_lost,
    check_no_message_applied_twice,
)


def check_replay_equals_memory(
    node: Node, actor_cls: type[Actor[Any]], contents: StoreContents
) -> int:
    """The state every hydrated live activation of ``actor_cls`` on ``node`` holds equals the
    fold of its stream's first ``seq`` events, from the initial state.

    Returns:
        How many activations were compared.
    """
    compared = 0
    for activation in list(node.host.live.values()):
        if activation.actor_cls is not actor_cls or not activation.hydrated:
            continue
        events = contents.events.get(activation.stream_id, [])
        if activation.seq > len(events):
            raise _violation(
                "replay equals memory",
                f"{activation.stream_id} on {node.node_id}: the activation is at seq "
                f"{activation.seq} but the log ends at seq {len(events)}",
            )
        state = replay(actor_cls, events[: activation.seq], codec=node.codec)
        if state != activation.state:
            raise _violation(
                "replay equals memory",
                f"{activation.stream_id} on {node.node_id}: memory holds {activation.state!r} "
                f"at seq {activation.seq}, the log folds to {state!r}",
            )
        compared += 1
    return compared


def _workflow_events(
    contents: StoreContents,
) -> Iterable[tuple[str, list[tuple[StoredEvent, Any]]]]:
    """``(workflow id, [(stored, decoded WorkflowEvent)])`` for every workflow stream."""
    from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE, WorkflowEvent
    from mainspring.codec import registry

    prefix = WORKFLOW_ACTOR_TYPE + "/"
    for stream_id, events in sorted(contents.events.items()):
        if not stream_id.startswith(prefix):
            continue
        decoded = []
        for stored in events:
            event = registry.decode(stored.type_name, stored.type_version, stored.payload)
            assert isinstance(event, WorkflowEvent), (stream_id, stored.seq)
            decoded.append((stored, event))
        yield stream_id[len(prefix) :], decoded


def check_timers_fire_once_and_not_early(
    contents: StoreContents, history: StoreHistory, *, backward_jump_ms_max: int = 0
) -> int:
    """Every durable workflow timer fires at most once per run, only after it was started, and
    not before its deadline by the clock of the node that fired it (the event's
    ``recorded_at_ms``; ``backward_jump_ms_max`` tolerates a clock stepped back between the
    scan that found the timer due and the commit).

    Returns:
        How many timer firings were checked.
    """
    invariant = "timers fire once and not early"
    checked = 0
    for workflow_id, events in _workflow_events(contents):
        deadlines: dict[int, int] = {}
        fired: dict[int, int] = {}
        for stored, event in events:
            if event.queued == 1:
                continue  # parked while paused or stalled; released later as queued == 2
            if event.kind in {"started", "retried"}:
                deadlines.clear()
                fired.clear()
            elif event.kind == "timer_started":
                deadlines[event.n] = int(event.data)
            elif event.kind == "timer_fired":
                if event.n not in deadlines:
                    raise _violation(
                        invariant,
                        f"workflow {workflow_id!r}: timer {event.n} fired at seq {stored.seq} "
                        "but was never started in this run",
                    )
                if event.n in fired:
                    raise _violation(
                        invariant,
                        f"workflow {workflow_id!r}: timer {event.n} fired twice (seq "
                        f"{fired[event.n]} and seq {stored.seq})",
                    )
                fired[event.n] = stored.seq
                checked += 1
                due_ms = deadlines[event.n]
                if stored.recorded_at_ms + backward_jump_ms_max < due_ms:
                    raise _violation(
                        invariant,
                        f"workflow {workflow_id!r}: timer {event.n} due at {due_ms} fired at "
                        f"{stored.recorded_at_ms} (seq {stored.seq}), "
                        f"{due_ms - stored.recorded_at_ms} ms early",
                    )
    return checked


async def check_liveness(
    world: World, *, within_s: float = 3600.0, poll_s: float = 1.0, limit: int = 20
) -> int:
    """After ``world.heal()``: every workflow in every store the run used reaches a closed
    status (completed, failed, cancelled, terminated) within ``within_s`` virtual seconds.

    Running nodes must be there to drive them (``heal`` restarts the nodes crash points
    killed; nodes the scenario crashed are the scenario's to restart).

    Returns:
        How many workflows were checked.

    Raises:
        InvariantViolation: ``[liveness]``, naming the stragglers and their status.
    """
    from mainspring.actors.workflow_runtime import CLOSED_STATUSES, WORKFLOW_ACTOR_TYPE

    if not world.healed:
        raise SimulationError("check_liveness runs in the liveness phase: call world.heal() first")
    deadline_s = world.now_s + within_s
    while True:
        open_workflows: list[tuple[str, str]] = []
        total = 0
        for store in _inner_stores(world):
            after: tuple[str, str] | None = None
            for _ in range(100_000):
                page = await store.list_instances(WORKFLOW_ACTOR_TYPE, None, 500, after)
                total += len(page)
                open_workflows.extend(
                    (info.actor_id, info.status)
                    for info in page
                    if info.status not in CLOSED_STATUSES
                )
                if len(page) < 500:
                    break
                after = (page[-1].actor_type, page[-1].actor_id)
        if not open_workflows:
            return total
        if world.now_s >= deadline_s:
            shown = ", ".join(f"{id_} ({status})" for id_, status in open_workflows[:limit])
            more = len(open_workflows) - limit
            raise _violation(
                "liveness",
                f"{len(open_workflows)} of {total} workflows not closed {within_s:g} s after "
                f"the faults healed (at t={world.healed_at_s:.3f}s): {shown}"
                + (f" and {more} more" if more > 0 else ""),
            )
        await asyncio.sleep(poll_s)


def _inner_stores(world: World) -> list[Store]:
    """Every store of the run, through no fault wrapper."""
    stores: list[Store] = []
    for store in world.stores:
        inner = store.inner if isinstance(store, FaultyStore) else store
        if all(known is not inner for known in stores):
            stores.append(inner)
    for faulty in world.faulty_stores:
        if all(known is not faulty.inner for known in stores):
            stores.append(faulty.inner)
    return stores


async def run_checks(world: World, extra: Sequence[Checker] = ()) -> None:
    """Check every store the world wrapped (``world.faulty_store``): the built-in invariants
    (timers included), then ``extra``, then replay-equals-memory for every actor live on a
    running node, then the world's user invariants (``world.add_invariant``).

    Raises:
        InvariantViolation: the first invariant found broken.
    """
    checkers: Iterable[Checker] = (*BUILTIN_CHECKERS, *extra)
    clock = world.profile.clock
    backward_ms = clock.jump_ms_max if clock.jump else 0
    for store in world.faulty_stores:
        contents = await capture(store.inner)
        for checker in checkers:
            checker(contents, store.history)
        check_timers_fire_once_and_not_early(
            contents, store.history, backward_jump_ms_max=backward_ms
        )
        for _, node in world.running_nodes():
            if shared_store(node.store) is not store:
                continue
            for actor_cls in node.host.types.values():
                check_replay_equals_memory(node, actor_cls, contents)
    world.check_invariants()


def _span(seqs: Sequence[int]) -> str:
    if len(seqs) <= 12:
        return str(list(seqs))
    return f"[{seqs[0]}, {seqs[1]}, ..., {seqs[-1]}] ({len(seqs)} events)"
