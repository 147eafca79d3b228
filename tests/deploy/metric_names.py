"""The Prometheus series the code exports, and the series the alerts and the dashboard query.

The exported names come from the metric objects themselves (``api/metrics.py``,
``processor/metrics.py``, ``processor/llm.py``), built on registries of their own, with the
suffixes Prometheus gives each type (``_total`` for counters, ``_bucket``/``_sum``/``_count``
for histograms). A query naming a ``fraudstream_*`` series that no code exports fails the check;
the only other series allowed are the few in :data:`EXTERNAL` that the platform provides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

__all__ = ["EXTERNAL", "check_metric_names", "exported_series", "queried_series"]

# Strimzi's Kafka Exporter (consumer lag) and Prometheus' own scrape health.
EXTERNAL = frozenset({"kafka_consumergroup_lag", "up"})
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def _names(metric: Metric) -> set[str]:
    return {metric.name + s for s in SUFFIXES.get(metric.type, ("",))}


@cache
def exported_series() -> frozenset[str]:
    """Every series name the worker (with its narrator) and the API can export."""
    from api.metrics import ApiMetrics
    from processor.llm import LLMMetrics
    from processor.metrics import BatchMetrics, Heartbeat, WorkerCollector
    from processor.runtime import Counters

    registry = CollectorRegistry()
    LLMMetrics(registry=registry)
    BatchMetrics(registry=registry)
    # The collector reads the worker's tallies and its scorer's checkpoint when scraped.
    checkpoint = SimpleNamespace(version=1, model_version="v1")
    scorer = SimpleNamespace(checkpoint=checkpoint, policy=SimpleNamespace(version="p1"))
    runtime = SimpleNamespace(counters=Counters(), scorer=scorer)
    registry.register(WorkerCollector(runtime, Heartbeat(30.0)))  # type: ignore[arg-type]
    names: set[str] = set()
    for reg in (registry, ApiMetrics().registry):
        for metric in reg.collect():
            names |= _names(metric)
    return frozenset(names)


def queried_series(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords, labels left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    found = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        found.add(name)
    return found


def check_metric_names(exprs: Iterable[str], label: str, exported: frozenset[str]) -> list[str]:
    """Names queried by ``exprs`` that neither the code nor the platform exports."""
    problems = []
    for expr in exprs:
        for name in sorted(queried_series(expr)):
            if name not in exported and name not in EXTERNAL:
                problems.append(
                    f"{label}: {name} is exported by no code here ({expr.strip()[:60]})"
                )
    return problems
