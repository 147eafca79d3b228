"""The worker's Prometheus series, and the HTTP endpoint that serves them.

* :class:`WorkerCollector` reads the worker's own tallies (:class:`processor.app.Counters`) and
  its scorer at scrape time: decisions by action, transactions scored, escalations, dead-lettered
  records, labels, model swaps, Redis retries, and the model version in use. The scoring path
  pays nothing per transaction for them and no number is kept twice.
* :data:`BATCHES` (:class:`BatchMetrics`) takes one call per scored batch: the batch's size and
  how long its decisions took, counted once per decision so the quantiles are per decision.
* :func:`serve` starts ``prometheus_client``'s HTTP server on ``FRAUD_METRICS_HOST`` /
  ``FRAUD_METRICS_PORT`` with the default registry, where the narrator's ``fraudstream_llm_*``
  series (:mod:`processor.llm`) live as well.

Series (``fraudstream_`` prefix): ``decisions_total{action}``, ``transactions_scored_total``,
``escalations_total``, ``dead_letters_total``, ``labels_total``, ``model_swaps_total``,
``redis_retries_total``, ``model_version``, ``model_info{model_version, policy_version}``,
``decision_latency_seconds`` and ``batch_transactions`` (histograms).
"""

from __future__ import annotations

import bisect
import logging
import math
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from models.records import Action
from processor.settings import Settings

if TYPE_CHECKING:
    from processor.app import Runtime

__all__ = ["BATCHES", "BatchMetrics", "WorkerCollector", "pick_port", "serve", "shown_host"]

log = logging.getLogger("fraudstream.worker")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_000.0, 5_000.0)


class WorkerCollector(Collector):
    """The worker's tallies and model, as Prometheus series read when scraped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        counters = self.runtime.counters
        by_action = dict(counters.by_action)  # one copy: the event loop may add a key meanwhile
        decisions = CounterMetricFamily(
            "fraudstream_decisions", "Decisions published, by action.", labels=["action"]
        )
        for action in Action:
            decisions.add_metric([action.value], by_action.pop(action.value, 0))
        for other, count in sorted(by_action.items()):
            decisions.add_metric([other], count)
        yield decisions
        for name, text, value in (
            ("transactions_scored", "Transactions scored.", counters.scored),
            ("escalations", "Cases sent to the narrator (review, decline).", counters.escalated),
            (
                "dead_letters",
                "Records sent to a dead-letter topic (transactions, labels): not JSON or invalid.",
                counters.dead_lettered,
            ),
            ("labels", "Labels recorded in the feature store.", counters.labels),
            ("model_swaps", "Newer checkpoints swapped into the scorer.", counters.model_swaps),
            (
                "redis_retries",
                "Redis calls retried while Redis was unavailable.",
                counters.redis_retries,
            ),
        ):
            yield CounterMetricFamily(f"fraudstream_{name}", text, value=value)
        yield from self._model()

    def _model(self) -> Iterator[Metric]:
        """The checkpoint the scorer uses; nothing until the scorer has loaded one."""
        scorer = self.runtime.scorer
        if scorer is None:
            return
        checkpoint = scorer.checkpoint
        yield GaugeMetricFamily(
            "fraudstream_model_version",
            "Version of the model checkpoint the scorer uses (0: a fresh, untrained model).",
            value=checkpoint.version,
        )
        info = GaugeMetricFamily(
            "fraudstream_model_info",
            "The model and policy versions decisions are named with (always 1).",
            labels=["model_version", "policy_version"],
        )
        info.add_metric([checkpoint.model_version, str(scorer.policy.version)], 1)
        yield info


class _WeightedHistogram:
    """Bucket counts where one observation may stand for many events (a batch of decisions)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float, weight: int) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.total += value * weight

    def family(self, name: str, text: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if math.isinf(bound) else repr(bound), running))
        return HistogramMetricFamily(name, text, buckets=cumulative, sum_value=self.total)


class BatchMetrics(Collector):
    """Per scored batch: its size and its decisions' latency, one :meth:`observe` per batch."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._lock = threading.Lock()  # the scrape runs in the HTTP server's thread
        self._latency = _WeightedHistogram(LATENCY_BUCKETS)
        self._sizes = _WeightedHistogram(BATCH_BUCKETS)
        if registry is not None:
            registry.register(self)

    def observe(self, size: int, seconds: float) -> None:
        """A batch of ``size`` decisions, all on the broker ``seconds`` after the batch began."""
        with self._lock:
            self._latency.observe(seconds, size)
            self._sizes.observe(float(size), 1)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield self._latency.family(
                "fraudstream_decision_latency_seconds",
                "From the start of a decision's batch (after at most FRAUD_BATCH_WAIT_MS of "
                "waiting for it to fill) to the decision acknowledged by the broker; one count "
                "per decision.",
            )
            yield self._sizes.family(
                "fraudstream_batch_transactions", "Valid transactions per scored batch."
            )


BATCHES = BatchMetrics()


def serve(settings: Settings, runtime: Runtime) -> str | None:
    """Serve the default registry, with the worker's series, over HTTP; the URL, or None if off.

    A port that is taken is logged as an error and the worker runs on without ``/metrics``:
    a missing scrape target is an alert, a fraud pipeline stopped over it would be an outage.
    """
    if settings.metrics_port == 0:
        log.info("metrics endpoint off (FRAUD_METRICS_PORT=0)")
        return None
    REGISTRY.register(WorkerCollector(runtime))
    host, port = settings.metrics_host, settings.metrics_port
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error(
            "metrics endpoint not started: the worker runs without /metrics",
            extra={"metrics_host": host, "metrics_port": port, "error": str(exc)},
        )
        return None
    url = f"http://{shown_host(host)}:{port}/metrics"
    log.info(
        "metrics endpoint listening",
        extra={"metrics_host": host, "metrics_port": port, "metrics_url": url},
    )
    return url


def shown_host(host: str) -> str:
    """The address to connect to for a server bound to ``host`` (all interfaces: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def pick_port(host: str, wanted: int) -> int:
    """``wanted`` if nothing listens on it at ``host``, else a port the kernel finds free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, wanted))
        except OSError:
            sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
