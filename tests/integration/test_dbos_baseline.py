"""The DBOS baseline of the workflow benchmark runs end to end on a tiny input.

``dbos`` is not a project dependency (``bench/requirements-dbos.txt`` pins it, installed on
demand by the benchmark), so these tests skip where it is not installed. Only the shape of the
figures is checked: how fast DBOS runs is not a test's business.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import POSTGRES_DSN, require_postgres

pytestmark = pytest.mark.slow

BASELINE = Path(__file__).resolve().parents[2] / "bench" / "_dbos_baseline.py"

FIGURES = (
    "dbos_workflows_per_s",
    "dbos_step_overhead_ms_p50",
    "dbos_step_overhead_ms_p99",
    "dbos_uncontended_step_overhead_ms_p50",
    "dbos_uncontended_step_overhead_ms_p99",
)


def load_baseline() -> ModuleType:
    pytest.importorskip(
        "dbos", reason="dbos is not installed (pip install -r bench/requirements-dbos.txt)"
    )
    spec = importlib.util.spec_from_file_location("_dbos_baseline", BASELINE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_dbos_baseline_prints_its_figures(store: str, tmp_path: Path) -> None:
    baseline = load_baseline()
    assert baseline.ensure_dbos() is None
    if store == "postgres":
        await require_postgres()
    figures = await baseline.run_dbos_workflows(
        store=store,
        workflows=20,
        concurrency=8,
        dsn=POSTGRES_DSN,
        workdir=str(tmp_path),
        warmup=5,
        uncontended=5,
    )
    for key in FIGURES:
        assert isinstance(figures[key], int | float), key
        assert figures[key] > 0, key
    assert figures["dbos_store"] == store
    assert figures["dbos_workflows"] == 20
    assert isinstance(figures["dbos_version"], str)
    assert os.listdir(tmp_path) == []  # the SQLite file is removed afterwards
