"""Each request makes one server span named by its route template, with method and status."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mainspring.observability import Telemetry
from mainspring.persistence.memory import MemoryStore
from tests.gateway.support import serve


async def test_a_server_span_per_request() -> None:
    """Successful, refused, unauthorised and unmatched requests each leave one server span
    with the route template (never the raw path), the method and the status."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with serve(MemoryStore(), telemetry=Telemetry(tracer_provider=provider)) as served:
        sent = [
            ("POST", "/v1/workflows/gw.count", {"id": "traced", "input": 2}, 201),
            ("GET", "/v1/workflows/traced", None, 200),
            ("GET", "/v1/workflows/unknown-id", None, 404),
            ("GET", "/nowhere/at/all", None, 404),
            ("GET", "/healthz", None, 200),
        ]
        for method, path, body, expected in sent:
            status, answer, _ = await served.call(method, path, json=body)
            assert status == expected, (path, answer)
        status, _, _ = await served.call("GET", "/v1/workflows", token="wrong")
        assert status == 401
    server_spans = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    seen = [
        (
            span.name,
            span.attributes["http.route"],
            span.attributes["http.request.method"],
            span.attributes["http.response.status_code"],
        )
        for span in server_spans
        if span.attributes is not None
    ]
    assert seen == [
        ("POST /v1/workflows/{type}", "/v1/workflows/{type}", "POST", 201),
        ("GET /v1/workflows/{id}", "/v1/workflows/{id}", "GET", 200),
        ("GET /v1/workflows/{id}", "/v1/workflows/{id}", "GET", 404),
        ("GET unmatched", "unmatched", "GET", 404),
        ("GET /healthz", "/healthz", "GET", 200),
        ("GET /v1/workflows", "/v1/workflows", "GET", 401),
    ]
    assert all(span.status.status_code != StatusCode.ERROR for span in server_spans)


async def test_a_client_traceparent_makes_the_request_part_of_its_trace() -> None:
    """A request carrying a W3C ``traceparent`` header is served in the client's trace, and
    the workflow it starts runs its steps in that trace too."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    async with serve(MemoryStore(), telemetry=Telemetry(tracer_provider=provider)) as served:
        status, answer, _ = await served.call(
            "POST",
            "/v1/workflows/gw.count",
            json={"id": "from-a-client", "input": 2},
            headers={"traceparent": parent},
        )
        assert status == 201, answer
        status, answer, _ = await served.call("GET", "/v1/workflows/from-a-client?wait=10")
        assert status == 200, answer
        assert answer["status"] == "completed", answer
    server = [
        span
        for span in exporter.get_finished_spans()
        if span.kind == SpanKind.SERVER and span.name == "POST /v1/workflows/{type}"
    ]
    assert len(server) == 1
    assert format(server[0].context.trace_id, "032x") == trace_id
    assert server[0].parent is not None
    assert format(server[0].parent.span_id, "016x") == "00f067aa0ba902b7"
    steps = [span for span in exporter.get_finished_spans() if span.name.startswith("step ")]
    assert steps
    assert all(format(span.context.trace_id, "032x") == trace_id for span in steps)
