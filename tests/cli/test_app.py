"""``mainspring.App`` and ``load_app``: what an app module declares, and how a node runs it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from examples.orders.model import Inventory

from mainspring import App, Node, NodeConfig, UsageError
from mainspring.app import load_app
from mainspring.persistence.memory import MemoryStore
from tests.cli.apps import durable, sink
from tests.cli.conftest import NodeProcess


def test_load_app_finds_the_default_and_a_named_attribute() -> None:
    """Goal: 'MODULE' means 'MODULE:app', and 'MODULE:NAME' picks NAME. Method: load both."""
    from examples.orders.app import app as orders_app

    assert load_app("examples.orders.app") is orders_app
    assert load_app("tests.cli.apps:durable") is durable


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tests.cli.no_such_module", "no module named 'tests.cli.no_such_module'"),
        ("tests.cli.apps", "has no attribute 'app'"),
        ("tests.cli.apps:missing", "has no attribute 'missing'"),
        ("tests.cli.apps:not_an_app", "must be a mainspring.App, got dict"),
        ("tests.cli.apps:", "has no attribute 'app'"),
        ("tests/cli/apps.py", "MODULE[:ATTRIBUTE]"),
        ("tests.cli.apps:a:b", "MODULE[:ATTRIBUTE]"),
    ],
)
def test_load_app_says_what_is_wrong(spec: str, expected: str) -> None:
    """Goal: each wrong spec gets a message naming the problem. Method: load it."""
    with pytest.raises(UsageError) as raised:
        load_app(spec)
    assert expected in str(raised.value), str(raised.value)


def test_app_validates_its_arguments() -> None:
    """Goal: wrong types fail when the App is built, not when the node starts. Method: build
    Apps with an instance for a class, a plain function for a workflow, a dict for a config,
    a string for a list, a duplicated actor type, and a non-callable hook."""
    cases = [
        ({"actors": [Inventory()]}, "mainspring.Actor subclasses"),
        ({"workflows": [len]}, "@mainspring.workflow"),
        ({"config": {"lease_ttl_s": 1}}, "must be a NodeConfig"),
        ({"actors": "Inventory"}, "expected a list"),
        ({"actors": [Inventory, Inventory]}, "more than once"),
        ({"lifespan": 3}, "lifespan must be a callable"),
        ({"on_start": "seed"}, "on_start must be a callable"),
    ]
    for arguments, expected in cases:
        with pytest.raises(UsageError) as raised:
            App(**arguments)  # type: ignore[arg-type]
        assert expected in str(raised.value), (arguments, str(raised.value))
    app = App(actors=(Inventory,), workflows=[sink], config=NodeConfig())
    assert app.actors == (Inventory,)
    assert app.workflows == (sink,)


async def test_running_orders_the_lifespan_the_node_and_on_start() -> None:
    """Goal: the lifespan surrounds the node's whole life and on_start sees it running.
    Method: record what each hook sees in an in-memory node."""
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(node: Node) -> AsyncIterator[None]:
        seen.append(f"enter:{node._state}")
        yield
        seen.append(f"exit:{node._state}")

    async def on_start(node: Node) -> None:
        seen.append(f"on_start:{node._state}")

    app = App(workflows=[sink], lifespan=lifespan, on_start=on_start)
    node = Node("app-1", store=MemoryStore(), workflows=app.workflows)
    async with app.running(node) as running:
        assert running is node
        seen.append("serving")
    assert seen == ["enter:new", "on_start:running", "serving", "exit:stopped"]


async def test_a_lifespan_that_is_not_a_context_manager_is_refused() -> None:
    """Goal: a lifespan written as a plain coroutine gets a message with the fix. Method: run it."""

    async def lifespan(node: Node) -> None:
        return None

    app = App(lifespan=lifespan)  # type: ignore[arg-type]
    node = Node("app-2", store=MemoryStore())
    with pytest.raises(UsageError, match="asynccontextmanager"):
        async with app.running(node):
            pass


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_lifespan_is_left_after_a_sigterm(
    tmp_path: Path, node_process: type[NodeProcess]
) -> None:
    """Goal: a stopped node process leaves its app's lifespan (the app's resources close).
    Method: run the 'hooks' app, whose hooks write marker files, and SIGTERM it."""
    node = node_process(
        ["--app", "tests.cli.apps:hooks", "--listen", "127.0.0.1:0", "--node-id", "hooks-1"],
        MAINSPRING_TEST_MARKERS=str(tmp_path),
    )
    node.start()
    assert sorted(p.name for p in tmp_path.glob("lifespan-*")) == ["lifespan-entered"]
    assert (tmp_path / "started").exists()
    assert node.terminate() == 0, node.stderr()
    assert (tmp_path / "lifespan-exited").exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_sigterm_while_starting_stops_the_start(tmp_path: Path) -> None:
    """Goal: a node stuck in its start (here: an on_start that never returns) still stops on
    SIGTERM, leaving its lifespan, with one line. Method: wait for the on_start marker, then
    SIGTERM the process."""
    from tests.cli.conftest import MAINSPRING, environment

    process = subprocess.Popen(
        [*MAINSPRING, "node", "--app", "tests.cli.apps:hooks", "--listen", "127.0.0.1:0",
         "--node-id", "hooks-2"],
        cwd=tmp_path,
        env=environment(MAINSPRING_TEST_MARKERS=str(tmp_path), MAINSPRING_TEST_BLOCK_START="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        for _ in range(600):
            if (tmp_path / "started").exists():
                break
            time.sleep(0.05)
        assert (tmp_path / "started").exists()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, (process.returncode, stderr)
    assert stdout == ""
    assert stderr.strip().splitlines() == [
        "mainspring node: error: stopped by SIGTERM before the node was ready"
    ]
    assert (tmp_path / "lifespan-exited").exists()


def test_the_node_guide_runs() -> None:
    """Goal: the Python examples of docs/node.md work. Method: run its code blocks in order."""
    from tests.support.docs import run_code_blocks

    run_code_blocks("node.md", blocks_min=2)
