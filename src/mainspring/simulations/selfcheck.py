"""The simulator checks itself: built-in scenarios must catch deliberately broken variants.

A checker that never fails proves nothing. ``run_self_check()`` runs a built-in scenario (a
tally actor served by two nodes over one faulty store, with crashes, clock jumps past the lease
TTL and clients that retry with the same message id) against three variants that each remove
one guard, and reports, for each, the first seed whose run failed with the invariant that guard
protects:

- ``fencing-off``: a store that rewrites each append to the stream's current epoch, so a deposed
  owner's write commits (*no stale-epoch commit*);
- ``dedupe-off``: a store that drops dedupe records and reads none back, so a retried message
  is applied twice (*no message applied twice*);
- ``reply-before-commit``: a host that answers a request before its events are committed, so an
  acknowledged event can be lost to a failed commit or a crash (*no acknowledged event lost*).

The same scenario over the real stores is one of the suites (``tally``), which must pass every
seed: the variants fail because of the guard they remove, not because the scenario is wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import attrs

import mainspring
from mainspring import ActorContext, NodeConfig, handler
from mainspring.errors import (
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    StoreUnavailable,
)
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.store import (
    AppendRequest,
    AppendResult,
    DedupeRecord,
    Store,
    stream_id_of,
)
from mainspring.simulations.campaign import SeedRun, run_seed
from mainspring.simulations.faults import FaultyStore
from mainspring.simulations.scenario import ProfilePolicy, Scenario
from mainspring.simulations.world import NodeDown

if TYPE_CHECKING:
    from mainspring.node import Node
    from mainspring.simulations.world import World

__all__ = [
    "VARIANTS",
    "BrokenVariant",
    "DedupeOffStore",
    "FencingOffStore",
    "SelfCheckResult",
    "Tally",
    "run_self_check",
    "tally_scenario",
]

# The tally actor ------------------------------------------------------------------------------


@mainspring.event("mainspring.selfcheck.counted", version=1)
@attrs.frozen
class Counted:
    token: str


@mainspring.message("mainspring.selfcheck.count")
@attrs.frozen
class Count:
    token: str


@mainspring.state("mainspring.selfcheck.tally", version=1)
@attrs.frozen
class TallyState:
    count: int = 0
    checksum: int = 0


def _mix(checksum: int, token: str) -> int:
    for character in token:
        checksum = (checksum * 31 + ord(character)) % 1_000_000_007
    return checksum


class Tally(mainspring.Actor[TallyState]):
    """Counts tokens: each ``Count`` is one event, and the reply is the event's seq."""

    type_name = "mainspring-selfcheck-tally"
    initial_state = TallyState()
    snapshot_every = 5
    dedupe_window = 100_000

    @handler
    def count(self, ctx: ActorContext[TallyState], message: Count) -> int:
        ctx.emit(Counted(message.token))
        return ctx.state.count

    def evolve(self, state: TallyState, event: Counted) -> TallyState:
        return TallyState(state.count + 1, _mix(state.checksum, event.token))


# Broken stores ---------------------------------------------------------------------------------


class _Delegating:
    """A store that delegates everything it does not define to a ``MemoryStore``."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FencingOffStore(_Delegating):
    """Broken on purpose: rewrites each append to the stream's current epoch before the real
    store checks it, so a deposed owner's write commits when its seq fits."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        rewritten = []
        for request in requests:
            if request.claim is not None:  # creating the stream: there is no epoch to skip
                rewritten.append(request)
                continue
            head = await self.inner.read_head(request.stream_id)
            epoch = request.epoch if head is None else head.epoch
            rewritten.append(attrs.evolve(request, epoch=epoch))
        return await self.inner.append_batch(rewritten)


