"""Metrics and tracing of a node, through the OpenTelemetry API.

``Telemetry`` owns the instruments a node records (workflows, steps, timers, mailboxes, journal,
leases, HTTP) in its own OpenTelemetry SDK ``MeterProvider`` (never the process-wide one, so
several nodes in one process keep their numbers apart), and renders them as Prometheus text for
the gateway's ``/metrics``. The families and their labels are listed in ``docs/observability.md``.

Counters the node already keeps (``node.statistics()``) and the labelled counters below
(``_LabelledCounts``) are read by observable instruments when metrics are collected, so the hot
paths pay one dictionary increment; histograms are recorded where they happen, the per-request
HTTP one in plain bucket counts (``_LabelledHistogram``) unless exporters need the SDK's.
Nothing here starts a thread or reads a clock: metrics are collected on demand
(``prometheus_text``), and times come from the node's clock seam.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mainspring.errors import UsageError
from mainspring.observability.prometheus import CONTENT_TYPE, render

if TYPE_CHECKING:
    from mainspring.node import Node

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "WORKFLOW_GAUGE_STATUSES",
    "Telemetry",
    "current_traceparent",
    "trace_context",
]

log: Final = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE: Final = CONTENT_TYPE
"""The ``Content-Type`` of ``Telemetry.prometheus_text()`` (text format 0.0.4)."""

WORKFLOW_GAUGE_STATUSES: Final = ("running", "waiting", "paused", "stalled", "failed")
"""The statuses ``mainspring_workflows`` counts from the instance index."""

_WORKFLOW_ACTOR_TYPE: Final = "mainspring.workflow"
_COUNT_PAGE: Final = 1000
_LATENCY_BUCKETS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
_PROPAGATOR: Final = TraceContextTextMapPropagator()


class _LabelledCounts:
    """A monotonic counter by label values, kept as plain integers and read by an observable
    counter when metrics are collected (the SDK's ``Counter.add`` costs ~5 µs a call)."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels: Final = labels
        self.counts: Final[dict[tuple[str, ...], int]] = {}

    def add(self, *values: str) -> None:
        assert len(values) == len(self.labels), (values, self.labels)
        counts = self.counts
        counts[values] = counts.get(values, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # A copy first: an exporter may collect on its own thread while the loop counts.
        return [
            Observation(count, dict(zip(self.labels, values, strict=True)))
            for values, count in list(self.counts.items())
        ]


class _LabelledHistogram:
    """A histogram by label values over fixed buckets, kept as plain numbers and rendered with
    the SDK's metrics by ``prometheus_text`` (the SDK's ``Histogram.record`` costs ~6 µs a
    call, and this one is recorded once per HTTP request)."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        labels: tuple[str, ...],
        bounds: Sequence[float],
    ) -> None:
        assert list(bounds) == sorted(set(bounds)), bounds
        self.name: Final = name
        self.unit: Final = unit
        self.description: Final = description
        self.labels: Final = labels
        self.bounds: Final = tuple(bounds)
        self._points: Final[dict[tuple[str, ...], _HistogramPoint]] = {}

    def record(self, values: tuple[str, ...], amount: float) -> None:
        assert len(values) == len(self.labels), (values, self.labels)
        point = self._points.get(values)
        if point is None:
            point = self._points[values] = _HistogramPoint(len(self.bounds) + 1, amount)
        # A value on a bound counts in that bound's bucket (``le``), as the SDK's does.
        point.counts[bisect.bisect_left(self.bounds, amount)] += 1
        point.count += 1
        point.total += amount
        point.low = min(point.low, amount)
        point.high = max(point.high, amount)

    def metric(self) -> Metric:
        """The histogram as the SDK's metrics data (cumulative, no timestamps)."""
        points = [
            HistogramDataPoint(
                attributes=dict(zip(self.labels, values, strict=True)),
                start_time_unix_nano=0,
                time_unix_nano=0,
                count=point.count,
                sum=point.total,
                bucket_counts=list(point.counts),
                explicit_bounds=self.bounds,
                min=point.low,
                max=point.high,
            )
            for values, point in list(self._points.items())
        ]
        return Metric(
            self.name,
            self.description,
            self.unit,
            Histogram(points, AggregationTemporality.CUMULATIVE),
        )


class _HistogramPoint:
    __slots__ = ("count", "counts", "high", "low", "total")

    def __init__(self, buckets: int, first: float) -> None:
        self.counts = [0] * buckets
        self.count = 0
        self.total = 0.0
        self.low = first
        self.high = first


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span, or ``""`` outside a valid span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def trace_context(traceparent: str) -> Context | None:
    """The context whose current span is the remote span ``traceparent`` names (None for ``""``
    or a malformed value): spans started in it are children of that span."""
    if not traceparent:
        return None
    context = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


class Telemetry:
    """The metrics and traces of one node (give each node its own).

    Args:
        tracer_provider: where spans go. By default the process-wide provider; spans are made
            only when a provider was given here or set process-wide (``trace.set_tracer_provider``)
            before this object is built, so a node without tracing pays nothing for it.
        metric_readers: more readers for this node's ``MeterProvider``, e.g. a
            ``PeriodicExportingMetricReader`` over an OTLP exporter (it runs its own thread:
            not for the simulator). ``prometheus_text`` works with or without them.
        resource: the OpenTelemetry resource of the metrics (service name and so on).
        workflow_counts_interval_s: how often the node counts its workflows by status in the
            instance index for ``mainspring_workflows``, from the first time its metrics are
            read on (None: never). A node whose metrics nobody reads never counts.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metric_readers: Sequence[MetricReader] = (),
        resource: Resource | None = None,
        workflow_counts_interval_s: float | None = 15.0,
    ) -> None:
        if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
            raise UsageError(
                f"tracer_provider must be an opentelemetry TracerProvider, got {tracer_provider!r}"
            )
        for reader in metric_readers:
            if not isinstance(reader, MetricReader):
                raise UsageError(
                    f"metric_readers takes opentelemetry MetricReader objects, got {reader!r}"
                )
        if workflow_counts_interval_s is not None and (
            isinstance(workflow_counts_interval_s, bool)
            or not isinstance(workflow_counts_interval_s, int | float)
            or not workflow_counts_interval_s > 0
        ):
            raise UsageError(
                "workflow_counts_interval_s must be None or a number > 0, got "
                f"{workflow_counts_interval_s!r}"
            )
        self.tracer: Final = trace.get_tracer("mainspring", tracer_provider=tracer_provider)
        self.tracing: Final = tracer_provider is not None or not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )
        """Whether the node makes spans (see ``tracer_provider``)."""
        self.workflow_counts_interval_s: Final = workflow_counts_interval_s
        self._reader: Final = InMemoryMetricReader()
        self.meter_provider: Final = MeterProvider(
            metric_readers=[self._reader, *metric_readers],
            resource=resource,
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        """This node's metrics, aggregated by the OpenTelemetry SDK."""
        self._node: Node | None = None
        self._workflow_counts: dict[str, int] | None = None
        self._read = False
        """Whether the metrics were collected once (by any reader, on any thread)."""
        self._read_event: asyncio.Event | None = None
        self._read_loop: asyncio.AbstractEventLoop | None = None
        self._exporting: Final = bool(metric_readers)
        self._create_instruments()

    # Instruments ---------------------------------------------------------------------------------

    def _create_instruments(self) -> None:
        meter = self.meter_provider.get_meter("mainspring")

        def labelled(name: str, labels: tuple[str, ...], description: str) -> _LabelledCounts:
            counts = _LabelledCounts(labels)
            meter.create_observable_counter(name, [counts.observe], "1", description)
            return counts

        self._workflow_starts = labelled(
            "mainspring_workflow_starts",
            ("workflow_type",),
            "Workflow runs started, by workflow type.",
        )
        self._workflow_completions = labelled(
            "mainspring_workflow_completions",
            ("workflow_type", "status"),
            "Workflow runs ended, by workflow type and terminal status.",
        )
        self._step_attempts = labelled(
            "mainspring_step_attempts", ("step",), "Step attempts started, by step name."
        )
        self._step_retries = labelled(
            "mainspring_step_retries",
            ("step", "error"),
            "Failed step attempts that will be retried, by step name and error class.",
        )
        self._step_failures = labelled(
            "mainspring_step_failures",
            ("step", "error"),
            "Steps that failed for good (no attempt left or not retryable), by step name and "
            "error class.",
        )
        self._http_requests = labelled(
            "mainspring_http_requests",
            ("route", "method", "status"),
            "HTTP requests answered by the gateway, by route template, method and status.",
        )
        self._journal_commit_seconds = meter.create_histogram(
            "mainspring_journal_commit_seconds",
            "s",
            "Latency of one group commit: the store transaction every append of the batch "
            "waits for.",
            explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS_S,
        )
        self._journal_batch_requests = meter.create_histogram(
            "mainspring_journal_batch_requests",
            "1",
            "Append requests (one per actor) in one group commit.",
            explicit_bucket_boundaries_advisory=_BATCH_BUCKETS,
        )
        http_duration = (
            "mainspring_http_request_duration_seconds",
            "s",
            "Time to answer an HTTP request, by route template, method and status.",
        )
        # With exporters, the SDK's histogram (they read the SDK); without, a plain one that
        # /metrics renders with the rest, at a fraction of the cost per request.
        self._http_duration: _LabelledHistogram | None = None
        self._http_duration_sdk: Any = None
        if self._exporting:
            self._http_duration_sdk = meter.create_histogram(
                *http_duration, explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS_S
            )
        else:
            self._http_duration = _LabelledHistogram(
                *http_duration, ("route", "method", "status"), _LATENCY_BUCKETS_S
            )
        self._create_observed(meter)

    def _create_observed(self, meter: Any) -> None:
        counters = (
            ("mainspring_actor_messages", "Messages handled by actors.", self._host_counter,
             "messages"),
            ("mainspring_actor_activations", "Actors activated (hydrated).", self._host_counter,
             "activations"),
            ("mainspring_lease_acquisitions", "Leases this node acquired (each bumps an epoch).",
             self._host_counter, "leases_acquired"),
            ("mainspring_lease_renewals", "Leases this node renewed.", self._host_counter,
             "leases_renewed"),
            ("mainspring_lease_takeovers",
             "Leases of this node that another node took over (found when renewing).",
             self._host_counter, "leases_lost"),
            ("mainspring_journal_commits", "Group commits (store transactions) that succeeded.",
             self._journal_counter, "commits"),
            ("mainspring_journal_events", "Events committed.", self._journal_counter, "events"),
            ("mainspring_journal_failed_batches",
             "Group commits the store failed as a whole (unavailable, or ambiguous).",
             self._journal_counter, "failed_batches"),
            ("mainspring_reminders_fired", "Due reminders (durable timers) fired.",
             self._scan_counter, "reminders_fired"),
            ("mainspring_outbox_delivered", "Outbox messages delivered.", self._scan_counter,
             "outbox_delivered"),
        )  # fmt: skip
        for name, description, source, field in counters:
            meter.create_observable_counter(
                name, [self._counter_callback(source, field)], "1", description
            )
        meter.create_observable_counter(
            "mainspring_journal_rejections",
            [self._observe_rejections],
            "1",
            "Appends the store refused, by reason: fenced (a newer epoch owns the stream) or "
            "conflict (the stream head moved).",
        )
        gauges = (
            ("mainspring_workflows", self._observe_workflows, "1",
             "Workflows by status in the instance index (running, waiting, paused, stalled, "
             "failed), counted every workflow_counts_interval_s."),
            ("mainspring_live_actors", self._observe_live_actors, "1",
             "Actors live (activated) on this node."),
            ("mainspring_mailbox_messages", self._observe_mailbox_total, "1",
             "Messages queued in the mailboxes of all live actors."),
            ("mainspring_mailbox_messages_max", self._observe_mailbox_max, "1",
             "Messages queued in the fullest mailbox."),
            ("mainspring_mailbox_oldest_message_age_seconds", self._observe_mailbox_age, "s",
             "How long the oldest queued message of any live actor has waited."),
            ("mainspring_timer_lag_seconds", self._observe_timer_lag, "s",
             "Now minus the due time of the oldest overdue timer, at the last timer scan."),
        )  # fmt: skip
        for name, callback, unit, description in gauges:
            meter.create_observable_gauge(name, [callback], unit, description)
        cluster_counters = (
            ("mainspring_cluster_ring_changes", "Changes of this node's ring (members in or out).",
             "ring_changes"),
            ("mainspring_cluster_forwards", "Messages this node forwarded to their owner.",
             "forwarded"),
            ("mainspring_cluster_forward_failures",
             "Forwarded messages given up on (owner unreachable, or too many hops).",
             "forward_failures"),
            ("mainspring_cluster_hand_offs",
             "Live actors passivated because this node no longer owns them.", "hand_offs"),
            ("mainspring_cluster_takeover_waits",
             "Pauses of activations waiting for another node's lease to be released or expire.",
             "lease_waits"),
        )  # fmt: skip
        for name, description, field in cluster_counters:
            meter.create_observable_counter(name, [self._cluster_callback(field)], "1", description)
        meter.create_observable_gauge(
            "mainspring_cluster_members",
            [self._cluster_callback("members")],
            "1",
            "Members in this node's ring (live in its view).",
        )

    # Binding to a node ----------------------------------------------------------------------------

    def observe(self, node: Node) -> None:
        """Read ``node``'s counters and mailboxes when metrics are collected. Called by the node.

        A node that replaces a stopped one (a restart in the same process) may take over its
        ``Telemetry``: the counters the node keeps start again from zero, which Prometheus
        reads as a counter reset.

        Raises:
            UsageError: this object serves another node that has not stopped.
        """
        previous = self._node
        if previous is not None and previous is not node and previous.state != "stopped":
            raise UsageError(
                f"this Telemetry already serves node {previous.node_id!r} (which is "
                f"{previous.state}); give node {node.node_id!r} its own Telemetry() so their "
                "metrics stay apart"
            )
        self._node = node

    def _host_counter(self, field: str) -> int:
        assert self._node is not None
        value = getattr(self._node.host.statistics, field)
        assert isinstance(value, int)
        return value

    def _journal_counter(self, field: str) -> int:
        assert self._node is not None
        value = getattr(self._node.journal.statistics, field)
        assert isinstance(value, int)
        return value

    def _scan_counter(self, field: str) -> int:
        assert self._node is not None
        value = getattr(self._node.scan_statistics, field)
        assert isinstance(value, int)
        return value

    def _cluster_callback(self, field: str) -> Any:
        """Observes one number of the node's cluster (nothing for a node that runs alone)."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            cluster = None if self._node is None else self._node.cluster
            if cluster is None:
                return ()
            if field == "ring_changes":
                return (Observation(cluster.membership.ring_changes),)
            if field == "members":
                return (Observation(len(cluster.ring)),)
            value = getattr(cluster.router.statistics, field)
            assert isinstance(value, int)
            return (Observation(value),)

        return callback

    def _counter_callback(self, source: Any, field: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if self._node is None:
                return ()
            return (Observation(source(field)),)

        return callback

    def _observe_rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._node is None:
            return ()
        statistics = self._node.journal.statistics
        return (
            Observation(statistics.fenced, {"reason": "fenced"}),
            Observation(statistics.conflicts, {"reason": "conflict"}),
        )

    def _observe_workflows(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self._read:
            self._mark_read()
        counts = self._workflow_counts
        if counts is None:
            return ()
        return tuple(Observation(counts[status], {"status": status}) for status in counts)

    def _observe_live_actors(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._node is None:
            return ()
        return (Observation(len(self._node.host.live)),)

    def _observe_mailbox_total(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._node is None:
            return ()
        return (Observation(sum(len(a.mailbox) for a in self._node.host.live.values())),)

    def _observe_mailbox_max(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._node is None:
            return ()
        deepest = max((len(a.mailbox) for a in self._node.host.live.values()), default=0)
        return (Observation(deepest),)

    def _observe_mailbox_age(self, options: CallbackOptions) -> Iterable[Observation]:
        node = self._node
        if node is None:
            return ()
        oldest = min(
            (a.mailbox[0].accepted_s for a in node.host.live.values() if a.mailbox),
            default=None,
        )
        age_s = 0.0 if oldest is None else max(node.clock.monotonic_s() - oldest, 0.0)
        return (Observation(age_s),)

    def _observe_timer_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._node is None:
            return ()
        return (Observation(self._node.scan_statistics.timer_lag_ms / 1000),)

    def _mark_read(self) -> None:
        """The metrics are being collected: wake ``wait_until_read`` (from any thread)."""
        self._read = True
        event, loop = self._read_event, self._read_loop
        if event is None or loop is None:
            return  # wait_until_read looks at the flag again after it made its event
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def wait_until_read(self) -> None:
        """Return once the metrics were collected for the first time (a scrape of
        ``/metrics``, ``prometheus_text()``, or any other reader's collection), without waking
        up before: a node nobody watches does no metrics work on its own."""
        if self.was_read():
            return
        self._read_loop = asyncio.get_running_loop()
        self._read_event = asyncio.Event()
        if self.was_read():  # a reader on another thread came in between
            return
        await self._read_event.wait()

    def was_read(self) -> bool:
        """Whether the metrics were collected at least once."""
        return self._read

    async def refresh_workflow_counts(self) -> dict[str, int]:
        """Count the node's workflows by status (``WORKFLOW_GAUGE_STATUSES``) in the instance
        index now, for ``mainspring_workflows``, and return the counts.

        Costs one indexed read per 1000 workflows of each status counted.

        Raises:
            UsageError: no node uses this object yet.
            StoreUnavailable: the store could not be read (the previous counts stay).
        """
        node = self._node
        if node is None:
            raise UsageError("this Telemetry serves no node yet; pass it to Node(telemetry=...)")
        counts: dict[str, int] = {}
        for status in WORKFLOW_GAUGE_STATUSES:
            total = 0
            after: tuple[str, str] | None = None
            while True:
                page = await node.store.list_instances(
                    _WORKFLOW_ACTOR_TYPE, status, _COUNT_PAGE, after
                )
                total += len(page)
                if len(page) < _COUNT_PAGE:
                    break
                last = page[-1]
                assert after is None or (last.actor_type, last.actor_id) > after
                after = (last.actor_type, last.actor_id)
            counts[status] = total
        self._workflow_counts = counts
        return counts

    # Recording points -----------------------------------------------------------------------------

    def workflow_started(self, workflow_type: str) -> None:
        """Count a workflow run that started (after its start committed)."""
        self._workflow_starts.add(workflow_type)

    def workflow_closed(self, workflow_type: str, status: str) -> None:
        """Count a workflow run that ended with ``status`` (after the end committed)."""
        self._workflow_completions.add(workflow_type, status)

    def step_attempt(self, step: str) -> None:
        """Count a step attempt that starts."""
        self._step_attempts.add(step)

    def step_retry(self, step: str, error: str) -> None:
        """Count a failed step attempt that will be retried (``error``: the exception class)."""
        self._step_retries.add(step, error)

    def step_failed(self, step: str, error: str) -> None:
        """Count a step that failed for good (``error``: the exception class)."""
        self._step_failures.add(step, error)

    def journal_committed(self, duration_s: float, requests: int) -> None:
        """Record one group commit: its store transaction's latency and its size."""
        assert duration_s >= 0, duration_s
        assert requests >= 1, requests
        self._journal_commit_seconds.record(duration_s)
        self._journal_batch_requests.record(requests)

    def http_request(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one HTTP request the gateway answered (``route`` is the route template, such
        as ``/v1/workflows/{workflow_id}``, never the raw path: the labels must stay few).

        Raises:
            UsageError: an argument has the wrong type or an impossible value.
        """
        if not isinstance(route, str) or not route:
            raise UsageError(f"route must be a non-empty route template, got {route!r}")
        if not isinstance(method, str) or not method:
            raise UsageError(f"method must be a non-empty HTTP method, got {method!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise UsageError(f"status must be an HTTP status code (100-599), got {status!r}")
        if (
            isinstance(duration_s, bool)
            or not isinstance(duration_s, int | float)
            or not math.isfinite(duration_s)
            or duration_s < 0
        ):
            raise UsageError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        status_text = str(status)
        self._http_requests.add(route, method, status_text)
        if self._http_duration is not None:
            self._http_duration.record((route, method, status_text), duration_s)
        else:
            self._http_duration_sdk.record(
                duration_s, {"route": route, "method": method, "status": status_text}
            )

    # Export ---------------------------------------------------------------------------------------

    def prometheus_text(self) -> str:
        """This node's metrics in the Prometheus text exposition format (version 0.0.4); serve
        it with ``PROMETHEUS_CONTENT_TYPE``."""
        extra = () if self._http_duration is None else (self._http_duration.metric(),)
        return render(self._reader.get_metrics_data(), extra)

    def shutdown(self) -> None:
        """Flush and stop the extra ``metric_readers`` (exporters). Idempotent enough: a second
        call only logs a warning from the SDK."""
        self.meter_provider.shutdown()
