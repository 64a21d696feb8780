"""The cluster's HTTP routes: the node-to-node delivery endpoint and ``GET /v1/cluster``.

``POST /cluster/v1/deliver`` takes a message another node forwarded (see
``mainspring.cluster.routing``); it is authenticated by the shared cluster secret in the
``X-Mainspring-Cluster-Secret`` header, never by client bearer tokens. ``GET /v1/cluster`` shows
this node's view: members, their state and key share, and routing counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web

from mainspring.cluster.routing import SECRET_HEADER
from mainspring.gateway.errors import ApiError
from mainspring.gateway.spec import Call

if TYPE_CHECKING:
    from mainspring.gateway.handlers import Handlers

__all__ = ["cluster_status", "deliver_forwarded"]

_NOT_CLUSTERED: Final = "this node does not run in a cluster (start it with a cluster secret)"


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def deliver_forwarded(handlers: Handlers, call: Call) -> web.StreamResponse:
    """``POST /cluster/v1/deliver``: deliver a message forwarded by another node; the outcome
    (the reply, or the error, encoded) is the 200 answer."""
    cluster = handlers.node.cluster
    if cluster is None:
        raise ApiError(404, "not_found", _NOT_CLUSTERED)
    if not cluster.router.authentic(call.request.headers.get(SECRET_HEADER)):
        raise ApiError(
            401,
            "unauthorized",
            f"node-to-node calls need the cluster secret in the {SECRET_HEADER} header",
        )
    return _json(await cluster.router.accept(call.body))


async def cluster_status(handlers: Handlers, call: Call) -> web.StreamResponse:
    """``GET /v1/cluster``: this node's view of the cluster."""
    cluster = handlers.node.cluster
    if cluster is None:
        raise ApiError(404, "not_found", _NOT_CLUSTERED)
    return _json(cluster.describe())
