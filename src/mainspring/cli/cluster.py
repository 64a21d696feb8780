"""``mainspring cluster status``, and the cluster options of ``mainspring node``.

``mainspring cluster status --url http://127.0.0.1:8081`` prints the members of the cluster as
that node sees them (``GET /v1/cluster``): state, liveness, heartbeat age, share of the keys.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs
import click

from mainspring.cli._client import DEFAULT_URL, TOKEN_ENVIRONMENT, URL_ENVIRONMENT, Client
from mainspring.cluster.config import ClusterConfig
from mainspring.config import NodeConfig
from mainspring.errors import UsageError

__all__ = ["CLUSTER_SECRET_ENVIRONMENT", "cluster", "cluster_settings", "lease_settings"]

CLUSTER_SECRET_ENVIRONMENT: Final = "MAINSPRING_CLUSTER_SECRET"  # noqa: S105 (a variable name)
_HEARTBEATS_PER_TIMEOUT: Final = 5


def lease_settings(config: NodeConfig, lease_ttl_s: float | None) -> NodeConfig:
    """``config`` with ``--lease-ttl`` applied (renewed three times per lease).

    Raises:
        UsageError: the TTL is not a positive number of seconds.
    """
    if lease_ttl_s is None:
        return config
    if not lease_ttl_s > 0 or lease_ttl_s > 3600:
        raise UsageError(f"--lease-ttl must be in (0, 3600] seconds, got {lease_ttl_s}")
    return attrs.evolve(config, lease_ttl_s=lease_ttl_s, lease_renew_interval_s=lease_ttl_s / 3)


def cluster_settings(
    secret: str | None,
    advertise: str | None,
    host: str,
    port: int,
    member_timeout_s: float | None,
    tokens: tuple[str, ...] = (),
) -> ClusterConfig | None:
    """The cluster settings of ``mainspring node``'s options; None without a secret.

    Raises:
        UsageError: an option is malformed, or cluster options are given without a secret.
    """
    if secret is None:
        if advertise is not None or member_timeout_s is not None:
            raise UsageError(
                f"--advertise and --member-timeout need --cluster-secret (or "
                f"${CLUSTER_SECRET_ENVIRONMENT}): without a secret the node runs alone"
            )
        return None
    if secret in tokens:
        raise UsageError("the cluster secret must differ from every client token")
    if advertise is None:
        if port == 0:
            raise UsageError(
                "--listen with port 0 needs --advertise URL: the other nodes must know where "
                "this node listens"
            )
        if host in {"0.0.0.0", "::", ""}:  # noqa: S104 (comparing, not binding)
            raise UsageError(
                f"--listen on {host!r} needs --advertise URL: the other nodes need an address "
                "they can reach, not the wildcard"
            )
        shown = f"[{host}]" if ":" in host else host
        advertise = f"http://{shown}:{port}"
    options: dict[str, Any] = {}
    if member_timeout_s is not None:
        if not 0 < member_timeout_s <= 600:
            raise UsageError(
                f"--member-timeout must be in (0, 600] seconds, got {member_timeout_s}"
            )
        options["member_timeout_s"] = member_timeout_s
        options["heartbeat_interval_s"] = member_timeout_s / _HEARTBEATS_PER_TIMEOUT
    return ClusterConfig(address=advertise.rstrip("/"), secret=secret, **options)


@click.group()
def cluster() -> None:
    """Look at the cluster a node belongs to."""


@cluster.command("status")
@click.option(
    "--url",
    envvar=URL_ENVIRONMENT,
    default=DEFAULT_URL,
    show_default=True,
    help=f"Any node's base URL (${URL_ENVIRONMENT}).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENVIRONMENT,
    default=None,
    help=f"The bearer token (${TOKEN_ENVIRONMENT}).",
)
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
def status(url: str, token: str | None, timeout_s: float, as_json: bool) -> None:
    """Members of the cluster as the node at --url sees them."""
    view = Client(url, token, timeout_s).call("GET", "/v1/cluster")
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    click.echo(
        f"node {view['node_id']} (incarnation {view['incarnation']}, {view['state']}); "
        f"ring: {', '.join(view['ring']) or '-'}; ring changes: {view['ring_changes']}"
    )
    rows = [("NODE", "STATE", "LIVE", "HEARTBEAT", "SHARE", "ADDRESS", "INCARNATION")]
    for member in view["members"]:
        rows.append(
            (
                member["node_id"],
                member["state"],
                "yes" if member["live"] else "no",
                "-"
                if member["heartbeat_age_ms"] is None
                else f"{member['heartbeat_age_ms'] / 1000:.1f}s ago",
                f"{member['share'] * 100:.1f}%",
                member["address"],
                str(member["incarnation"]),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    routing = view.get("routing", {})
    click.echo(" ".join(f"{name}={value}" for name, value in routing.items()))
