"""Fixtures of the cluster tests: real node processes come from the command-line tests."""

from __future__ import annotations

from tests.cli.conftest import node_process

__all__ = ["node_process"]
