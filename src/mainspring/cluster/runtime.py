"""A node's part in the cluster: its membership, its router, and the hand-offs between them."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final, final

from mainspring.cluster.config import ClusterConfig
from mainspring.cluster.membership import Membership
from mainspring.cluster.ring import HashRing
from mainspring.cluster.routing import Router
from mainspring.errors import UsageError

if TYPE_CHECKING:
    from mainspring.actors.host import ActorHost

__all__ = ["Cluster"]

log: Final = logging.getLogger(__name__)


@final
class Cluster:
    """Joins the cluster, keeps this node's view fresh, routes messages to their owners and
    hands actors off when ownership moves. Built by ``Node`` when given a ``ClusterConfig``.

    Args:
        host: the node's actor host (its store and clock are the cluster's too).
        config: the cluster settings.
    """

    def __init__(self, host: ActorHost, config: ClusterConfig) -> None:
        if not isinstance(config, ClusterConfig):
            raise UsageError(f"cluster must be a ClusterConfig, got {type(config).__name__}")
        self.host: Final = host
        self.config: Final = config
        self.node_id: Final = host.node_id
        self.membership: Final = Membership(
            host.node_id, host.store, host.clock, config, self._ring_changed
        )
        self.router: Final = Router(host, self.membership, config)
        self._task: asyncio.Task[None] | None = None
        self.ring_changed: Final = asyncio.Event()
        """Set at every ring change (the node then wakes the running workflows it gained)."""

    @property
    def ring(self) -> HashRing:
        """The current ring of this node's view."""
        return self.membership.ring

    async def start(self) -> None:
        """Join (a new incarnation), read the first view and start routing and heartbeats."""
        self.router.start()
        self.host.router = self.router
        await self.membership.join()
        self._task = asyncio.create_task(self.membership.run(), name="mainspring-membership")

    async def leave(self) -> None:
        """Leave gracefully: drop out of every view and hand every live actor off (each
        finishes its queued messages, snapshots and releases its lease). Messages that arrive
        from now on are forwarded to their new owners."""
        await self.membership.leave()

    async def stop(self) -> None:
        """After the host drained: stop heartbeats, record ``left``, close the router."""
        await self.membership.leave()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.router.close(self.host.config.shutdown_timeout_s)
        await self.membership.depart()
        self.host.router = None

    def _ring_changed(self, ring: HashRing) -> None:
        self.ring_changed.set()
        handed = self.host.hand_off()
        self.router.statistics.hand_offs += handed
        if handed:
            log.info("ActorsHandedOff", extra={"node_id": self.node_id, "actors": handed})

    def describe(self) -> dict[str, Any]:
        """Members, their state and key share, as this node sees them (``GET /v1/cluster``)."""
        shares = self.ring.shares()
        members = [
            {
                "node_id": member.node_id,
                "address": member.address,
                "incarnation": member.incarnation,
                "state": member.state,
                "live": self.membership.live(member),
                "heartbeat_age_ms": _age_ms(self.membership.silence_s(member)),
                "share": shares.get(member.node_id, 0.0),
            }
            for member in sorted(self.membership.members.values(), key=lambda m: m.node_id)
        ]
        statistics = self.router.statistics
        return {
            "node_id": self.node_id,
            "incarnation": self.membership.incarnation,
            "state": self.membership.state,
            "ring": sorted(self.ring.members),
            "ring_changes": self.membership.ring_changes,
            "members": members,
            "routing": {
                "forwarded": statistics.forwarded,
                "forward_retries": statistics.forward_retries,
                "forward_failures": statistics.forward_failures,
                "received": statistics.received,
                "hand_offs": statistics.hand_offs,
                "lease_waits": statistics.lease_waits,
                "forward_p50_ms": _percentile_ms(statistics.forward_latency_s, 0.50),
                "forward_p99_ms": _percentile_ms(statistics.forward_latency_s, 0.99),
            },
        }


def _age_ms(silence_s: float) -> int | None:
    return None if silence_s == float("inf") else int(silence_s * 1000)


def _percentile_ms(samples: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ``samples`` (seconds) in milliseconds; None if empty."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)
