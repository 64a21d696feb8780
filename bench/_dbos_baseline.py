"""The DBOS Transact baseline of the workflow benchmark: 3-step async workflows through DBOS.

``bench/workflows.py`` measures our engine and, in the same run, the same workload through DBOS
Transact (the ``dbos`` package) on the same kind of database. This module is that DBOS side.
``dbos`` is not a dependency of the project: :func:`ensure_dbos` installs the version pinned in
``bench/requirements-dbos.txt`` into the running interpreter's environment on demand.

The workload: one ``@DBOS.workflow()`` async function calling three ``@DBOS.step()`` async
functions in turn, each returning its input + 1; ``workflows`` of them are started with
``DBOS.start_workflow_async`` and awaited with ``handle.get_result()``, at most ``concurrency``
in flight (an asyncio semaphore), after a warm-up of ``warmup`` workflows that is not counted.
The workflows of every run are independent (ids are DBOS-generated, no queue is used). DBOS runs
with its defaults (system database pool of 20 connections, unbounded executor threads) except
``log_level="WARNING"``.

Figures (keys of the returned dict):

- ``dbos_workflows_per_s``: counted workflows / wall time from the first start to the last result;
- ``dbos_step_overhead_ms_p50`` / ``_p99``: per step transition inside a workflow, the time from
  one step function returning to the next step function starting (DBOS checkpoints the step's
  output and checks for a recorded output of the next step in between), 2 transitions a workflow;
  under ``concurrency`` workflows in flight this is mostly waiting for DBOS's thread pool and the
  database, so it is far above the uncontended cost;
- ``dbos_uncontended_step_overhead_ms_p50`` / ``_p99`` (with ``uncontended`` > 0, the default):
  the same transitions over ``dbos_uncontended_workflows`` more workflows run one at a time after
  the measured batch, i.e. DBOS's own per-step cost;
- ``dbos_version``, ``dbos_store``, ``dbos_workflows``, ``dbos_concurrency``, ``dbos_seconds``.

Why a subprocess. DBOS is a process-wide singleton (``DBOS(config=...)`` / ``DBOS.destroy()``)
that also reaches into the process it runs in: ``DBOS.launch()`` adopts the running event loop as
its "main loop", ``start_workflow_async`` replaces that loop's default executor (the pool behind
``asyncio.to_thread``) with DBOS's own unbounded thread pool, and it installs logging handlers and
background threads. Running it inside the benchmark's own process would therefore perturb the
measurement of our engine made in the same process. So:

- :func:`run_dbos_workflows` (async, what the benchmark calls) runs this file as a script in a
  child process and returns the dict it prints. It is the robust entry point.
- ``python bench/_dbos_baseline.py --store sqlite --workflows 1000 --concurrency 64 --json``
  prints that dict as one JSON line (without ``--json``: a human-readable summary).
- :func:`run_dbos_workflows_inprocess` (async) is the measurement itself, for the script. It may
  run more than once in a process (``DBOS.destroy()`` is called every time; the workflow
  functions are registered once per process), but not concurrently with another DBOS user.

Stores: ``"sqlite"`` uses a fresh file in ``workdir`` switched to WAL before DBOS opens it (DBOS
itself leaves SQLite's journal mode alone), removed afterwards. ``"postgres"`` creates a fresh
database ``dbos_bench_<pid>_<n>`` on the server of ``dsn`` (DBOS needs a whole system database),
and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REQUIREMENTS = SCRIPT.with_name("requirements-dbos.txt")
"""The pinned ``dbos`` requirement line that :func:`ensure_dbos` installs."""

DEFAULT_POSTGRES_DSN = os.environ.get(
    "MAINSPRING_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_WARMUP = 50
DEFAULT_UNCONTENDED = 100
STEPS = 3

Figures = dict[str, float | int | str]


# Installation ------------------------------------------------------------------------------


def _dbos_importable() -> bool:
    try:
        import dbos  # noqa: F401
    except Exception:  # a broken install counts as missing
        return False
    return True


def _pinned_requirement() -> str:
    try:
        for line in REQUIREMENTS.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                return line
    except OSError:
        pass
    return "dbos"


def ensure_dbos() -> str | None:
    """None when ``import dbos`` works (installing the pinned version with pip into this
    interpreter's environment first if it did not); else a one-line reason. Never raises."""
    try:
        if _dbos_importable():
            return None
        requirement = _pinned_requirement()
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"pip could not install {requirement}: {error!r}"
        if completed.returncode != 0:
            lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR")]
            last = (errors or lines or [f"pip exited with {completed.returncode}"])[-1]
            return f"pip could not install {requirement}: {last}"
        import importlib

        importlib.invalidate_caches()
        if not _dbos_importable():
            return f"{requirement} was installed but 'import dbos' still fails"
        return None
    except Exception as error:  # the contract is: never raise
        return f"could not make dbos importable: {error!r}"


# The workload ------------------------------------------------------------------------------

_timings: dict[str, list[tuple[float, float]]] = {}
"""Per workflow id, (start, end) perf_counter pairs of its step functions in order."""

_registered: list[Callable[[int], Any]] = []
"""The workflow function, once registered with DBOS (registration is process-wide)."""


def _workflow() -> Callable[[int], Any]:
    """The 3-step async workflow, registered with DBOS on first use."""
    if _registered:
        return _registered[0]
    from dbos import DBOS

    @DBOS.step()
    async def bench_step(value: int) -> int:
        started = time.perf_counter()
        workflow_id = DBOS.workflow_id
        result = value + 1
        assert workflow_id is not None
        _timings.setdefault(workflow_id, []).append((started, time.perf_counter()))
        return result

    @DBOS.workflow()
    async def bench_workflow(value: int) -> int:
        for _ in range(STEPS):
            value = await bench_step(value)
        return value

    _registered.append(bench_workflow)
    return bench_workflow


async def _run_batch(workflow: Callable[[int], Any], count: int, concurrency: int) -> float:
    """Start ``count`` workflows, at most ``concurrency`` in flight; the wall time they took."""
    from dbos import DBOS

    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int) -> None:
        async with semaphore:
            handle = await DBOS.start_workflow_async(workflow, number)
            result = await handle.get_result()
        if result != number + STEPS:
            raise AssertionError(f"workflow({number}) returned {result!r}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number in range(count):
            group.create_task(one(number))
    return time.perf_counter() - started


def _transitions_ms() -> list[float]:
    """Sorted, in ms, the step transitions of the workflows run since ``_timings`` was cleared:
    from one step function returning to the next one starting."""
    return sorted(
        (pairs[index + 1][0] - pairs[index][1]) * 1000.0
        for pairs in _timings.values()
        for index in range(len(pairs) - 1)
    )


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (as ``bench/_support.py``)."""
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# Fresh databases ---------------------------------------------------------------------------

_databases = itertools.count(1)


@contextlib.asynccontextmanager
async def _system_database(store: str, dsn: str | None, workdir: str) -> AsyncIterator[str]:
    """A fresh, empty DBOS system database; yields its SQLAlchemy URL, removes it on exit."""
    label = f"dbos_bench_{os.getpid()}_{next(_databases)}"
    if store == "sqlite":
        path = Path(workdir) / f"{label}.sqlite"
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        for file in files:
            file.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(path)) as connection:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL for {path}: journal_mode={mode}")
        try:
            yield f"sqlite:///{path}"
        finally:
            for file in files:
                file.unlink(missing_ok=True)
        return
    if store != "postgres":
        raise ValueError(f"store must be 'sqlite' or 'postgres', not {store!r}")
    import asyncpg

    server_dsn = dsn or DEFAULT_POSTGRES_DSN
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{label}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{label}"')
        try:
            yield urllib.parse.urlsplit(server_dsn)._replace(path=f"/{label}").geturl()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{label}" WITH (FORCE)')
    finally:
        await admin.close()


# The measurement ---------------------------------------------------------------------------


async def run_dbos_workflows_inprocess(
    *,
    store: str,
    workflows: int,
    concurrency: int,
    dsn: str | None = None,
    workdir: str,
    warmup: int = DEFAULT_WARMUP,
    uncontended: int = DEFAULT_UNCONTENDED,
) -> Figures:
    """Measure DBOS in this process (see the module docstring for why the benchmark should
    prefer :func:`run_dbos_workflows`). Launches DBOS on the running loop and destroys it
    before returning, also on failure. Raises if ``dbos`` is not importable."""
    if workflows < 1 or concurrency < 1 or warmup < 0 or uncontended < 0:
        raise ValueError("workflows and concurrency must be >= 1, warmup and uncontended >= 0")
    from dbos import DBOS, DBOSConfig

    workflow = _workflow()
    async with _system_database(store, dsn, workdir) as url:
        config: DBOSConfig = {
            "name": "mainspring-bench-dbos",
            "system_database_url": url,
            "log_level": "WARNING",
        }
        DBOS(config=config)
        try:
            DBOS.launch()
            if warmup:
                await _run_batch(workflow, warmup, concurrency)
            _timings.clear()
            seconds = await _run_batch(workflow, workflows, concurrency)
            transitions = _transitions_ms()
            _timings.clear()
            if uncontended:
                await _run_batch(workflow, uncontended, 1)
            alone = _transitions_ms()
        finally:
            _timings.clear()
            # Blocks while DBOS joins its threads; nothing else of ours runs meanwhile.
            DBOS.destroy()
    if len(transitions) != workflows * (STEPS - 1):
        raise AssertionError(f"{len(transitions)} step transitions for {workflows} workflows")
    figures: Figures = {
        "dbos_version": importlib.metadata.version("dbos"),
        "dbos_store": store,
        "dbos_workflows": workflows,
        "dbos_concurrency": concurrency,
        "dbos_seconds": round(seconds, 4),
        "dbos_workflows_per_s": round(workflows / seconds, 1),
        "dbos_step_overhead_ms_p50": round(statistics.median(transitions), 3),
        "dbos_step_overhead_ms_p99": round(_percentile(transitions, 0.99), 3),
    }
    if alone:
        figures["dbos_uncontended_workflows"] = uncontended
        figures["dbos_uncontended_step_overhead_ms_p50"] = round(statistics.median(alone), 3)
        figures["dbos_uncontended_step_overhead_ms_p99"] = round(_percentile(alone, 0.99), 3)
    return figures


async def run_dbos_workflows(
    *,
    store: str,
    workflows: int,
    concurrency: int,
    dsn: str | None = None,
    workdir: str,
    warmup: int = DEFAULT_WARMUP,
    uncontended: int = DEFAULT_UNCONTENDED,
) -> Figures:
    """Measure DBOS in a child process running this file (same interpreter, so the same venv)
    and return its figures. Raises ``RuntimeError`` with the child's last stderr line when it
    fails; call :func:`ensure_dbos` first. To bound it, wrap it in ``asyncio.timeout``: the
    child is killed when this is cancelled."""
    command = [
        sys.executable,
        str(SCRIPT),
        "--store",
        store,
        "--workflows",
        str(workflows),
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--uncontended",
        str(uncontended),
        "--workdir",
        workdir,
        "--json",
    ]
    if dsn is not None:
        command += ["--dsn", dsn]
    child = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await child.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        errors = [line.strip() for line in stderr.decode().splitlines() if line.strip()]
        last = errors[-1] if errors else f"exit status {child.returncode}, no output"
        raise RuntimeError(f"the DBOS baseline ({store}) failed: {last}")
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict)
    return figures


# The script --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--store", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument(
        "--uncontended",
        type=int,
        default=DEFAULT_UNCONTENDED,
        help="workflows run one at a time afterwards for the uncontended step overhead (0: none)",
    )
    parser.add_argument(
        "--dsn",
        default=DEFAULT_POSTGRES_DSN,
        help="PostgreSQL server DSN (a fresh database is created on it and dropped at the end)",
    )
    parser.add_argument("--workdir", help="where the SQLite file goes (default: a temporary dir)")
    parser.add_argument("--install", action="store_true", help="pip install dbos if missing")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    arguments = parser.parse_args(argv)

    problem = ensure_dbos() if arguments.install else None
    if problem is None and not _dbos_importable():
        problem = f"dbos is not importable (run with --install, or pip install -r {REQUIREMENTS})"
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mainspring-bench-dbos-") as temporary:
        figures = asyncio.run(
            run_dbos_workflows_inprocess(
                store=arguments.store,
                workflows=arguments.workflows,
                concurrency=arguments.concurrency,
                dsn=arguments.dsn,
                workdir=arguments.workdir or temporary,
                warmup=arguments.warmup,
                uncontended=arguments.uncontended,
            )
        )
    if arguments.json:
        print(json.dumps(figures), flush=True)
    else:
        for key, value in figures.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
