"""Scenarios under store faults, and the two-node zombie and dedupe scenarios whose broken-store
variants the checkers must catch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mainspring.errors import (
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    StoreUnavailable,
)
from mainspring.persistence.store import Store, stream_id_of
from mainspring.simulations import (
    FaultyStore,
    InvariantViolation,
    NodeDown,
    StoreFaults,
    World,
    run_checks,
)
from mainspring.simulations.seeds import substream
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Add, Ledger

RETRYABLE = (
    StoreUnavailable,
    Fenced,
    ConcurrencyConflict,
    LeaseHeld,
    NodeClosed,
    NodeDown,
    TimeoutError,
)
"""What a client of the ledger may see and retry with the same message id."""

SAFETY_ATTEMPTS = 2
LIVENESS_ATTEMPTS = 30
ASK_TIMEOUT_S = 2.0


def profile_for(seed: int) -> StoreFaults:
    """The fault profile of a seed (a swarm: every seed gets its own rates, some none at all)."""
    stream = substream(seed, "profile")
    return StoreFaults(
        error_before_commit=stream.choice([0.0, 0.05, 0.1, 0.2]),
        lost_ack=stream.choice([0.0, 0.05, 0.1, 0.2]),
        latency_ms_min=0,
        latency_ms_max=stream.choice([0, 2, 10, 30]),
    )


def ledger_stream(ledger: str) -> str:
    """The stream id of ledger ``ledger``."""
    return stream_id_of(Ledger.type_name, ledger)


async def add_once(
    world: World, store: FaultyStore, node: str, ledger: str, token: str
) -> int | None:
    """One ``Add`` ask with ``token`` as message id; records the acknowledgement.

    Returns the event's seq (the ledger's reply is its count), or None on a retryable failure.
    """
    try:
        seq = await world.ask(
            node, Ledger, ledger, Add(token), message_id=token, timeout_s=ASK_TIMEOUT_S
        )
    except RETRYABLE as error:
        world.record("add.failed", f"{ledger}:{token} {type(error).__name__}")
        return None
    assert isinstance(seq, int), seq
    store.history.acknowledge(ledger_stream(ledger), token, seq)
    world.record("add.ok", f"{ledger}:{token} seq={seq}")
    return seq


def ledger_under_faults(
    profile: StoreFaults, *, kind: str = "memory", tokens: int = 40, ledgers: int = 2
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """A ledger load under store faults and crashes, then a liveness phase with faults healed.

    Safety phase: clients send ``Add`` asks (their token is the message id) at seeded times and
    retry failures a few times with a virtual backoff, while a nemesis crashes and restarts the
    node at seeded moments. Liveness phase: faults off; every token not yet acknowledged is
    retried until it is. Then every checker runs.
    """

    async def scenario(world: World) -> dict[str, Any]:
        inner: Store = world.memory_store() if kind == "memory" else world.sqlite_store()
        store = world.faulty_store(inner, profile)
        world.record("faults", profile.describe())
        await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        work = [(f"l{index % ledgers}", f"t{index}") for index in range(tokens)]
        acknowledged: dict[str, int] = {}

        async def client(ledger: str, token: str, start_s: float) -> None:
            await asyncio.sleep(start_s)
            for attempt in range(SAFETY_ATTEMPTS):
                if await add_once(world, store, "n1", ledger, token) is not None:
                    acknowledged[token] = attempt
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

        async def nemesis() -> int:
            crashes = world.random.randint(0, 3)
            for _ in range(crashes):
                await world.sleep(world.random.randint(1, 300) / 1000)
                world.crash("n1")
                await world.sleep(world.random.randint(0, 100) / 1000)
                await world.restart("n1")
            return crashes

        clients = [
            asyncio.create_task(client(ledger, token, world.random.randint(0, 400) / 1000))
            for ledger, token in work
        ]
        crashes = await nemesis()
        await asyncio.gather(*clients)
        acked_in_safety = len(acknowledged)

        # Liveness: the faults heal, and a client that keeps retrying gets every token in.
        store.faults_enabled = False
        world.record("faults.healed")
        for ledger, token in work:
            for _ in range(LIVENESS_ATTEMPTS):
                if token in acknowledged:
                    break
                if await add_once(world, store, "n1", ledger, token) is not None:
                    acknowledged[token] = -1
                    break
                await asyncio.sleep(0.1)
            else:
                raise InvariantViolation(f"no liveness: {ledger}:{token} never acknowledged")
        await run_checks(world)
        logged = {
            ledger: [e.message_id for e in await store.inner.read_events(ledger_stream(ledger))]
            for ledger in sorted({ledger for ledger, _ in work})
        }
        expected = {
            ledger: sorted(token for owner, token in work if owner == ledger) for ledger in logged
        }
        assert {ledger: sorted(ids) for ledger, ids in logged.items()} == expected, logged
        node = world.node("n1")
        return {
            "crashes": crashes,
            "acked_in_safety": acked_in_safety,
            "acked_in_liveness": len(acknowledged) - acked_in_safety,
            "faults": dict(store.history.faults),
            "ambiguous": sum(1 for a in store.history.appends if a.outcome == "ambiguous"),
            "duplicates": node.host.statistics.duplicates,
        }

    return scenario


# Two nodes and a zombie --------------------------------------------------------------------

SLOW_LINK = StoreFaults(latency_ms_min=100, latency_ms_max=100)
"""Node b's calls to the store each take 100 ms: its hydration and first append are slow, which
leaves the deposed node a's write a window to land after b's lease grant."""


def zombie_scenario(
    make_inner: Callable[[World], Store],
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """Node a owns ledger z; b's clock jumps past the lease TTL, so b takes the lease; a, still
    believing it owns z, handles a message and appends. The real store fences a's write."""

    async def scenario(world: World) -> dict[str, Any]:
        store = world.faulty_store(make_inner(world), node_profiles={"b": SLOW_LINK})
        await world.start_node("a", [Ledger], store, config=SIM_CONFIG)
        await world.start_node("b", [Ledger], store, config=SIM_CONFIG)
        assert await add_once(world, store, "a", "z", "a-1") == 1
        # Clock skew: b believes a's lease ran out long ago.
        world.clock("b").jump(SIM_CONFIG.lease_ttl_ms + 1_000)
        b_first = asyncio.create_task(add_once(world, store, "b", "z", "b-1"))
        await world.sleep(0.15)  # b's grant lands at +100 ms; its append at about +500 ms
        grant = store.history.leases[-1]
        assert (grant.owner, grant.epoch) == ("b", 2), grant
        zombie_seq = await add_once(world, store, "a", "z", "a-2")
        b_seq = await b_first
        for _ in range(5):  # b's first append conflicts when a's stale write got in
            if b_seq is not None:
                break
            b_seq = await add_once(world, store, "b", "z", "b-1")
        assert b_seq is not None
        await run_checks(world)
        return {"zombie_seq": zombie_seq, "b_seq": b_seq}

    return scenario


