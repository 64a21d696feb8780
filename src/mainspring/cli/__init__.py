"""The ``mainspring`` command line: run a node, operate workflows, run simulations.

Each command lives in its own module and is imported only when it runs.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

import click

__all__ = ["main"]

_COMMANDS: Final = {
    "cluster": ("mainspring.cli.cluster", "cluster"),
    "node": ("mainspring.cli.node", "node"),
    "workflows": ("mainspring.cli.workflows", "workflows"),
    "simulate": ("mainspring.cli.simulate", "simulate"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attribute = entry
        command: Any = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(package_name="mainspring")
def main() -> None:
    """mainspring: durable workflows on event-sourced actors."""
