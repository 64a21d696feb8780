"""Running the Python code blocks of a page in docs/, so the documentation stays true."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def run_code_blocks(page: str, *, blocks_min: int) -> None:
    """Execute every ```python block of ``docs/<page>`` in order, in one namespace."""
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= blocks_min, f"docs/{page} has {len(blocks)} code blocks"
    namespace: dict[str, object] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"docs/{page} block {number}", "exec"), namespace)
