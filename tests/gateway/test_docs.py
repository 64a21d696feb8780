"""docs/http.md runs as written and documents every route and every error code."""

from __future__ import annotations

import re

from mainspring.gateway.errors import ERROR_CODES
from mainspring.gateway.routes import ROUTES
from tests.support.docs import DOCS, run_code_blocks


def test_http_guide_examples_run() -> None:
    """The guide's Python blocks (serving a node with the gateway) run as written."""
    run_code_blocks("http.md", blocks_min=1)


def test_http_guide_names_every_route_and_error_code() -> None:
    """Each route appears with its method and path (as a heading or a curl example), and the
    error table lists every code with its status."""
    text = (DOCS / "http.md").read_text()
    for route in ROUTES:
        # A path parameter matches its template ("{id}") or a concrete value ("order-1001").
        pattern = "".join(
            rf"(\{{{part[1:-1]}\}}|[^/\s?\"]+)" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[a-z_]+\})", route.path)
        )
        assert re.search(pattern + r"(?![\w/{])", text), (route.method, route.path)
    for code, status in ERROR_CODES.items():
        if status == 500:
            assert f"500 `{code}`" in text, code
            continue
        assert f"| {status} | `{code}` |" in text, code
