"""``mainspring workflows``: operate the workflows of a running node over its HTTP API.

::

    mainspring workflows list [--type order] [--status running] [--all]
    mainspring workflows show order-1 [--wait 10]
    mainspring workflows history order-1 [--all]
    mainspring workflows start order order-1 --input '{"order_id": "order-1", ...}'
    mainspring workflows signal order-1 approve --payload '{"approved": true}'
    mainspring workflows cancel|pause|resume|retry|terminate order-1 [--reason TEXT]

Every command takes ``--url`` (``$MAINSPRING_URL``, default ``http://127.0.0.1:8080``),
``--token`` (``$MAINSPRING_TOKEN``) and ``--json`` (print the API's JSON answer instead of a
table). A failed call prints ONE line ``mainspring workflows: error: <reason>`` and exits 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from mainspring.cli._client import (
    DEFAULT_URL,
    TOKEN_ENVIRONMENT,
    URL_ENVIRONMENT,
    Client,
    ClientError,
    path_segment,
)

__all__ = ["workflows"]

F = TypeVar("F", bound=Callable[..., Any])

_CELL_WIDTH_MAX: Final = 60
_PAGES_MAX: Final = 10_000
_WAIT_MAX_S: Final = 60.0


def _connection_options(function: F) -> F:
    """``--url``, ``--token``, ``--timeout`` and ``--json``, turned into ``client`` and
    ``as_json`` arguments."""

    @click.option(
        "--url",
        envvar=URL_ENVIRONMENT,
        default=DEFAULT_URL,
        show_default=True,
        help=f"The node's base URL (${URL_ENVIRONMENT}).",
    )
    @click.option(
        "--token",
        envvar=TOKEN_ENVIRONMENT,
        default=None,
        help=f"The bearer token (${TOKEN_ENVIRONMENT}).",
    )
    @click.option(
        "--timeout",
        "timeout_s",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds to wait for each answer.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
    @functools.wraps(function)
    def wrapper(url: str, token: str | None, timeout_s: float, **kwargs: Any) -> Any:
        return function(client=Client(url, token, timeout_s), **kwargs)

    return wrapper  # type: ignore[return-value]


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _CELL_WIDTH_MAX else text[: _CELL_WIDTH_MAX - 3] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, the last one unpadded."""
    cells = [list(headers), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = []
    for row in cells:
        padded = [text.ljust(width) for text, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def _json_argument(text: str | None, file: Path | None, option: str) -> Any:
    """The JSON value given inline, in a file, or on stdin (``-``)."""
    if text is not None and file is not None:
        raise click.UsageError(f"give {option} or {option}-file, not both")
    if file is not None:
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except OSError as error:
            raise ClientError(f"cannot read {option}-file {str(file)!r}: {error}") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ClientError(f"{option} is not valid JSON ({error}): {text[:100]!r}") from None


@click.group()
def workflows() -> None:
    """Start, inspect, signal and control the workflows of a running node."""


@workflows.command("list")
@_connection_options
@click.option("--type", "workflow_type", default=None, help="Only workflows of this type.")
@click.option("--status", default=None, help="Only workflows with this status (e.g. running).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--cursor", default=None, help="Continue after a previous page ('next').")
@click.option("--all", "every_page", is_flag=True, help="Follow 'next' to the end of the list.")
def list_workflows(
    client: Client,
    as_json: bool,
    workflow_type: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    every_page: bool,
) -> None:
    """List workflows by id (a page at a time unless --all)."""
    items: list[dict[str, Any]] = []
    for _ in range(_PAGES_MAX):
        page = client.call(
            "GET",
            "/v1/workflows",
            query={"type": workflow_type, "status": status, "limit": limit, "cursor": cursor},
        )
        items.extend(page["workflows"])
        cursor = page.get("next")
        if not every_page or cursor is None:
            break
    if as_json:
        _print_json({"workflows": items, "next": cursor})
        return
    rows = [[w["id"], w.get("type"), w["status"], w.get("updated_at")] for w in items]
    click.echo(_table(["ID", "TYPE", "STATUS", "UPDATED"], rows))
    if cursor is not None:
        click.echo(f"(more: --cursor {cursor}, or --all)")


@workflows.command("show")
@_connection_options
@click.argument("workflow_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(0, _WAIT_MAX_S),
    default=None,
    help="Wait up to this many seconds for the workflow to close first.",
)
def show_workflow(client: Client, as_json: bool, workflow_id: str, wait_s: float | None) -> None:
    """Describe one workflow: status, result or error, what it waits for."""
    described = client.call(
        "GET",
        f"/v1/workflows/{path_segment(workflow_id)}",
        query={"wait": wait_s},
        wait_s=wait_s or 0.0,
    )
    if as_json:
        _print_json(described)
        return
    pending = described.get("pending_steps") or []
    fields: list[tuple[str, object]] = [
        ("id", described["id"]),
        ("type", f"{described['type']} (version {described.get('version')})"),
        ("status", described["status"]),
        ("run", described.get("run_id")),
        ("started", described.get("started_at")),
        ("closed", described.get("closed_at")),
        ("result", described.get("result")),
        ("error", described.get("error")),
        ("stall", described.get("stall")),
        ("pending steps", pending or None),
        ("timers", described.get("timers") or None),
        ("history", f"{described.get('history_events')} events"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        click.echo(f"{name.ljust(width)}  {'-' if value is None else text}")


@workflows.command("history")
@_connection_options
@click.argument("workflow_id")
@click.option("--after", type=click.IntRange(0), default=0, help="Only events after this seq.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--all", "every_page", is_flag=True, help="Follow 'next' to the last event.")
def workflow_history(
    client: Client, as_json: bool, workflow_id: str, after: int, limit: int, every_page: bool
) -> None:
    """Show a workflow's stored events, oldest first."""
    events: list[dict[str, Any]] = []
    next_after: int | None = after
    for _ in range(_PAGES_MAX):
        page = client.call(
            "GET",
            f"/v1/workflows/{path_segment(workflow_id)}/history",
            query={"after": next_after, "limit": limit},
        )
        events.extend(page["events"])
        next_after = page.get("next")
        if not every_page or next_after is None:
            break
    if as_json:
        _print_json({"id": workflow_id, "events": events, "next": next_after})
        return
    rows = [[e["seq"], e.get("time"), e["kind"], *_event_columns(e)] for e in events]
    click.echo(_table(["SEQ", "TIME", "KIND", "N", "NAME", "DATA"], rows))
    if next_after is not None:
        click.echo(f"(more: --after {next_after}, or --all)")


def _event_columns(event: dict[str, Any]) -> tuple[object, object, object]:
    """A workflow event's command number, name and data (a value envelope unwrapped)."""
    data = event.get("data")
    if not isinstance(data, dict) or "kind" in data:
        return None, None, data
    value = data.get("data")
    if isinstance(value, dict) and set(value) <= {"t", "v", "d"} and "d" in value:
        value = value["d"]
    elif isinstance(value, dict) and isinstance(value.get("input"), dict):
        value = value["input"].get("d", value["input"])
    return data.get("n") or None, data.get("name") or None, value


@workflows.command("start")
@_connection_options
@click.argument("workflow_type")
@click.argument("workflow_id")
@click.option("--input", "input_text", default=None, help="The input as JSON.")
@click.option(
    "--input-file",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    default=None,
    help="A file holding the input as JSON ('-': stdin).",
)
def start_workflow(
    client: Client,
    as_json: bool,
    workflow_type: str,
    workflow_id: str,
    input_text: str | None,
    input_file: Path | None,
) -> None:
    """Start a workflow of WORKFLOW_TYPE with id WORKFLOW_ID (idempotent by id)."""
    workflow_input = _json_argument(input_text, input_file, "--input")
    started = client.call(
        "POST",
        f"/v1/workflows/{path_segment(workflow_type)}",
        body={"id": workflow_id, "input": workflow_input},
    )
    if as_json:
        _print_json(started)
        return
    click.echo(
        f"workflow {started['id']} ({started['type']}, run {started['run_id']}): "
        f"{started['status']}"
    )


@workflows.command("signal")
@_connection_options
@click.argument("workflow_id")
@click.argument("name")
@click.option("--payload", "payload_text", default=None, help="The payload as JSON.")
@click.option(
    "--payload-file",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    default=None,
    help="A file holding the payload as JSON ('-': stdin).",
)
@click.option(
    "--idempotency-key",
    default=None,
    help="A key that makes sending the signal again record it once.",
)
def signal_workflow(
    client: Client,
    as_json: bool,
    workflow_id: str,
    name: str,
    payload_text: str | None,
    payload_file: Path | None,
    idempotency_key: str | None,
) -> None:
    """Send signal NAME to workflow WORKFLOW_ID."""
    payload = _json_argument(payload_text, payload_file, "--payload")
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    answer = client.call(
        "POST",
        f"/v1/workflows/{path_segment(workflow_id)}/signals/{path_segment(name)}",
        body=payload,
        headers=headers,
    )
    if as_json:
        _print_json(answer)
        return
    click.echo(f"signal {name} recorded for workflow {workflow_id}")


def _control_command(action: str, help_text: str) -> click.Command:
    @_connection_options
    @click.argument("workflow_id")
    @click.option("--reason", default="", help="Why (recorded in the history).")
    def command(client: Client, as_json: bool, workflow_id: str, reason: str) -> None:
        described = client.call(
            "POST",
            f"/v1/workflows/{path_segment(workflow_id)}/{action}",
            body={"reason": reason},
        )
        if as_json:
            _print_json(described)
            return
        click.echo(f"workflow {described['id']}: {action} recorded; status {described['status']}")

    command.__doc__ = help_text
    return click.command(action)(command)


for _action, _help in (
    ("cancel", "Request cancellation (the workflow's code sees CancelledError)."),
    ("terminate", "End the workflow at once: no code runs, nothing is compensated."),
    ("pause", "Pause: no step starts until it is resumed."),
    ("resume", "Resume a paused workflow."),
    ("retry", "Retry a workflow that failed in a step, from that step."),
):
    workflows.add_command(_control_command(_action, _help))
