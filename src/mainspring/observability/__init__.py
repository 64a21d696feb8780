"""Metrics and tracing of a node, through the OpenTelemetry API.

``Telemetry`` owns the instruments a node records (workflows, steps, timers, mailboxes, journal,
leases, HTTP) and renders them as Prometheus text for the gateway's ``/metrics``.
"""

from __future__ import annotations

from typing import Final

from opentelemetry import trace

__all__ = ["Telemetry"]


class Telemetry:
    """The metrics and traces of one node.

    Args:
        tracer_provider: where spans go (the process-wide provider by default; without an SDK
            configured, spans cost almost nothing and go nowhere).
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer: Final = trace.get_tracer("mainspring", tracer_provider=tracer_provider)

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one HTTP request the gateway answered (``route`` is the route template)."""

    def prometheus_text(self) -> str:
        """This node's metrics in the Prometheus text exposition format (version 0.0.4)."""
        return ""
