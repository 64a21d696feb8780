"""The gateway's server: the aiohttp application and its lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from aiohttp import web

from mainspring.errors import UsageError

if TYPE_CHECKING:
    from mainspring.node import Node

__all__ = ["Gateway"]


class Gateway:
    """Serves a node over HTTP.

    Args:
        node: the node whose workflows and actors the API reaches (started by the caller).
        tokens: bearer tokens accepted on ``/v1`` routes; empty means no authentication.
        body_max_bytes: the largest request body accepted (larger ones get 413).
    """

    def __init__(
        self, node: Node, *, tokens: Sequence[str] = (), body_max_bytes: int = 1 << 20
    ) -> None:
        self.node: Final = node
        self.tokens: Final = frozenset(tokens)
        self.body_max_bytes: Final = body_max_bytes
        self.app: Final = web.Application(client_max_size=body_max_bytes)
        self.app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Listen on ``host:port`` (port 0 picks a free one) and return the base URL.

        Raises:
            UsageError: the address cannot be bound (port taken, unknown host).
        """
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._runner = runner
        bound = runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        """Stop accepting connections and close the server. Idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
