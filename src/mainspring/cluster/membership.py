"""Membership: which nodes are in the cluster, read from the store by every node.

Each node writes its own row (``join_member`` then ``heartbeat_member`` every
``heartbeat_interval_s``) and reads every row; the only write to another's row deletes it, once
it stayed unchanged for ``member_retention_s``. A member is *live* in a view when its state is
``up`` and its last heartbeat is at most ``member_timeout_s`` old by the reader's clock. Every
node computes its view from the same table with the same rule, so views converge within one
heartbeat interval once the table stops changing; no node coordinates the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Final, final

from mainspring.cluster.config import ClusterConfig
from mainspring.cluster.ring import HashRing
from mainspring.errors import StoreUnavailable, UsageError
from mainspring.persistence.store import Member, Store
from mainspring.seams import Clock

__all__ = ["Membership"]

log: Final = logging.getLogger(__name__)

_JOIN_TRIES: Final = 6


@final
class Membership:
    """One node's membership row and its view of everyone's.

    Args:
        node_id: this node.
        store: the shared store holding the membership table.
        clock: this node's clock (heartbeat times, ages of others' heartbeats).
        config: the cluster settings.
        on_change: called with the new ring whenever the set of live members changes.
    """

    def __init__(
        self,
        node_id: str,
        store: Store,
        clock: Clock,
        config: ClusterConfig,
        on_change: Callable[[HashRing], None] = lambda ring: None,
    ) -> None:
        self.node_id: Final = node_id
        self.store: Final = store
        self.clock: Final = clock
        self.config: Final = config
        self.on_change = on_change
        self.incarnation = 0
        self.state = "new"
        """``new``, ``up``, ``leaving``, ``left``, or ``superseded`` (a newer process joined
        under this node id: this one owns nothing any more)."""
        self.members: dict[str, Member] = {}
        """The rows of the last read, by node id."""
        self.ring = HashRing((), virtual_nodes=config.virtual_nodes)
        self.ring_changes = 0
        self._refreshing: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[int, int, float]] = {}
        """Per member: the incarnation and heartbeat last read, and our monotonic time then."""

    @property
    def addresses(self) -> Mapping[str, str]:
        """The gateway address of every member, by node id."""
        return {node_id: member.address for node_id, member in self.members.items()}

    def silence_s(self, member: Member) -> float:
        """How long ago (by this node's monotonic clock) ``member``'s heartbeat last changed."""
        seen = self._seen.get(member.node_id)
        return float("inf") if seen is None else self.clock.monotonic_s() - seen[2]

    def live(self, member: Member) -> bool:
        """Whether ``member`` belongs in this node's view: it is ``up`` and its heartbeat
        last changed at most ``member_timeout_s`` ago by this node's monotonic clock (the
        writer's wall clock, skewed or not, only dates a row seen for the first time)."""
        if member.node_id == self.node_id and self.state != "up":
            return False
        seen = self._seen.get(member.node_id)
        if member.state != "up" or seen is None:
            return False
        return self.clock.monotonic_s() - seen[2] <= self.config.member_timeout_s

    def _note(self, member: Member) -> None:
        """Remember when (by our monotonic clock) ``member``'s heartbeat last changed."""
        seen = self._seen.get(member.node_id)
        key = (member.incarnation, member.heartbeat_at_ms)
        if seen is not None and seen[:2] == key:
            return
        now_s = self.clock.monotonic_s()
        if seen is None:
            # First sight: the row's age by the writer's clock is all we know.
            age_s = (self.clock.wall_ms() - member.heartbeat_at_ms) / 1000
            if age_s > self.config.member_timeout_s:
                now_s -= self.config.member_timeout_s + 1.0
        self._seen[member.node_id] = (*key, now_s)

    async def join(self) -> Member:
        """Register under a new incarnation and read the first view (this node included)."""
        member = await self._join_member()
        assert member.incarnation >= 1, member
        assert member.state == "up", member
        self.incarnation = member.incarnation
        self.state = "up"
        log.info("MemberJoined", extra={"node_id": self.node_id, "incarnation": member.incarnation})
        await self.refresh()
        assert self.node_id in self.ring or self.state != "up", self.ring
        return member

    async def _join_member(self) -> Member:
        """Take the incarnation after the one the table holds for this node id.

        Each try reads the row first and joins on condition that it is unchanged, so a try
        whose acknowledgement was lost costs a skipped number, and one that reaches the store
        late (after a partition) finds the row moved on and writes nothing, instead of
        superseding the incarnation a later try took.
        """
        pause_s = 0.1
        for attempt in range(1, _JOIN_TRIES + 1):
            try:
                rows = await self.store.list_members()
                previous = next((row for row in rows if row.node_id == self.node_id), None)
                member = await self.store.join_member(
                    self.node_id,
                    self.config.address,
                    self.clock.wall_ms(),
                    0 if previous is None else previous.incarnation,
                )
            except StoreUnavailable as error:
                if attempt == _JOIN_TRIES:
                    raise
                log.warning("MemberJoinFailed", extra={"error": str(error)})
            else:
                if member is not None:
                    return member
                if attempt == _JOIN_TRIES:
                    raise UsageError(
                        f"node {self.node_id!r} could not join: its membership row changed "
                        f"under each of {_JOIN_TRIES} tries, so other processes keep joining "
                        "under this node id; give every node its own node id"
                    )
                log.warning("MemberJoinRaced", extra={"node_id": self.node_id})
            await asyncio.sleep(pause_s)
            pause_s *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def heartbeat(self, state: str = "up") -> bool:
        """Write this node's heartbeat (and ``state``); False when the row is no longer ours."""
        if self.state in {"new", "superseded"}:
            return False
        recorded = await self.store.heartbeat_member(
            self.node_id, self.incarnation, self.clock.wall_ms(), state
        )
        if not recorded and self.state == "up":
            log.error(
                "MemberSuperseded",
                extra={"node_id": self.node_id, "incarnation": self.incarnation},
            )
            self.state = "superseded"
            self._recompute()
        return recorded

    async def refresh(self) -> None:
        """Read the membership table and recompute the ring."""
        rows = await self.store.list_members()
        self.members = {member.node_id: member for member in rows}
        for member in rows:
            self._note(member)
        for node_id in self._seen.keys() - self.members.keys():
            del self._seen[node_id]  # its row was pruned
        self._recompute()

    async def prune(self) -> int:
        """Delete the rows of members this node has seen silent (their row unchanged) for
        ``member_retention_s`` by its own monotonic clock; returns how many it deleted. A row
        that changed since this node read it is left alone, so a member that came back (or
        that another node pruned and that joined again) keeps its row."""
        pruned = 0
        for member in list(self.members.values()):
            if member.node_id == self.node_id:
                continue
            if self.silence_s(member) <= self.config.member_retention_s:
                continue
            if await self.store.prune_member(
                member.node_id, member.incarnation, member.heartbeat_at_ms
            ):
                pruned += 1
                log.info(
                    "MemberPruned",
                    extra={"node_id": member.node_id, "incarnation": member.incarnation},
                )
        return pruned

    async def refresh_fresh(self) -> None:
        """A refresh that reads the table after this call began, shared by the callers that
        ask while it is being started (so a burst of callers costs one or two reads)."""
        task = self._refreshing
        if task is not None and not task.done():
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.get_running_loop().create_task(self.refresh())
        await asyncio.shield(task)

    def _recompute(self) -> None:
        live = {m.node_id for m in self.members.values() if self.live(m)}
        if live == set(self.ring.members):
            return
        previous = sorted(self.ring.members)
        self.ring = HashRing(live, virtual_nodes=self.config.virtual_nodes)
        self.ring_changes += 1
        log.info(
            "RingChanged",
            extra={"node_id": self.node_id, "members": sorted(live), "previous": previous},
        )
        self.on_change(self.ring)

    async def leave(self) -> None:
        """Mark this node ``leaving``: it drops out of every view (its own first)."""
        if self.state != "up":
            return
        # The table first: a node that reads it from now on no longer routes here, so what
        # this node forwards away is not bounced back (it recomputes its own view next).
        try:
            await self.store.heartbeat_member(
                self.node_id, self.incarnation, self.clock.wall_ms(), "leaving"
            )
        except StoreUnavailable as error:
            log.warning("MemberLeaveUnrecorded", extra={"error": str(error)})
        self.state = "leaving"
        self._recompute()

    async def depart(self) -> None:
        """Mark this node ``left`` (its last write to the table)."""
        if self.state not in {"up", "leaving"}:
            return
        self.state = "left"
        self._recompute()
        try:
            await self.store.heartbeat_member(
                self.node_id, self.incarnation, self.clock.wall_ms(), "left"
            )
        except StoreUnavailable as error:
            log.warning("MemberLeaveUnrecorded", extra={"error": str(error)})

    async def run(self) -> None:
        """Heartbeat and refresh every ``heartbeat_interval_s`` (until cancelled)."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            try:
                if self.state == "up":
                    await self.heartbeat()
                await self.refresh()
                if self.state == "up":
                    await self.prune()
            except StoreUnavailable as error:
                log.warning("MembershipRefreshFailed", extra={"error": str(error)})
                # The view ages on our clock even when the store is away: members whose
                # heartbeats we last saw too long ago leave it.
                self._recompute()
