"""Clusters in the simulator: nodes forward messages to each other over the simulated network.

``cluster_config(world, name)`` gives node ``name`` a ``ClusterConfig`` whose transport is a
``SimTransport``: a forwarded message crosses the world's network (partitions, drops,
duplicates, delays, lost replies) and runs in a task of the receiving node, so a crash of that
node cuts it short exactly as it would a real request. Membership, heartbeats and leases use
each node's simulated clock (skewed and drifting as the fault profile says)::

    await world.start_node("a", [Account], store, cluster=cluster_config(world, "a"))
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, final

from mainspring.cluster.config import ClusterConfig
from mainspring.cluster.routing import ForwardingFailed
from mainspring.simulations.loop import SimulationError
from mainspring.simulations.world import World

__all__ = ["SimTransport", "cluster_config"]

SECRET: Final = "simulated-cluster-secret"  # noqa: S105 (simulated nodes only)
_SCHEME: Final = "sim://"


def cluster_config(world: World, name: str, **options: Any) -> ClusterConfig:
    """The cluster settings of simulated node ``name`` (``options`` override the timings;
    heartbeats every 0.5 s, members out after 2 s of silence and their rows pruned after 10 s
    by default)."""
    options.setdefault("heartbeat_interval_s", 0.5)
    options.setdefault("member_timeout_s", 2.0)
    options.setdefault("member_retention_s", 10.0)
    options.setdefault("forward_timeout_s", 10.0)
    return ClusterConfig(
        address=f"{_SCHEME}{name}", secret=SECRET, transport=SimTransport(world), **options
    )


@final
class SimTransport:
    """Delivers forwarded messages between simulated nodes through the world's network."""

    def __init__(self, world: World) -> None:
        self._world = world

    def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def post(self, source: str, address: str, item: dict[str, Any]) -> dict[str, Any] | None:
        """See ``ForwardTransport.post``: None when the request was dropped or the target is
        down (nothing was accepted), or when the outcome is unknown and the message is resendable;
        ``ForwardingFailed`` when the reply was lost or the target crashed mid-request and the
        message cannot be sent again safely."""
        world = self._world
        assert address.startswith(_SCHEME), address
        target = address.removeprefix(_SCHEME)
        network = world.network
        fate = network.request_fate(source, target)
        delay_s = network.delay_s()
        if delay_s:
            await asyncio.sleep(delay_s)
        if fate == "drop" or world.node_state(target) != "running":
            return None
        outcome = await self._deliver(target, item)
        if fate == "duplicate":
            await self._deliver(target, item)
        if outcome is None or network.reply_lost(source, target):
            if item["resendable"]:
                world.sometimes("forward_outcome_lost_resent", str(item["actor_id"]))
                return None  # the receiver deduplicates it, or handling it twice is harmless
            raise ForwardingFailed(
                f"the reply of {target!r} to a forwarded message was lost: it may or may not "
                "have been handled"
            )
        return outcome

    async def _deliver(self, target: str, item: dict[str, Any]) -> dict[str, Any] | None:
        world = self._world

        async def accept() -> dict[str, Any]:
            cluster = world.node(target).cluster
            assert cluster is not None, f"node {target!r} does not run in a cluster"
            return await cluster.router.accept(dict(item))

        try:
            return await world.in_node(target, accept, "forward")
        except SimulationError:
            return None  # the target crashed (or was never up) while handling it
