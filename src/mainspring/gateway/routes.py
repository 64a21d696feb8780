"""The route table of the gateway: the one place the HTTP API is declared.

``Gateway`` registers exactly these routes with aiohttp and validates requests from them, and
``openapi_document`` renders them: a route added here is served and documented together.
"""

from __future__ import annotations

from typing import Final

from mainspring.gateway.cluster import cluster_status, deliver_forwarded
from mainspring.gateway.handlers import (
    ID_LENGTH_MAX,
    NAME_LENGTH_MAX,
    WORKFLOW_STATUSES,
    Handlers,
)
from mainspring.gateway.spec import Body, BodyField, Handler, Param, Reply, Route

__all__ = ["LIMIT_MAX", "ROUTES", "WAIT_MAX_S"]

WAIT_MAX_S: Final = 60.0
"""The longest long poll of ``GET /v1/workflows/{id}?wait=``."""
LIMIT_MAX: Final = 1000
"""The largest page of a list or a history."""

_WORKFLOW_ID = "The workflow id (percent-encode '/' and other reserved characters)."
_ERRORS_READ = (401, 404, 422, 429, 503, 504)
_ERRORS_WRITE = (400, 401, 404, 408, 409, 413, 422, 429, 503, 504)


def _control(action: str, summary: str, handler: Handler, description: str) -> Route:
    return Route(
        "POST",
        f"/v1/workflows/{{id}}/{action}",
        f"{action}Workflow",
        summary,
        handler,
        "workflows",
        path_params={"id": _WORKFLOW_ID},
        body=Body(
            "An optional reason, recorded in the history.",
            (
                BodyField(
                    "reason",
                    "string",
                    "Why (recorded with the event).",
                    default="",
                    length_max=2000,
                    length_min=0,
                ),
            ),
            required=False,
        ),
        replies=(Reply(200, "Recorded; the workflow as it is now.", "Workflow"),),
        errors=_ERRORS_WRITE,
        description=description,
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "POST",
        "/v1/workflows/{type}",
        "startWorkflow",
        "Start a workflow (idempotent by id).",
        Handlers.start_workflow,
        "workflows",
        path_params={"type": "The registered workflow type name."},
        body=Body(
            "The workflow id and its input.",
            (
                BodyField(
                    "id",
                    "string",
                    "The workflow id: the idempotency key of the start.",
                    required=True,
                    length_max=ID_LENGTH_MAX,
                ),
                BodyField(
                    "input",
                    "any",
                    "The input, structured into the workflow's input type (null by default).",
                ),
            ),
        ),
        replies=(
            Reply(201, "Started: the start is durable.", "WorkflowStarted"),
            Reply(200, "Already started with the same type and input.", "WorkflowStarted"),
        ),
        errors=_ERRORS_WRITE,
        description=(
            "Returns once the start is durable. The same id with the same type and input "
            "answers 200 with the same id, type and run_id; with another type or input, 409."
        ),
    ),
    Route(
        "GET",
        "/v1/workflows",
        "listWorkflows",
        "List workflows from the instance index, by id.",
        Handlers.list_workflows,
        "workflows",
        query=(
            Param("type", "string", "Only workflows of this type."),
            Param("status", "string", "Only workflows with this status.", enum=WORKFLOW_STATUSES),
            Param("limit", "integer", "The most workflows returned.", 1, LIMIT_MAX, default=100),
            Param("cursor", "string", "The 'next' value of the previous page."),
        ),
        replies=(Reply(200, "A page of workflows.", "WorkflowList"),),
        errors=_ERRORS_READ,
        description=(
            "A page may hold fewer than 'limit' workflows (a 'type' filter examines at most "
            "2000 index rows per request) and still have a 'next' cursor: the list ends when "
            "'next' is null."
        ),
    ),
    Route(
        "GET",
        "/v1/workflows/{id}",
        "getWorkflow",
        "Describe a workflow: status, result or error, timestamps.",
        Handlers.get_workflow,
        "workflows",
        path_params={"id": _WORKFLOW_ID},
        query=(
            Param(
                "wait",
                "number",
                "Long poll: wait up to this many seconds for the workflow to close.",
                0,
                WAIT_MAX_S,
            ),
        ),
        replies=(Reply(200, "The workflow.", "Workflow"),),
        errors=_ERRORS_READ,
    ),
    Route(
        "POST",
        "/v1/workflows/{id}/signals/{name}",
        "signalWorkflow",
        "Send a signal (the JSON body is its payload).",
        Handlers.signal_workflow,
        "workflows",
        path_params={"id": _WORKFLOW_ID, "name": "The signal name."},
        body=Body("The signal's payload: any JSON value (empty: null).", schema={}),
        idempotency_key=True,
        replies=(Reply(202, "The signal is durably recorded.", "SignalAccepted"),),
        errors=_ERRORS_WRITE,
        description=(
            "With an Idempotency-Key, a signal the workflow already accepted under that key "
            "is not recorded again. A closed workflow answers 409 workflow_closed."
        ),
    ),
    Route(
        "GET",
        "/v1/workflows/{id}/queries/{name}",
        "queryWorkflow",
        "Ask a query handler of the workflow code (writes nothing).",
        Handlers.query_workflow,
        "workflows",
        path_params={"id": _WORKFLOW_ID, "name": "The query name."},
        query=(Param("args", "json", "The query's arguments: a URL-encoded JSON array."),),
        replies=(Reply(200, "The query's answer.", "QueryResult"),),
        errors=(400, *_ERRORS_READ, 409),
    ),
    _control(
        "cancel",
        "Request cancellation.",
        Handlers.cancel_workflow,
        "CancelledError is raised in the workflow code at its current await.",
    ),
    _control(
        "terminate",
        "End the workflow at once.",
        Handlers.terminate_workflow,
        "No code runs and nothing is compensated.",
    ),
    _control(
        "pause",
        "Pause: no step starts until resumed.",
        Handlers.pause_workflow,
        "Signals, timers and step results are queued durably meanwhile.",
    ),
    _control("resume", "Undo a pause.", Handlers.resume_workflow, "Queued events go on in order."),
    _control(
        "retry",
        "Retry a workflow that failed in a step, from that step.",
        Handlers.retry_workflow,
        "409 when the workflow did not fail in a step.",
    ),
    Route(
        "GET",
        "/v1/workflows/{id}/history",
        "getWorkflowHistory",
        "The workflow's stored events, oldest first, paginated.",
        Handlers.workflow_history,
        "workflows",
        path_params={"id": _WORKFLOW_ID},
        query=(
            Param("after", "integer", "Only events with a seq above this.", 0, default=0),
            Param("limit", "integer", "The most events returned.", 1, LIMIT_MAX, default=100),
        ),
        replies=(Reply(200, "A page of events.", "HistoryPage"),),
        errors=_ERRORS_READ,
    ),
    Route(
        "POST",
        "/v1/actors/{type}/{id}/messages",
        "messageActor",
        "Send a message to an actor: tell (202 once committed) or ask (?reply=true).",
        Handlers.message_actor,
        "actors",
        path_params={"type": "The actor type name.", "id": "The actor id."},
        query=(
            Param("reply", "boolean", "Wait for and return the handler's reply.", default=False),
        ),
        body=Body(
            "The message: its registered type name and its fields.",
            (
                BodyField(
                    "type",
                    "string",
                    "The registered codec type name of a message the actor handles.",
                    required=True,
                    length_max=NAME_LENGTH_MAX,
                ),
                BodyField("message", "object", "The message's fields.", default={}),
            ),
        ),
        idempotency_key=True,
        replies=(
            Reply(202, "Handled and committed (tell).", "ActorMessageAccepted"),
            Reply(200, "Handled and committed; the handler's reply (ask).", "ActorReply"),
        ),
        errors=_ERRORS_WRITE,
        description=(
            "Both forms answer once the events the handler emitted are committed. With an "
            "Idempotency-Key (the message id), a message the actor already accepted is not "
            "applied again and the stored reply is returned."
        ),
    ),
    Route(
        "GET",
        "/v1/cluster",
        "clusterStatus",
        "This node's view of the cluster: members, their state and key share.",
        cluster_status,
        "cluster",
        replies=(Reply(200, "The members as this node sees them.", "Cluster"),),
        errors=(401, 404),
    ),
    Route(
        "POST",
        "/cluster/v1/deliver",
        "deliverForwarded",
        "Node-to-node: deliver a message another node forwarded to its owner.",
        deliver_forwarded,
        "cluster",
        auth=False,
        body=Body(
            "The forwarded message: actor_type, actor_id, message (a codec envelope), "
            "message_id, reply (whether to wait for the reply) and hops.",
            schema={"type": "object"},
        ),
        replies=(Reply(200, "The outcome: the reply or the error, encoded.", "ForwardOutcome"),),
        errors=(400, 401, 404, 413, 503),
        description=(
            "Authenticated by the shared cluster secret in the X-Mainspring-Cluster-Secret "
            "header (not by client tokens). A node that no longer owns the actor forwards the "
            "message again, up to the cluster's hop limit."
        ),
    ),
    Route(
        "GET",
        "/healthz",
        "health",
        "Liveness: the process answers.",
        Handlers.healthz,
        "operations",
        auth=False,
        replies=(Reply(200, "Alive.", "Health"),),
    ),
    Route(
        "GET",
        "/readyz",
        "readiness",
        "Readiness: the node runs and its store answers.",
        Handlers.readyz,
        "operations",
        auth=False,
        replies=(Reply(200, "Ready.", "Health"),),
        errors=(503,),
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        "The node's metrics in the Prometheus text format (version 0.0.4).",
        Handlers.metrics,
        "operations",
        auth=False,
        replies=(Reply(200, "Prometheus text.", None, "text/plain; version=0.0.4; charset=utf-8"),),
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        "This API's OpenAPI 3.1 document, generated from the route table it serves.",
        Handlers.openapi,
        "operations",
        auth=False,
        replies=(Reply(200, "The OpenAPI document.", "OpenApiDocument"),),
    ),
)
"""Every route of the gateway."""
