"""The Prometheus text renderer on known instruments, and Telemetry's own checks."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mainspring import UsageError
from mainspring.observability import Telemetry
from mainspring.observability.prometheus import render
from tests.observability.support import parse, total


def _gauge(options: CallbackOptions) -> Iterable[Observation]:
    return (Observation(3.5, {"pool": "a"}), Observation(-1, {"pool": "b"}))


def test_a_counter_a_histogram_and_a_gauge_render_exactly() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    meter = provider.get_meter("test")
    counter = meter.create_counter("demo_requests", "1", "Requests\nseen, by path \\ kind.")
    counter.add(2, {"path": 'a"b\\c\nd', "kind": "x"})
    counter.add(1, {"path": "/", "kind": "x"})
    histogram = meter.create_histogram(
        "demo.latency-seconds", "s", "Latency.", explicit_bucket_boundaries_advisory=[0.1, 1.0]
    )
    for value in (0.05, 0.5, 0.5, 2.0):
        histogram.record(value)
    meter.create_observable_gauge("demo_level", [_gauge], "1", "")
    text = render(reader.get_metrics_data())
    assert text == (
        "# HELP demo_latency_seconds Latency.\n"
        "# TYPE demo_latency_seconds histogram\n"
        'demo_latency_seconds_bucket{le="0.1"} 1\n'
        'demo_latency_seconds_bucket{le="1"} 3\n'
        'demo_latency_seconds_bucket{le="+Inf"} 4\n'
        "demo_latency_seconds_sum 3.05\n"
        "demo_latency_seconds_count 4\n"
        "# TYPE demo_level gauge\n"
        'demo_level{pool="a"} 3.5\n'
        'demo_level{pool="b"} -1\n'
        "# HELP demo_requests_total Requests\\nseen, by path \\\\ kind.\n"
        "# TYPE demo_requests_total counter\n"
        'demo_requests_total{kind="x",path="/"} 1\n'
        'demo_requests_total{kind="x",path="a\\"b\\\\c\\nd"} 2\n'
    )
    samples = parse(text)
    assert total(samples, "demo_requests_total") == 3


def test_nothing_collected_renders_nothing() -> None:
    assert render(None) == ""
    reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("t")
    assert render(reader.get_metrics_data()) == ""


def test_http_requests_are_counted_and_timed_by_route_method_and_status() -> None:
    telemetry = Telemetry()
    telemetry.http_request("/v1/workflows/{workflow_id}", "GET", 200, 0.003)
    telemetry.http_request("/v1/workflows/{workflow_id}", "GET", 200, 0.2)
    telemetry.http_request("/v1/workflows", "POST", 409, 0.01)
    samples = parse(telemetry.prometheus_text())
    route = "/v1/workflows/{workflow_id}"
    assert total(samples, "mainspring_http_requests_total", route=route, status="200") == 2
    assert total(samples, "mainspring_http_requests_total", method="POST", status="409") == 1
    assert total(samples, "mainspring_http_request_duration_seconds_count", route=route) == 2
    assert total(samples, "mainspring_http_request_duration_seconds_sum", route=route) == 0.203
    # Nothing is observed from a node before one uses this Telemetry.
    assert not any(name.startswith("mainspring_actor") for name, _ in samples)


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (("", "GET", 200, 0.1), "route"),
        (("/x", 1, 200, 0.1), "method"),
        (("/x", "GET", 99, 0.1), "status"),
        (("/x", "GET", True, 0.1), "status"),
        (("/x", "GET", 200, -1.0), "duration_s"),
        (("/x", "GET", 200, float("nan")), "duration_s"),
    ],
)
def test_http_request_refuses_bad_arguments_by_name(
    arguments: tuple[object, ...], complaint: str
) -> None:
    with pytest.raises(UsageError, match=complaint):
        Telemetry().http_request(*arguments)  # type: ignore[arg-type]


def test_telemetry_refuses_bad_settings() -> None:
    with pytest.raises(UsageError, match="workflow_counts_interval_s"):
        Telemetry(workflow_counts_interval_s=0)
    with pytest.raises(UsageError, match="metric_readers"):
        Telemetry(metric_readers=[object()])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="tracer_provider"):
        Telemetry(tracer_provider=object())  # type: ignore[arg-type]


def test_the_http_histogram_renders_as_the_sdk_histogram_it_replaces() -> None:
    """Without exporters the request durations are kept as plain numbers; with one, they go
    through the SDK so that the exporter sees them. /metrics shows the same family either way,
    bucket by bucket (a value on a bound counts in that bound's bucket)."""
    durations = [0.0005, 0.0004, 0.003, 0.0025, 0.2, 11.0, 0.0]
    texts = []
    for readers in ([], [InMemoryMetricReader()]):
        telemetry = Telemetry(metric_readers=readers)
        for index, duration in enumerate(durations):
            status = 200 if index % 2 else 404
            telemetry.http_request("/v1/workflows/{workflow_id}", "GET", status, duration)
        texts.append(
            [
                line
                for line in telemetry.prometheus_text().splitlines()
                if "http_request_duration" in line
            ]
        )
    plain, sdk = texts
    assert plain == sdk
    assert 'status="404",le="0.0005"} 2' in "\n".join(plain)
    samples = parse("\n".join(plain) + "\n")
    assert total(samples, "mainspring_http_request_duration_seconds_count") == len(durations)
    le = {"le": "0.0005", "status": "404"}
    # The 404s took 0.0005, 0.003, 0.2 and 0.0 s: two of them are <= 0.0005.
    assert total(samples, "mainspring_http_request_duration_seconds_bucket", **le) == 2
