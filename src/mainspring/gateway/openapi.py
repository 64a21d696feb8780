"""The OpenAPI 3.1 document of the gateway, rendered from the route table it serves."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from mainspring.gateway.errors import ERROR_CODES
from mainspring.gateway.spec import Body, BodyField, Param, Route

__all__ = ["openapi_document"]

_OPENAPI_VERSION: Final = "3.1.0"
_ERROR_DESCRIPTIONS: Final = {
    400: "Malformed JSON (body or a JSON query parameter).",
    401: "Missing or wrong bearer token.",
    404: "Unknown workflow, workflow type, actor type, query or route.",
    405: "The route does not take this method.",
    408: "The request body did not arrive within the request timeout.",
    409: "Conflict: another input for this id, or the workflow is closed or not in a state "
    "that allows this.",
    413: "The body is larger than the gateway accepts.",
    422: "A parameter or field failed validation (details.field names it).",
    429: "Overloaded: retry after Retry-After seconds; nothing was accepted.",
    503: "The node or its store is unavailable (or stopping); retry after Retry-After seconds.",
    504: "The node did not answer in time; the operation may still happen: retry it.",
}
_PATH_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NULLABLE_STRING: Final = {"type": ["string", "null"]}
_TIME: Final = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_SCHEMAS: Final[dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "enum": sorted(ERROR_CODES)},
                    "message": {"type": "string"},
                    "details": {"description": "JSON about the error, often {'field': ...}."},
                },
            }
        },
    },
    "WorkflowStarted": {
        "type": "object",
        "required": ["id", "type", "status", "run_id"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "status": {"type": "string"},
            "run_id": {
                "type": "integer",
                "minimum": 1,
                "description": "The run number: 1, plus one at each continue-as-new.",
            },
        },
    },
    "Workflow": {
        "type": "object",
        "required": ["id", "type", "version", "run_id", "status", "started_at"],
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string"},
            "version": {"type": "integer"},
            "run_id": {"type": "integer", "minimum": 1},
            "status": {"type": "string"},
            "result": {"description": "The result (JSON) once completed, else null."},
            "error": {"type": ["object", "null"]},
            "failed_step": {"type": ["integer", "null"]},
            "stall": _NULLABLE_STRING,
            "cancel_requested": {"type": "boolean"},
            "pending_steps": {"type": "array", "items": {"type": "object"}},
            "timers": {"type": "object"},
            "queued_events": {"type": "integer"},
            "history_events": {"type": "integer"},
            "started_at": _TIME,
            "started_at_ms": {"type": "integer"},
            "closed_at": _NULLABLE_TIME,
            "closed_at_ms": {"type": ["integer", "null"]},
            "previous_runs": {"type": "array", "items": {"type": "object"}},
        },
    },
    "WorkflowList": {
        "type": "object",
        "required": ["workflows", "next"],
        "properties": {
            "workflows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "type", "status", "created_at", "updated_at"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": _NULLABLE_STRING,
                        "status": {"type": "string"},
                        "created_at": _TIME,
                        "updated_at": _TIME,
                    },
                },
            },
            "next": {**_NULLABLE_STRING, "description": "The cursor of the next page, or null."},
        },
    },
    "HistoryPage": {
        "type": "object",
        "required": ["id", "events", "next"],
        "properties": {
            "id": {"type": "string"},
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["seq", "kind", "time", "data"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 1},
                        "kind": {"type": "string"},
                        "time": _TIME,
                        "recorded_at_ms": {"type": "integer"},
                        "data": {"type": "object"},
                    },
                },
            },
            "next": {
                "type": ["integer", "null"],
                "description": "Pass it as 'after' to read on; null at the end.",
            },
        },
    },
    "SignalAccepted": {
        "type": "object",
        "required": ["id", "signal", "signal_id"],
        "properties": {
            "id": {"type": "string"},
            "signal": {"type": "string"},
            "signal_id": _NULLABLE_STRING,
        },
    },
    "QueryResult": {
        "type": "object",
        "required": ["id", "query", "result"],
        "properties": {"id": {"type": "string"}, "query": {"type": "string"}, "result": {}},
    },
    "ActorMessageAccepted": {
        "type": "object",
        "required": ["actor_type", "actor_id", "message_id", "accepted"],
        "properties": {
            "actor_type": {"type": "string"},
            "actor_id": {"type": "string"},
            "message_id": _NULLABLE_STRING,
            "accepted": {"type": "boolean"},
        },
    },
    "ActorReply": {
        "type": "object",
        "required": ["actor_type", "actor_id", "message_id", "reply"],
        "properties": {
            "actor_type": {"type": "string"},
            "actor_id": {"type": "string"},
            "message_id": _NULLABLE_STRING,
            "reply": {"description": "The handler's reply as JSON."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "node_id"],
        "properties": {"status": {"type": "string"}, "node_id": {"type": "string"}},
    },
    "OpenApiDocument": {"type": "object"},
    "Cluster": {
        "type": "object",
        "required": ["node_id", "incarnation", "state", "ring", "members"],
        "properties": {
            "node_id": {"type": "string"},
            "incarnation": {"type": "integer"},
            "state": {"type": "string"},
            "ring": {"type": "array", "items": {"type": "string"}},
            "ring_changes": {"type": "integer"},
            "members": {"type": "array", "items": {"type": "object"}},
            "routing": {"type": "object"},
        },
    },
    "ForwardOutcome": {
        "type": "object",
        "required": ["ok"],
        "properties": {
            "ok": {"type": "boolean"},
            "reply": {"description": "The reply as a codec envelope (when ok)."},
            "error": {"type": "object", "description": "The error, encoded (when not ok)."},
            "retry": {"type": "boolean", "description": "Nothing was accepted: send again."},
        },
    },
}


def openapi_document(
    routes: Sequence[Route], *, title: str, version: str, auth: bool
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``.

    Args:
        routes: the route table (every route appears once, under its path and method).
        title: the API's title.
        version: the API's version.
        auth: whether ``/v1`` routes need a bearer token (the gateway has tokens).
    """
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operations = paths.setdefault(route.path, {})
        method = route.method.lower()
        assert method not in operations, f"{route.method} {route.path} is declared twice"
        operations[method] = _operation(route, auth)
    document: dict[str, Any] = {
        "openapi": _OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Start, signal, query and control durable workflows and send messages to "
                "actors. Every error answers {'error': {'code', 'message', 'details'}}."
            ),
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "responses": _error_responses()},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(route: Route, auth: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": [*_path_parameters(route), *map(_query_parameter, route.query)],
        "responses": {},
    }
    if route.description:
        operation["description"] = route.description
    if route.idempotency_key:
        operation["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "1-200 characters; a repeat with the same key is applied once.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
        )
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body.required and bool(route.body.fields),
            "description": route.body.description,
            "content": {"application/json": {"schema": _body_schema(route.body)}},
        }
    for reply in route.replies:
        answer: dict[str, Any] = {"description": reply.description}
        if reply.schema is not None:
            answer["content"] = {
                reply.content_type: {"schema": {"$ref": f"#/components/schemas/{reply.schema}"}}
            }
        else:
            answer["content"] = {reply.content_type: {"schema": {"type": "string"}}}
        operation["responses"][str(reply.status)] = answer
    errors = set(route.errors)
    if route.auth and auth:
        operation["security"] = [{"bearer": []}]
        errors.add(401)
    elif not auth:
        errors.discard(401)
    for status in sorted(errors):
        operation["responses"][str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    return operation


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": route.path_params[name],
            "schema": {"type": "string", "minLength": 1},
        }
        for name in _PATH_PARAM.findall(route.path)
    ]


def _query_parameter(param: Param) -> dict[str, Any]:
    schema: dict[str, Any]
    if param.kind == "json":
        schema = {"type": "string", "contentMediaType": "application/json"}
    else:
        schema = {"type": param.kind}
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    if param.enum:
        schema["enum"] = list(param.enum)
    if param.default is not None:
        schema["default"] = param.default
    return {
        "name": param.name,
        "in": "query",
        "required": False,
        "description": param.description,
        "schema": schema,
    }


def _body_schema(body: Body) -> dict[str, Any]:
    if not body.fields:
        return dict(body.schema)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [field.name for field in body.fields if field.required],
        "properties": {field.name: _field_schema(field) for field in body.fields},
    }


def _field_schema(field: BodyField) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": field.description}
    if field.kind == "string":
        schema.update(type="string", minLength=field.length_min, maxLength=field.length_max)
    elif field.kind == "object":
        schema["type"] = "object"
    if field.default is not None:
        schema["default"] = field.default
    return schema


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in _ERROR_DESCRIPTIONS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in {429, 503}:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }
            }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": "The Bearer challenge.",
                    "schema": {"type": "string"},
                }
            }
        responses[f"Error{status}"] = response
    return responses
