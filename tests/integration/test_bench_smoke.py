"""The benchmark scripts run end to end on tiny inputs and print the figures they promise.

Only the shape of the output is checked: how fast anything ran is not a test's business.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mainspring.persistence.store import SCHEMA_VERSION

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.slow


def run_bench(script: str, *arguments: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--store", "sqlite", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, completed.stdout
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_journal_bench_prints_its_figures(writer: str) -> None:
    result = run_bench("journal.py", "--actors", "10", "--commands", "5", "--sqlite-writer", writer)
    for key in ("events_per_s", "raw_events_per_s", "ratio", "p50_ms", "p99_ms"):
        assert isinstance(result[key], int | float), key
    assert result["store"] == "sqlite"
    assert result["sqlite_writer"] == writer
    assert result["actors"] == 10
    assert result["commands"] == 5
    assert result["events"] == 50


def test_hydrate_bench_prints_its_figures() -> None:
    result = run_bench("hydrate.py", "--events", "200", "--repeat", "2")
    for key in ("snapshot_activation_ms", "full_replay_activation_ms", "replay_events_per_s"):
        assert isinstance(result[key], int | float), key
    assert result["store"] == "sqlite"
    assert result["events"] == 200


def test_workflows_bench_prints_its_figures() -> None:
    result = run_bench(
        "workflows.py",
        "--workflows",
        "8",
        "--concurrency",
        "4",
        "--warmup",
        "2",
        "--uncontended",
        "2",
        "--no-dbos",
    )
    for key in (
        "workflows_per_s",
        "step_overhead_ms_p50",
        "step_overhead_ms_p99",
        "uncontended_step_overhead_ms_p50",
        "uncontended_step_overhead_ms_p99",
    ):
        assert isinstance(result[key], int | float), key
    assert result["store"] == "sqlite"
    assert result["workflows"] == 8
    assert result["dbos_skipped"] == "--no-dbos"
    assert "uncontended_step_overhead_ms_p50" in result["step_overhead_target_applies_to"]


def test_http_bench_prints_its_figures() -> None:
    result = run_bench(
        "http.py",
        "--starts",
        "12",
        "--signals",
        "12",
        "--requests",
        "12",
        "--warmup",
        "2",
        "--concurrency",
        "4",
        "--rounds",
        "2",
    )
    for key in (
        "raw_aiohttp_req_per_s",
        "starts_per_s",
        "signals_per_s",
        "inprocess_starts_per_s",
        "start_ms_p50",
        "start_ms_p99",
        "signal_ms_p50",
        "signal_ms_p99",
        "starts_ratio",
    ):
        assert isinstance(result[key], int | float), key
    assert result["store"] == "sqlite"
    assert result["starts"] == 12
    assert result["signals"] == 12
    assert result["rounds"] == 2
    assert result["ratio_target"] == 0.3


def run_script(script: str, *arguments: str) -> dict[str, object]:
    """Run a bench script that takes no ``--store`` with ``--json``; return its figures."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert isinstance(result, dict)
    return result


def test_sqlite_transaction_bench_prints_its_figures() -> None:
    result = run_script(
        "sqlite_tx.py", "--streams", "20", "--batch", "10", "--rounds", "12", "--measure", "4"
    )
    assert result["batch"] == 10
    assert isinstance(result["median_tx_ms"], int | float)


def test_postgres_transaction_bench_prints_its_figures() -> None:
    from tests.conftest import POSTGRES_DSN, require_postgres

    asyncio.run(require_postgres())
    result = run_script(
        "postgres_tx.py", "--dsn", POSTGRES_DSN, "--streams", "20", "--batch", "10", "--rounds", "3"
    )
    for key in ("append_batch_ms", "encode_ms", "wal_bytes_per_event", "raw_insert_ms"):
        assert isinstance(result[key], int | float), key
        assert result[key] > 0, key
    assert result["schema_version"] == SCHEMA_VERSION


def test_instruction_count_bench_measures_the_node_run() -> None:
    def instructions(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(BENCH / "instructions.py"), *arguments],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    inner = instructions("--store", "sqlite", "--inner", "1")  # the run valgrind measures
    assert inner.returncode == 0, inner.stderr
    refused = instructions("--store", "memory", "--commands", "5")
    assert refused.returncode == 2
    assert "--commands takes two counts as 'FEWER,MORE', got '5'" in refused.stderr
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed: only the measured run was checked")
    result = run_script("instructions.py", "--store", "memory", "--commands", "1,2")
    assert result["commands"] == [1, 2]
    low, high = result["instructions"]
    assert 0 < low < high
    assert result["instructions_per_ask"] == round((high - low) / 1000)
