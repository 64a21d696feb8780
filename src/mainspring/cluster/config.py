"""How a node takes part in a cluster: its address, the shared secret, the membership timings."""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

from mainspring.cluster.ring import DEFAULT_VIRTUAL_NODES
from mainspring.errors import UsageError

__all__ = ["SECRET_LENGTH_MIN", "ClusterConfig"]

SECRET_LENGTH_MIN: Final = 16
_ADDRESS: Final = re.compile(r"^[a-z][a-z0-9+.\-]*://[^\s/?#]+$")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise UsageError(f"{attribute.name} must be a number > 0, got {value!r}")


def _address(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise UsageError(
            f"address must be the base URL other nodes reach this node's gateway at, such as "
            f"'http://10.0.0.5:8080' (no path), got {value!r}"
        )


def _secret(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        not isinstance(value, str)
        or len(value) < SECRET_LENGTH_MIN
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise UsageError(
            f"the cluster secret must be at least {SECRET_LENGTH_MIN} printable characters "
            "without whitespace, the same on every node (and unlike any client token)"
        )


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """Settings of a node that runs in a cluster (``Node(cluster=ClusterConfig(...))``).

    Attributes:
        address: the base URL of this node's gateway as the other nodes reach it
            (``http://10.0.0.5:8080``); forwarded messages arrive there.
        secret: the shared secret of node-to-node calls (the same on every node).
        heartbeat_interval_s: how often the node heartbeats its membership row and re-reads
            the membership table.
        member_timeout_s: a member whose last heartbeat is older than this (by the reader's
            clock) is out of every view. At least twice ``heartbeat_interval_s``.
        member_retention_s: the row of a member this node has seen silent for this long is
            deleted from the membership table (so departed and crashed node ids do not pile
            up); more than ``member_timeout_s``. Its node id may join again later.
        forward_hops_max: how many times one message may be forwarded before the sender gets
            an error (views that disagree for longer than this many hops).
        forward_timeout_s: the longest a forwarded message is retried while its owner is
            unreachable or changing (an ``ask`` with a shorter timeout gives up sooner).
        virtual_nodes: points per member on the hash ring (the same on every node).
        transport: how forwarded messages travel (an ``HttpTransport`` over ``secret`` when
            None; the simulator passes its own).
    """

    address: str = attrs.field(validator=_address)
    secret: str = attrs.field(validator=_secret, repr=False)
    heartbeat_interval_s: float = attrs.field(default=1.0, validator=_positive)
    member_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    member_retention_s: float = attrs.field(default=3600.0, validator=_positive)
    forward_hops_max: int = attrs.field(default=4)
    forward_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    virtual_nodes: int = attrs.field(default=DEFAULT_VIRTUAL_NODES)
    transport: Any = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.member_timeout_s < 2 * self.heartbeat_interval_s:
            raise UsageError(
                f"member_timeout_s ({self.member_timeout_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}), or one slow heartbeat "
                "drops a healthy member"
            )
        if self.member_retention_s <= self.member_timeout_s:
            raise UsageError(
                f"member_retention_s ({self.member_retention_s}) must be more than "
                f"member_timeout_s ({self.member_timeout_s}): only a member out of every view "
                "may lose its row"
            )
        hops = self.forward_hops_max
        if isinstance(hops, bool) or not isinstance(hops, int) or not 1 <= hops <= 16:
            raise UsageError(f"forward_hops_max must be an int from 1 to 16, got {hops!r}")

    @property
    def member_timeout_ms(self) -> int:
        """``member_timeout_s`` in whole milliseconds."""
        return int(self.member_timeout_s * 1000)
