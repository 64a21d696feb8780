"""The code blocks of docs/observability.md run as written (so the page stays true)."""

from __future__ import annotations

from tests.support.docs import run_code_blocks


def test_observability_guide_examples_run() -> None:
    run_code_blocks("observability.md", blocks_min=2)