class DedupeOffStore(_Delegating):
    """Broken on purpose: drops every dedupe record and reads none back, so a fresh activation
    has forgotten every message id it accepted."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        return await self.inner.append_batch(
            [attrs.evolve(request, dedupe=()) for request in requests]
        )

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        return []


# The scenario ----------------------------------------------------------------------------------

CONFIG: Final = NodeConfig(
    lease_ttl_s=10.0,
    lease_renew_interval_s=3.0,
    timer_poll_interval_s=3600.0,
    outbox_poll_interval_s=3600.0,
    outbox_retry_interval_s=1.0,
    idle_timeout_s=600.0,
)
RETRYABLE: Final = (
    StoreUnavailable,
    Fenced,
    ConcurrencyConflict,
    LeaseHeld,
    NodeClosed,
    NodeDown,
    TimeoutError,
)
"""What a client of the tally may see and retry with the same message id."""
_ASK_TIMEOUT_S: Final = 2.0


def _memory(world: World) -> Store:
    return world.memory_store()


def tally_scenario(
    name: str = "tally",
    *,
    make_inner: Callable[[World], Store] = _memory,
    reply_before_commit: bool = False,
    nodes: Sequence[str] = ("a", "b"),
    tokens: int = 30,
    tallies: int = 2,
    duration_s: float = 0.4,
    rehydrate: bool = False,
    profile: ProfilePolicy | None = None,
    sometimes: Sequence[str] = (),
    seeds: int = 200,
) -> Scenario:
    """Two nodes count tokens on ``tallies`` tally actors over one faulty store.

    Safety phase: clients send each token (its message id is the token) to a node picked at
    random and retry failures twice with a virtual backoff, acknowledging each answer in the
    store history; a nemesis crashes and restarts nodes, and jumps a node's clock past the lease
    TTL (it steals the other's leases, which makes the other a zombie). Settle: every token not
    yet acknowledged is retried until it is. Then every checker runs.

    Args:
        name: the scenario's name.
        make_inner: the store that keeps the data (a broken one for the self-check).
        reply_before_commit: run the hosts broken: replies leave before the commit.
        nodes: the node names (one node: no lease theft, only crashes).
        tokens: tokens sent in the safety phase.
        tallies: how many tally actors share them.
        duration_s: the virtual seconds over which clients send their tokens and the nemesis
            strikes (time-based faults such as clock jumps and partitions need minutes).
        rehydrate: after settling, crash and restart every node and count one more token per
            tally, so each tally is rebuilt from its snapshot and log, and the checkers compare
            that state with a full replay.
        profile: the scenario's fault policy (``FaultProfile.swarm`` if None).
        sometimes: the ``world.sometimes`` targets a campaign expects to fire.
        seeds: the default seed budget.
    """
    names = tuple(nodes)
    if not names:
        raise ValueError("tally_scenario needs at least one node")
    state: dict[str, Any] = {}

    def tweak(node: Node) -> Node:
        node.host.reply_before_commit = reply_before_commit
        return node

    async def ask_once(world: World, node: str, tally: str, token: str) -> int | None:
        store = cast("FaultyStore", state["store"])
        if world.node_state(node) == "running":  # a crash point's restart made a new node
            tweak(world.node(node))
        try:
            seq = await world.ask(
                node, Tally, tally, Count(token), message_id=token, timeout_s=_ASK_TIMEOUT_S
            )
        except RETRYABLE as error:
            world.record("count.failed", f"{tally}:{token} {type(error).__name__}")
            return None
        assert isinstance(seq, int), seq
        store.history.acknowledge(stream_id_of(Tally.type_name, tally), token, seq)
        world.record("count.ok", f"{tally}:{token} seq={seq}")
        return seq

    async def run(world: World) -> dict[str, int]:
        store = world.faulty_store(make_inner(world))
        state.clear()
        state["store"] = store
        for node in names:
            tweak(await world.start_node(node, [Tally], store, config=CONFIG))
        ttl_ms = int(world.profile.node_config(CONFIG).lease_ttl_s * 1000)
        work = [(f"t{index % tallies}", f"k{index}") for index in range(tokens)]
        acknowledged: set[str] = set()
        state["work"] = work
        state["acknowledged"] = acknowledged

        def any_node() -> str:
            return names[world.random.randint(0, len(names) - 1)]

        async def client(tally: str, token: str, start_s: float) -> None:
            await asyncio.sleep(start_s)
            for attempt in range(3):
                if await ask_once(world, any_node(), tally, token) is not None:
                    acknowledged.add(token)
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

        async def nemesis() -> None:
            for _ in range(world.random.randint(1, 4)):
                await world.sleep(world.random.randint(1, spread_ms) / 1000)
                victim = any_node()
                if world.node_state(victim) != "running":
                    continue  # a crash point took it down: the world restarts it
                if len(names) > 1 and world.random.chance(0.5):
                    jump_ms = ttl_ms + world.random.randint(1, 5_000)
                    world.clock(victim).jump(jump_ms)
                    world.record("nemesis.jump", f"{victim} +{jump_ms}ms")
                else:
                    world.crash(victim)
                    await world.sleep(world.random.randint(0, 100) / 1000)
                    if world.node_state(victim) in {"crashed", "stopped"}:
                        tweak(await world.restart(victim))

        spread_ms = max(1, int(duration_s * 1000))
        clients = [
            asyncio.create_task(client(tally, token, world.random.randint(0, spread_ms) / 1000))
            for tally, token in work
        ]
        await nemesis()
        await asyncio.gather(*clients)
        return {"acknowledged_in_safety": len(acknowledged)}

    async def settle(world: World) -> None:
        work: list[tuple[str, str]] = state["work"]
        acknowledged: set[str] = state["acknowledged"]
        for tally, token in work:
            attempt = 0
            while token not in acknowledged:
                # Alternate nodes: one may refuse with LeaseHeld until the other's lease expires.
                if await ask_once(world, names[attempt % len(names)], tally, token) is not None:
                    acknowledged.add(token)
                    break
                attempt += 1
                await asyncio.sleep(0.1 * (1 + attempt % 5))
        if not rehydrate:
            return
        for node in names:
            if world.node_state(node) in {"starting", "running", "stopping"}:
                world.crash(node)
            tweak(await world.restart(node))
        for tally in sorted({tally for tally, _ in work}):
            attempt = 0
            while (
                await ask_once(world, names[attempt % len(names)], tally, f"probe-{tally}") is None
            ):
                attempt += 1
                await asyncio.sleep(0.1 * (1 + attempt % 5))

    return Scenario(
        name=name,
        run=run,
        settle=settle,
        liveness_s=600.0,
        profile=profile,
        sometimes=tuple(sometimes),
        seeds=seeds,
        description="two nodes count tokens under crashes, clock jumps and store faults",
    )


# The self-check -----------------------------------------------------------------------------


def _fencing_off(world: World) -> Store:
    return cast("Store", FencingOffStore())


def _dedupe_off(world: World) -> Store:
    return cast("Store", DedupeOffStore())


@attrs.frozen
class BrokenVariant:
    """A variant with one guard removed and the invariant that must catch it."""

    name: str
    description: str
    invariant: str
    scenario: Callable[[], Scenario]


VARIANTS: Final = (
    BrokenVariant(
        "fencing-off",
        "appends are not checked against the lease epoch",
        "no stale-epoch commit",
        lambda: tally_scenario("selfcheck:fencing-off", make_inner=_fencing_off),
    ),
    BrokenVariant(
        "dedupe-off",
        "message ids are not deduplicated",
        "no message applied twice",
        lambda: tally_scenario("selfcheck:dedupe-off", make_inner=_dedupe_off),
    ),
    BrokenVariant(
        "reply-before-commit",
        "the host replies before its events are committed",
        "no acknowledged event lost",
        lambda: tally_scenario("selfcheck:reply-before-commit", reply_before_commit=True),
    ),
)


@attrs.frozen
class SelfCheckResult:
    """How one broken variant fared.

    Attributes:
        variant: the variant's name.
        invariant: the invariant expected to catch it.
        caught_by: the first seed that failed with that invariant (None: it survived).
        seeds_run: how many seeds ran.
        other_failures: seeds that failed with another invariant meanwhile, ``seed: name``.
        run: the catching seed's run, for its report.
    """

    variant: str
    invariant: str
    caught_by: int | None
    seeds_run: int
    other_failures: tuple[str, ...]
    run: SeedRun | None

    @property
    def caught(self) -> bool:
        """Whether a seed caught the variant within the budget."""
        return self.caught_by is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "variant": self.variant,
            "invariant": self.invariant,
            "caught_by_seed": self.caught_by,
            "seeds_run": self.seeds_run,
            "other_failures": list(self.other_failures),
        }


def run_self_check(
    seeds: int = 100, *, variants: Sequence[BrokenVariant] = VARIANTS
) -> list[SelfCheckResult]:
    """Run each broken variant for up to ``seeds`` seeds, stopping at the first seed that
    fails with the variant's invariant."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds!r}")
    results = []
    for variant in variants:
        scenario = variant.scenario()
        caught: SeedRun | None = None
        others: list[str] = []
        ran = 0
        for seed in range(seeds):
            run = run_seed(scenario, seed, target=f"--self-check {variant.name}")
            ran += 1
            if run.failure is None:
                continue
            if run.failure.invariant == variant.invariant:
                caught = run
                break
            others.append(f"{seed}: {run.failure.invariant}")
        results.append(
            SelfCheckResult(
                variant=variant.name,
                invariant=variant.invariant,
                caught_by=None if caught is None else caught.seed,
                seeds_run=ran,
                other_failures=tuple(others),
                run=caught,
            )
        )
    return results
