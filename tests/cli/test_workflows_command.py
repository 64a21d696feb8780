"""``mainspring workflows`` against a live ``mainspring node`` process (the order example).

Each command runs as its own process, as an operator would run it, with the node's URL and
token from the environment (``MAINSPRING_URL``, ``MAINSPRING_TOKEN``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import NodeProcess, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "test-token-0123456789"
BIG_ORDER = {
    "order_id": "order-1",
    "customer_id": "cust-1",
    "items": [{"sku": "sku-1", "qty": 2}],
    "amount_cents": 150_000,
}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert result.stderr == "", result.stderr
    return result.stdout


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mainspring workflows: error: "), lines[0]
    return lines[0]


@pytest.fixture
def node_url(tmp_path: Path, node_process: type[NodeProcess]) -> str:
    node = node_process(
        ["--app", "examples.orders.app", "--listen", "127.0.0.1:0", "--node-id", "cli-1"],
        MAINSPRING_TOKENS=TOKEN,
    )
    return node.start()


def test_workflow_commands_drive_an_order_end_to_end(tmp_path: Path, node_url: str) -> None:
    """Goal: every command works against a live node, as a table and as JSON. Method: start a
    big order, approve it with a signal, wait for it, then list, show and read its history."""
    env = {"MAINSPRING_URL": node_url, "MAINSPRING_TOKEN": TOKEN}

    def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["workflows", *arguments], cwd=tmp_path, **env)

    started = ok(cli("start", "order", "order-1", "--input", json.dumps(BIG_ORDER)))
    assert started.strip() == "workflow order-1 (order, run 1): running"
    again = json.loads(
        ok(cli("start", "order", "order-1", "--input", json.dumps(BIG_ORDER), "--json"))
    )
    assert again == {"id": "order-1", "type": "order", "status": again["status"], "run_id": 1}

    signalled = ok(
        cli("signal", "order-1", "approve", "--payload", '{"approved": true}',
            "--idempotency-key", "approve-order-1")
    )  # fmt: skip
    assert signalled.strip() == "signal approve recorded for workflow order-1"

    shown = ok(cli("show", "order-1", "--wait", "20"))
    fields = dict(line.split(None, 1) for line in shown.splitlines() if " " in line)
    assert fields["id"].strip() == "order-1"
    assert fields["status"].strip() == "completed", shown
    described = json.loads(ok(cli("show", "order-1", "--json")))
    assert described["status"] == "completed"
    assert described["result"]["status"] == "completed"
    assert described["result"]["tracking_id"].startswith("TRK-")

    table = ok(cli("list")).splitlines()
    assert table[0].split() == ["ID", "TYPE", "STATUS", "UPDATED"]
    assert table[1].split()[:3] == ["order-1", "order", "completed"]
    listed = json.loads(ok(cli("list", "--json", "--status", "completed")))
    assert [w["id"] for w in listed["workflows"]] == ["order-1"]
    assert listed["next"] is None

    history = ok(cli("history", "order-1")).splitlines()
    assert history[0].split() == ["SEQ", "TIME", "KIND", "N", "NAME", "DATA"]
    kinds = [line.split()[2] for line in history[1:]]
    assert kinds[0] == "started"
    assert "signal" in kinds
    assert kinds[-1] == "completed"
    events = json.loads(ok(cli("history", "order-1", "--json", "--limit", "2", "--all")))["events"]
    assert [event["seq"] for event in events] == list(range(1, len(history)))

    closed = one_error_line(cli("cancel", "order-1", "--reason", "too late"))
    assert "workflow_closed, HTTP 409" in closed, closed
    not_failed = one_error_line(cli("retry", "order-1"))
    assert "HTTP 409" in not_failed, not_failed


def test_workflow_commands_report_errors_in_one_line(tmp_path: Path, node_url: str) -> None:
    """Goal: a failed call says why in one line and exits 1. Method: a missing token, an
    unknown workflow, an input that does not fit, bad JSON, and a node that is not there."""
    missing_token = one_error_line(run_cli(["workflows", "list", "--url", node_url], cwd=tmp_path))
    assert "HTTP 401" in missing_token, missing_token
    assert "MAINSPRING_TOKEN" in missing_token, missing_token

    env = {"MAINSPRING_URL": node_url, "MAINSPRING_TOKEN": TOKEN}
    unknown = one_error_line(run_cli(["workflows", "show", "no-such-order"], cwd=tmp_path, **env))
    assert "unknown_workflow, HTTP 404" in unknown, unknown
    misfit = one_error_line(
        run_cli(["workflows", "start", "order", "o-2", "--input", '{"order_id": "o-2"}'],
                cwd=tmp_path, **env)
    )  # fmt: skip
    assert "validation_failed, HTTP 422" in misfit, misfit
    assert "customer_id" in misfit, misfit
    bad_json = one_error_line(
        run_cli(["workflows", "start", "order", "o-3", "--input", "{oops"], cwd=tmp_path, **env)
    )
    assert "--input is not valid JSON" in bad_json, bad_json
    absent = one_error_line(
        run_cli(["workflows", "list", "--url", "http://127.0.0.1:1"], cwd=tmp_path)
    )
    assert "cannot reach a node at http://127.0.0.1:1" in absent, absent
