"""Membership views computed from the store's table, the cluster settings and the CLI options."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mainspring.cli.cluster import cluster_settings, lease_settings
from mainspring.cluster.config import ClusterConfig
from mainspring.cluster.membership import Membership
from mainspring.cluster.ring import HashRing
from mainspring.config import NodeConfig
from mainspring.errors import StoreUnavailable, UsageError
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.store import Member
from tests.cli.conftest import run_cli

SECRET = "0123456789abcdef-secret"
START_MS = 1_700_000_000_000


@attrs.define
class ManualClock:
    now_ms: int = START_MS
    wall_offset_ms: int = 0
    """How far the wall clock is off (the monotonic clock is not)."""

    def wall_ms(self) -> int:
        return self.now_ms + self.wall_offset_ms

    def monotonic_s(self) -> float:
        return self.now_ms / 1000


def config(port: int) -> ClusterConfig:
    return ClusterConfig(
        address=f"http://127.0.0.1:{port}",
        secret=SECRET,
        heartbeat_interval_s=1.0,
        member_timeout_s=5.0,
    )


async def test_views_converge_and_a_silent_member_leaves_every_view() -> None:
    store = MemoryStore()
    await store.open()
    clocks = [ManualClock(), ManualClock(), ManualClock()]
    changes: list[list[HashRing]] = [[], [], []]
    views = [
        Membership(f"n{i}", store, clocks[i], config(9000 + i), changes[i].append) for i in range(3)
    ]
    for view in views:
        await view.join()
    for view in views:
        await view.refresh()
    assert all(set(view.ring.members) == {"n0", "n1", "n2"} for view in views)
    assert all(view.addresses["n1"] == "http://127.0.0.1:9001" for view in views)
    # n2 stops heartbeating; the others keep going; past the timeout it leaves their views.
    for clock in clocks:
        clock.now_ms += 5_000
    for view in views[:2]:
        assert await view.heartbeat()
        await view.refresh()
    assert all(set(view.ring.members) == {"n0", "n1", "n2"} for view in views[:2])
    for clock in clocks:
        clock.now_ms += 1
    for view in views[:2]:
        assert await view.heartbeat()
        await view.refresh()
    assert all(set(view.ring.members) == {"n0", "n1"} for view in views[:2])
    assert [set(ring.members) for ring in changes[0]] == [
        {"n0"},
        {"n0", "n1", "n2"},
        {"n0", "n1"},
    ]
    # A graceful leave drops out of every view at the next read, before any timeout.
    await views[1].leave()
    assert "n1" not in views[1].ring
    await views[0].refresh()
    assert set(views[0].ring.members) == {"n0"}
    await views[1].depart()
    [row] = [m for m in await store.list_members() if m.node_id == "n1"]
    assert row.state == "left"


async def test_a_restarted_node_supersedes_its_old_process() -> None:
    store = MemoryStore()
    await store.open()
    clock = ManualClock()
    old = Membership("n0", store, clock, config(9000))
    await old.join()
    new = Membership("n0", store, clock, config(9100))
    await new.join()
    assert new.incarnation == old.incarnation + 1
    assert not await old.heartbeat()
    assert old.state == "superseded"
    assert "n0" not in old.ring  # the old process owns nothing any more
    assert await new.heartbeat()
    assert new.addresses["n0"] == "http://127.0.0.1:9100"


class LateFirstJoin(MemoryStore):
    """A store that holds the first ``join_member`` back, reports it failed, and applies it
    only after the caller joined again: a request delivered late, after a partition."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[str, str, int, int]] = []

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        if not self.held:
            self.held.append((node_id, address, now_ms, after_incarnation))
            raise StoreUnavailable("partitioned: join_member held")
        return await super().join_member(node_id, address, now_ms, after_incarnation)

    async def deliver_late(self) -> Member | None:
        [held] = self.held
        return await super().join_member(*held)


async def test_a_join_that_reaches_the_store_late_does_not_supersede_the_node() -> None:
    store = LateFirstJoin()
    await store.open()
    clock = ManualClock()
    await Membership("n0", store, clock, config(9000)).join()  # an earlier process: row at 1
    view = Membership("n0", store, clock, config(9100))
    await view.join()  # the first try is held back; the second takes the next incarnation
    assert view.incarnation == START_MS + 1
    assert await store.deliver_late() is None  # the held try finds the row moved on
    assert await view.heartbeat()
    await view.refresh()
    assert view.state == "up"
    assert "n0" in view.ring


async def test_a_node_whose_clock_jumps_back_stays_in_every_view() -> None:
    # Readers judge liveness by the row changing; a heartbeat stamped earlier than the last
    # one must still change it, or the node would look dead until its clock caught up.
    store = MemoryStore()
    await store.open()
    clocks = [ManualClock(), ManualClock()]
    views = [Membership(f"n{i}", store, clocks[i], config(9000 + i)) for i in range(2)]
    for view in views:
        await view.join()
    clocks[1].wall_offset_ms = -60_000  # n1's wall clock jumps back a minute
    for _ in range(20):
        for clock in clocks:
            clock.now_ms += 1_000
        for view in views:
            assert await view.heartbeat()
        for view in views:
            await view.refresh()
            assert set(view.ring.members) == {"n0", "n1"}, view.node_id


