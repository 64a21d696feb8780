"""Activation cost of a long stream: from a snapshot at the head, and by a full replay.

Two actors each get ``--events`` events (written in chunks through the node, so the stream is
what an application would leave behind). One snapshots at every commit, so its head always has a
snapshot; the other never snapshots, so activating it replays every event. Each repetition forces
the actor to passivate (leases released), then times one read-only ``ask``: from the message
being sent to its reply, which covers the lease acquisition, the snapshot and event reads, the
decoding and ``evolve`` of every replayed event and the dedupe read. The node stays up between
repetitions, so connections are warm, as they are for an actor activated in a running service.

Usage: python bench/hydrate.py --store sqlite|postgres [--events 10000] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from _support import (
    NOTE,
    Fill,
    Read,
    ReplayRecorder,
    SnapshotRecorder,
    add_store_arguments,
    environment,
    fresh_database,
    median,
    open_store,
    postgres_version,
    print_result,
    rounded,
)

from mainspring import Actor, Node, NodeConfig
from mainspring.persistence.store import stream_id_of

_FILL_CHUNK = 1000
"""Events per filling command: one commit each."""

_ACTOR_ID = "long"


def _stream_of(actor_cls: type[Actor[Any]]) -> str:
    return stream_id_of(actor_cls.type_name, _ACTOR_ID)


async def passivate(node: Node, actor_cls: type[Actor[Any]]) -> None:
    """Make the live actor leave (snapshot rules aside) and wait until its lease is released."""
    activation = node.host.live.get(_stream_of(actor_cls))
    if activation is None:
        return
    activation.passivate_requested = True
    activation.wakeup.set()
    assert activation.task is not None
    await activation.task


async def fill(node: Node, actor_cls: type[Actor[Any]], events: int) -> None:
    """Give the actor ``events`` events, ``_FILL_CHUNK`` per command."""
    written = 0
    while written < events:
        count = min(_FILL_CHUNK, events - written)
        written = await node.ask(actor_cls, _ACTOR_ID, Fill(count, NOTE))
    assert written == events, (written, events)


async def timed_activations(
    node: Node, actor_cls: type[Actor[Any]], events: int, repeat: int
) -> list[float]:
    """Seconds from sending a message to a passivated actor to its reply, ``repeat`` times."""
    samples: list[float] = []
    for _ in range(repeat):
        await passivate(node, actor_cls)
        started = time.perf_counter()
        reply = await node.ask(actor_cls, _ACTOR_ID, Read())
        samples.append(time.perf_counter() - started)
        assert reply == events, (reply, events)
    return samples


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """Fill both actors on a fresh database, then time their activations."""
    events, repeat = arguments.events, arguments.repeat
    # Snapshots come only from snapshot_every (SnapshotRecorder: every commit; ReplayRecorder:
    # never), not from passivation, so the replaying actor never gains one.
    config = NodeConfig(snapshot_on_passivate=False)
    async with fresh_database(arguments.store, arguments.dsn, "hydrate") as where:
        store = open_store(arguments.store, where, arguments.sqlite_writer)
        node = Node(
            "bench-node", store=store, actors=[SnapshotRecorder, ReplayRecorder], config=config
        )
        async with node:
            for actor_cls in (SnapshotRecorder, ReplayRecorder):
                await fill(node, actor_cls, events)
            snapshot = await store.read_snapshot(_stream_of(SnapshotRecorder))
            assert snapshot is not None
            assert snapshot.seq == events, snapshot
            no_snapshot = await store.read_snapshot(_stream_of(ReplayRecorder))
            assert no_snapshot is None, no_snapshot
            replayed_before = node.host.statistics.events_replayed
            from_snapshot = await timed_activations(node, SnapshotRecorder, events, repeat)
            full_replay = await timed_activations(node, ReplayRecorder, events, repeat)
            replayed = node.host.statistics.events_replayed - replayed_before
            # Every full-replay activation read every event; the snapshot ones read none.
            assert replayed == repeat * events, (replayed, repeat, events)
            server_version = None
            if arguments.store == "postgres":
                server_version = await postgres_version(arguments.dsn)
    snapshot_s = median(from_snapshot)
    replay_s = median(full_replay)
    return {
        "store": arguments.store,
        "events": events,
        "repeat": repeat,
        "snapshot_activation_ms": rounded(snapshot_s * 1000),
        "full_replay_activation_ms": rounded(replay_s * 1000),
        "replay_events_per_s": round(events / replay_s),
        "snapshot_activation_samples_ms": [rounded(s * 1000) for s in from_snapshot],
        "full_replay_activation_samples_ms": [rounded(s * 1000) for s in full_replay],
        "environment": environment(arguments.store, server_version),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7, help="activations timed per case")
    arguments = parser.parse_args(argv)
    if arguments.events < 1 or arguments.repeat < 1:
        parser.error("--events and --repeat must be >= 1")
    result = asyncio.run(run(arguments))
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
