"""Crash test with real processes: SIGKILL a node mid-load, then prove nothing acknowledged is lost.

A child process (``crash_child``) sends asks to a SQLite-backed node and logs every message it
sends and every reply it gets. The parent kills it with SIGKILL at a random moment, several times
over the same database, then checks on the store:

* every acknowledged event is there, at exactly the position its reply reported;
* every actor's sequence is gapless;
* resending every message ever sent (same message ids) applies none of them twice;
* state rebuilt from snapshot plus tail equals state rebuilt from the full log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import mainspring
from mainspring import Node
from mainspring.persistence.sqlite import SqliteStore
from mainspring.seams import SeededRandom
from tests.support.ledger import Add, Added, Ledger
from tests.support.processes import process_gone

REPOSITORY = Path(__file__).resolve().parents[2]
KILL_ROUNDS = 4

pytestmark = pytest.mark.slow


def run_child_and_kill(
    db_path: Path, log_path: Path, round_number: int, delay_s: float, writer: str = "thread"
) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.crash_child",
            str(db_path),
            str(log_path),
            str(round_number),
            writer,
        ],
        cwd=REPOSITORY,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready.startswith(b"ready "), (ready, child.stderr.read() if child.stderr else b"")
        writer_pid = int(ready.split()[1])
        assert (writer_pid != 0) == (writer == "process"), ready
        acked_before = log_path.read_bytes().count(b"\nA ") if log_path.exists() else 0
        # Kill at a random moment, but only once this round has acknowledged something.
        for _ in range(1000):
            if log_path.read_bytes().count(b"\nA ") > acked_before:
                break
            subprocess.run(["sleep", "0.01"], check=True)
        subprocess.run(["sleep", f"{delay_s:.3f}"], check=True)
        assert child.poll() is None, child.stderr.read() if child.stderr else b""
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    if writer_pid:
        # The writer process sees its channel close and exits by itself.
        for _ in range(500):
            if process_gone(writer_pid):
                break
            subprocess.run(["sleep", "0.02"], check=True)
        assert process_gone(writer_pid), f"writer process {writer_pid} outlived its node"


def parse_log(log_path: Path) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """Sent tokens by actor, and acknowledged tokens with the count their reply reported."""
    sent: dict[str, str] = {}
    acked: dict[str, tuple[str, int]] = {}
    for line in log_path.read_text().splitlines():
        parts = line.split(" ")
        if parts[0] == "S" and len(parts) == 3:
            sent[parts[2]] = parts[1]
        elif parts[0] == "A" and len(parts) == 4:
            acked[parts[2]] = (parts[1], int(parts[3]))
    return sent, acked


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path, writer: str) -> None:
    db_path = tmp_path / "crash.db"
    log_path = tmp_path / "messages.log"
    random = SeededRandom(20261121)
    for round_number in range(KILL_ROUNDS):
        run_child_and_kill(db_path, log_path, round_number, 0.05 + random.random() * 0.6, writer)

    sent, acked = parse_log(log_path)
    assert len(acked) > 100, f"the child acknowledged only {len(acked)} messages"

    store = SqliteStore(str(db_path))
    await store.open()
    logs: dict[str, list[str]] = {}
    for head in await store.list_streams():
        events = await store.read_events(head.stream_id)
        # Gapless and complete up to the head.
        assert [e.seq for e in events] == list(range(1, head.head_seq + 1)), head.stream_id
        logs[head.stream_id] = [
            mainspring.registry.decode(e.type_name, e.type_version, e.payload).token for e in events
        ]
    # Every acknowledged event is durable, at the very position its reply reported.
    for token, (actor, count) in acked.items():
        log = logs[f"test-ledger/{actor}"]
        assert len(log) >= count, (token, count, len(log))
        assert log[count - 1] == token, (token, count)
    # Nothing was applied twice, and nothing appeared that was never sent.
    for stream_id, tokens in logs.items():
        assert len(tokens) == len(set(tokens)), stream_id
        assert set(tokens) <= set(sent), stream_id
    await store.close()

    # Resend everything ever sent, with the same ids: each message applies exactly once.
    async with Node("crash-node", store=SqliteStore(str(db_path)), actors=[Ledger]) as node:
        by_actor: dict[str, list[str]] = defaultdict(list)
        for token, actor in sent.items():
            by_actor[actor].append(token)
        chunk = 500  # below the mailbox bound, which would refuse the rest with Overloaded
        for start in range(0, max(len(tokens) for tokens in by_actor.values()), chunk):
            await asyncio.gather(
                *(
                    node.ask(Ledger, actor, Add(token), message_id=token)
                    for actor, tokens in by_actor.items()
                    for token in tokens[start : start + chunk]
                )
            )
        hydrated = {stream_id: activation.state for stream_id, activation in node.host.live.items()}
    store = SqliteStore(str(db_path))
    await store.open()
    for head in await store.list_streams():
        stored = await store.read_events(head.stream_id)
        tokens = [
            mainspring.registry.decode(e.type_name, e.type_version, e.payload).token for e in stored
        ]
        actor = head.stream_id.split("/", 1)[1]
        assert sorted(tokens) == sorted(by_actor[actor]), head.stream_id
        # Snapshot + tail (what the node hydrated and then built) equals the full log's fold.
        assert hydrated[head.stream_id] == mainspring.replay(Ledger, stored), head.stream_id
    await store.close()


async def test_restart_rebuilds_from_snapshot_plus_tail_after_a_kill(tmp_path: Path) -> None:
    """After a SIGKILL, a node hydrates each actor from its snapshot plus tail, and that state
    equals the fold of the full log."""
    db_path = tmp_path / "crash.db"
    log_path = tmp_path / "messages.log"
    run_child_and_kill(db_path, log_path, 0, 0.3)
    store = SqliteStore(str(db_path))
    await store.open()
    expected = {}
    snapshots = 0
    for head in await store.list_streams():
        expected[head.stream_id] = mainspring.replay(
            Ledger, await store.read_events(head.stream_id)
        )
        snapshots += (await store.read_snapshot(head.stream_id)) is not None
    await store.close()
    assert snapshots > 0, "the load was too short to take any snapshot"
    async with Node("crash-node", store=SqliteStore(str(db_path)), actors=[Ledger]) as node:
        for stream_id, state in expected.items():
            actor = stream_id.split("/", 1)[1]
            count = await node.ask(Ledger, actor, Add(f"after-{actor}"))
            assert count == state.count + 1
            after = Ledger().evolve(state, Added(f"after-{actor}"))
            assert node.host.live[stream_id].state == after
        replayed = node.statistics()["host"]["events_replayed"]
    total = sum(state.count for state in expected.values())
    assert replayed < total, "hydration replayed the whole log instead of snapshot + tail"
