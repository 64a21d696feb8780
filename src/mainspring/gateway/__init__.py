"""The HTTP gateway: a node's public JSON API under ``/v1``, health, metrics and OpenAPI.

``Gateway(node)`` builds the aiohttp application; ``await gateway.start(host, port)`` serves it.
"""

from __future__ import annotations

from mainspring.gateway.server import Gateway as Gateway

__all__ = ["Gateway"]