def duplicate_scenario(
    make_inner: Callable[[World], Store], retry_after: str
) -> Callable[[World], Awaitable[dict[str, Any]]]:
    """A client retries a message with the same id after a lost acknowledgement or after a
    crash and restart of the node; the store's dedupe records make it a no-op."""
    assert retry_after in {"lost_ack", "crash"}, retry_after

    async def scenario(world: World) -> dict[str, Any]:
        store = world.faulty_store(make_inner(world))
        await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        assert await add_once(world, store, "n1", "d", "m-0") == 1
        if retry_after == "lost_ack":
            store.inject_next("lost_ack")
            assert await add_once(world, store, "n1", "d", "m-1") is None  # committed, unacked
        else:
            assert await add_once(world, store, "n1", "d", "m-1") == 2
            world.crash("n1")
            await world.restart("n1")
        retried = await add_once(world, store, "n1", "d", "m-1")
        await run_checks(world)
        return {"retried_seq": retried}

    return scenario


def two_nodes_under_faults(
    profile: StoreFaults, *, tokens: int = 40, ledgers: int = 2
) -> Callable[[World], Awaitable[dict[str, int]]]:
    """Two nodes serve the same ledgers over one faulty store while a nemesis crashes them and
    jumps their clocks past the lease TTL (so one steals the other's leases and the deposed
    owner becomes a zombie); clients send each attempt to a node picked at random. Then the
    faults heal, every token is retried until acknowledged, and every checker runs.

    Returns how many appends the callers were told ended each way (``ok``, ``fenced``, ...).
    """
    nodes = ("a", "b")

    async def scenario(world: World) -> dict[str, int]:
        store = world.faulty_store(world.memory_store(), profile)
        world.record("faults", profile.describe())
        for name in nodes:
            await world.start_node(name, [Ledger], store, config=SIM_CONFIG)
        work = [(f"l{index % ledgers}", f"t{index}") for index in range(tokens)]
        acknowledged: set[str] = set()

        def any_node() -> str:
            return nodes[world.random.randint(0, len(nodes) - 1)]

        async def client(ledger: str, token: str, start_s: float) -> None:
            await asyncio.sleep(start_s)
            for attempt in range(SAFETY_ATTEMPTS + 1):
                if await add_once(world, store, any_node(), ledger, token) is not None:
                    acknowledged.add(token)
                    return
                await asyncio.sleep(0.05 * (attempt + 1))

        async def nemesis() -> None:
            for _ in range(world.random.randint(1, 4)):
                await world.sleep(world.random.randint(1, 300) / 1000)
                victim = any_node()
                if world.random.chance(0.5):
                    skew_ms = SIM_CONFIG.lease_ttl_ms + world.random.randint(1, 5_000)
                    world.clock(victim).jump(skew_ms)
                else:
                    world.crash(victim)
                    await world.sleep(world.random.randint(0, 100) / 1000)
                    await world.restart(victim)

        clients = [
            asyncio.create_task(client(ledger, token, world.random.randint(0, 400) / 1000))
            for ledger, token in work
        ]
        await nemesis()
        await asyncio.gather(*clients)

        store.faults_enabled = False
        world.record("faults.healed")
        for ledger, token in work:
            for attempt in range(LIVENESS_ATTEMPTS):
                if token in acknowledged:
                    break
                # Alternate nodes: one may keep refusing with LeaseHeld until the lease expires.
                node = nodes[attempt % len(nodes)]
                if await add_once(world, store, node, ledger, token) is not None:
                    acknowledged.add(token)
                    break
                await asyncio.sleep(0.1 * (1 + attempt % 5))
            else:
                raise InvariantViolation(f"no liveness: {ledger}:{token} never acknowledged")
        await run_checks(world)
        outcomes: dict[str, int] = {}
        for append in store.history.appends:
            outcomes[append.outcome] = outcomes.get(append.outcome, 0) + 1
        return outcomes

    return scenario
