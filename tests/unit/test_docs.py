"""The code blocks of docs/actors.md run as written (so the guide stays true)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_actor_guide_examples_run() -> None:
    text = (DOCS / "actors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "docs_actors"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"docs/actors.md block {number}", "exec")
        exec(code, namespace)
