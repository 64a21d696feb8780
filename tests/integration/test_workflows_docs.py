"""The code blocks of docs/workflows.md run as written (so the guide stays true)."""

from __future__ import annotations

from tests.support.docs import run_code_blocks


def test_workflow_guide_examples_run() -> None:
    run_code_blocks("workflows.md", blocks_min=10)
