"""In-process cluster members for tests: real nodes with real gateways on loopback, one store."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import attrs

from mainspring import Node, NodeConfig
from mainspring.cluster.config import ClusterConfig
from mainspring.gateway import Gateway
from mainspring.persistence.store import Store
from tests.support.accounts import Account

SECRET = "test-cluster-secret-0123456789"

FAST = NodeConfig(
    lease_ttl_s=2.0,
    lease_renew_interval_s=0.5,
    timer_poll_interval_s=0.2,
    outbox_poll_interval_s=0.2,
    outbox_retry_interval_s=0.2,
    shutdown_timeout_s=5.0,
    workflow_recovery_interval_s=1.0,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define
class Member:
    node: Node
    gateway: Gateway

    async def stop(self) -> None:
        assert self.node.cluster is not None
        await self.node.cluster.leave()
        await self.gateway.stop(drain_timeout_s=5.0)
        await self.node.stop()


async def start_member(
    node_id: str, store: Store, *, actors: list[Any] | None = None, **node_options: Any
) -> Member:
    port = free_port()
    cluster = ClusterConfig(
        address=f"http://127.0.0.1:{port}",
        secret=SECRET,
        heartbeat_interval_s=0.2,
        member_timeout_s=1.0,
        forward_timeout_s=10.0,
    )
    node = Node(
        node_id,
        store=store,
        actors=actors if actors is not None else [Account],
        config=node_options.pop("config", FAST),
        cluster=cluster,
        **node_options,
    )
    gateway = Gateway(node)
    await gateway.start("127.0.0.1", port)
    await node.start()
    return Member(node, gateway)


async def converged(members: list[Member], timeout_s: float = 10.0) -> None:
    """Wait until every member's ring holds exactly the members given."""
    expected = {member.node.node_id for member in members}

    def done() -> bool:
        return all(
            m.node.cluster is not None and set(m.node.cluster.ring.members) == expected
            for m in members
        )

    await eventually(done, timeout_s, f"the views did not converge on {sorted(expected)}")


async def eventually(check: Callable[[], bool], timeout_s: float, message: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)
