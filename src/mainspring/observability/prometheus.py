"""Render OpenTelemetry SDK metric data in the Prometheus text exposition format 0.0.4.

Monotonic sums become counters named ``<name>_total`` (in their ``# HELP`` and ``# TYPE``
lines too, as the 0.0.4 parsers expect), non-monotonic sums and gauges become gauges,
explicit-bucket histograms become ``<name>_bucket{le=...}``, ``<name>_sum`` and
``<name>_count``. Exponential histograms have no 0.0.4 form and are left out.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of the text ``render`` returns."""

_INVALID_NAME_CHARACTERS: Final = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARACTERS: Final = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """``name`` with every character Prometheus does not allow in a metric name as ``_``."""
    assert name, "a metric has a name"
    cleaned = _INVALID_NAME_CHARACTERS.sub("_", name)
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def label_name(name: str) -> str:
    """``name`` as a Prometheus label name."""
    assert name, "a label has a name"
    cleaned = _INVALID_LABEL_CHARACTERS.sub("_", name)
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A ``# HELP`` text escaped for the text format: backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, ``+Inf``, ``-Inf`` and ``NaN`` by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _labels(attributes: Mapping[str, Any] | None, extra: tuple[str, str] | None = None) -> str:
    pairs = [
        (label_name(key), _label_text(value)) for key, value in sorted((attributes or {}).items())
    ]
    if extra is not None:
        pairs.append(extra)
    if not pairs:
        return ""
    inner = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in pairs)
    return "{" + inner + "}"


def _label_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return format_value(value)
    return str(value)


def _sort_key(point: NumberDataPoint | HistogramDataPoint) -> list[tuple[str, str]]:
    return sorted((key, _label_text(value)) for key, value in (point.attributes or {}).items())


def _family(metric: Metric) -> tuple[str, str, list[str]] | None:
    """``(name, type, sample lines)`` of one metric, or None when it has no 0.0.4 form."""
    data = metric.data
    base = metric_name(metric.name)
    lines: list[str] = []
    if isinstance(data, Sum) and data.is_monotonic:
        name = base if base.endswith("_total") else f"{base}_total"
        for point in sorted(data.data_points, key=_sort_key):
            lines.append(f"{name}{_labels(point.attributes)} {format_value(point.value)}")
        return name, "counter", lines
    if isinstance(data, Sum | Gauge):
        for point in sorted(data.data_points, key=_sort_key):
            lines.append(f"{base}{_labels(point.attributes)} {format_value(point.value)}")
        return base, "gauge", lines
    if isinstance(data, Histogram):
        for histogram_point in sorted(data.data_points, key=_sort_key):
            lines.extend(_histogram_lines(base, histogram_point))
        return base, "histogram", lines
    return None


def _histogram_lines(name: str, point: HistogramDataPoint) -> list[str]:
    bounds = list(point.explicit_bounds)
    counts = list(point.bucket_counts)
    assert len(counts) == len(bounds) + 1, (name, bounds, counts)
    lines: list[str] = []
    cumulative = 0
    for bound, count in zip([*bounds, math.inf], counts, strict=True):
        cumulative += count
        labels = _labels(point.attributes, ("le", format_value(float(bound))))
        lines.append(f"{name}_bucket{labels} {cumulative}")
    assert cumulative == point.count, (name, cumulative, point.count)
    labels = _labels(point.attributes)
    lines.append(f"{name}_sum{labels} {format_value(point.sum)}")
    lines.append(f"{name}_count{labels} {point.count}")
    return lines


def _metrics(data: MetricsData | None) -> Iterable[Metric]:
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            yield from scope_metrics.metrics


def render(data: MetricsData | None, extra: Iterable[Metric] = ()) -> str:
    """``data`` (from a metric reader's collection) and the ``extra`` metrics as Prometheus
    text, families sorted by name.

    A family whose name appears twice (two scopes) is written once, with the samples of both.
    """
    families: dict[str, tuple[str, str, list[str]]] = {}
    for metric in itertools.chain(_metrics(data), extra):
        family = _family(metric)
        if family is None:
            continue
        name, kind, lines = family
        known = families.get(name)
        if known is None:
            families[name] = (kind, metric.description or "", lines)
        elif known[0] == kind:
            known[2].extend(lines)
    out: list[str] = []
    for name in sorted(families):
        kind, description, lines = families[name]
        if description:
            out.append(f"# HELP {name} {escape_help(description)}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""
