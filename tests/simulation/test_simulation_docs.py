"""The code blocks of docs/simulation.md run as written (so the page stays true)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_simulation_guide_examples_run() -> None:
    text = (DOCS / "simulation.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {"__name__": "docs_simulation"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"docs/simulation.md block {number}", "exec")
        exec(code, namespace)