async def test_a_member_silent_past_the_retention_loses_its_row_and_may_rejoin() -> None:
    store = MemoryStore()
    await store.open()
    clocks = [ManualClock(), ManualClock()]
    settings = attrs.evolve(config(9000), member_retention_s=60.0)
    views = [Membership(f"n{i}", store, clocks[i], settings) for i in range(2)]
    for view in views:
        await view.join()
    survivor, silent = views
    await survivor.refresh()
    for _ in range(12):  # n1 stops heartbeating; n0 goes on for 60 s
        for clock in clocks:
            clock.now_ms += 5_000
        assert await survivor.heartbeat()
        await survivor.refresh()
        assert await survivor.prune() == 0
    assert "n1" not in survivor.ring
    assert {m.node_id for m in await store.list_members()} == {"n0", "n1"}
    clocks[0].now_ms += 1_000
    assert await survivor.prune() == 1
    await survivor.refresh()
    assert set(survivor.members) == {"n0"}
    assert await survivor.prune() == 0  # nothing left to prune, its own row never
    # The old process, waking up, is not let back in; a new one under the id joins.
    assert not await silent.heartbeat()
    assert silent.state == "superseded"
    again = Membership("n1", store, clocks[1], settings)
    await again.join()
    assert again.incarnation > silent.incarnation
    await survivor.refresh()
    assert set(survivor.ring.members) == {"n0", "n1"}


def test_cluster_settings_are_validated() -> None:
    with pytest.raises(UsageError, match="at least 16"):
        ClusterConfig(address="http://a:1", secret="short")
    with pytest.raises(UsageError, match="base URL"):
        ClusterConfig(address="a:1/x", secret=SECRET)
    with pytest.raises(UsageError, match="twice"):
        ClusterConfig(
            address="http://a:1", secret=SECRET, heartbeat_interval_s=2, member_timeout_s=3
        )
    with pytest.raises(UsageError, match="forward_hops_max"):
        ClusterConfig(address="http://a:1", secret=SECRET, forward_hops_max=0)
    with pytest.raises(UsageError, match="member_retention_s"):
        ClusterConfig(address="http://a:1", secret=SECRET, member_retention_s=5.0)
    with pytest.raises(UsageError, match="member_retention_s must be a number"):
        ClusterConfig(address="http://a:1", secret=SECRET, member_retention_s=-1)


def test_node_command_cluster_options() -> None:
    assert cluster_settings(None, None, "127.0.0.1", 8080, None) is None
    settings = cluster_settings(SECRET, None, "127.0.0.1", 8080, 2.0)
    assert settings is not None
    assert settings.address == "http://127.0.0.1:8080"
    assert (settings.member_timeout_s, settings.heartbeat_interval_s) == (2.0, 0.4)
    advertised = cluster_settings(SECRET, "http://10.0.0.5:8080/", "0.0.0.0", 8080, None)
    assert advertised is not None
    assert advertised.address == "http://10.0.0.5:8080"
    with pytest.raises(UsageError, match="port 0 needs --advertise"):
        cluster_settings(SECRET, None, "127.0.0.1", 0, None)
    with pytest.raises(UsageError, match="wildcard"):
        cluster_settings(SECRET, None, "0.0.0.0", 8080, None)
    with pytest.raises(UsageError, match="need --cluster-secret"):
        cluster_settings(None, "http://a:1", "127.0.0.1", 8080, None)
    with pytest.raises(UsageError, match="differ from every client token"):
        cluster_settings(SECRET, None, "127.0.0.1", 8080, None, (SECRET,))
    lease = lease_settings(NodeConfig(), 3.0)
    assert (lease.lease_ttl_s, lease.lease_renew_interval_s) == (3.0, 1.0)
    with pytest.raises(UsageError, match="--lease-ttl"):
        lease_settings(NodeConfig(), 0)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--advertise", "http://127.0.0.1:9"], "need --cluster-secret"),
        (["--cluster-secret", "short"], "at least 16"),
        (["--cluster-secret", SECRET, "--listen", "127.0.0.1:0"], "port 0 needs --advertise"),
        (["--cluster-secret", SECRET, "--lease-ttl", "0"], "--lease-ttl"),
    ],
)
def test_bad_cluster_options_exit_with_one_line(
    tmp_path: Path, arguments: list[str], reason: str
) -> None:
    result = run_cli(
        [
            "node",
            "--app",
            "examples.orders.app",
            "--store",
            f"sqlite:///{tmp_path}/x.db",
            *arguments,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mainspring node: error: "), line
    assert reason in line, line
