"""The code blocks of docs/simulation.md run as written (so the page stays true)."""

from __future__ import annotations

from tests.support.docs import run_code_blocks


def test_simulation_guide_examples_run() -> None:
    run_code_blocks("simulation.md", blocks_min=2)
