"""The worker's Prometheus series, and the HTTP endpoint that serves them.

* :class:`WorkerCollector` reads the worker's own tallies (:class:`processor.runtime.Counters`) and
  its scorer at scrape time: decisions by action, transactions scored, escalations, dead-lettered
  records, labels, model swaps, Redis retries, and the model version in use. The scoring path
  pays nothing per transaction for them and no number is kept twice.
* :data:`BATCHES` (:class:`BatchMetrics`) takes one call per scored batch: the batch's size and
  how long its decisions took, counted once per decision so the quantiles are per decision.
* :func:`serve` starts an HTTP server on ``FRAUD_METRICS_HOST`` / ``FRAUD_METRICS_PORT``, in a
  thread of its own: ``/metrics`` is ``prometheus_client``'s exposition of the default registry,
  where the narrator's ``fraudstream_llm_*`` series (:mod:`processor.llm`) live as well, and
  ``/healthz`` is the liveness check.
* :class:`Heartbeat` is what ``/healthz`` reads. The server's thread answers even while the event
  loop is stuck (an agent spinning in a loop that never awaits, a blocking call), so being able to
  answer proves nothing: the loop itself stamps the heartbeat every second, and ``/healthz`` fails
  (503) once the stamp is older than ``FRAUD_LIVENESS_STALL_S``.

Series (``fraudstream_`` prefix): ``decisions_total{action}``, ``transactions_scored_total``,
``escalations_total``, ``dead_letters_total``, ``labels_total``, ``model_swaps_total``,
``redis_retries_total``, ``model_version``, ``model_info{model_version, policy_version}``,
``decision_latency_seconds`` and ``batch_transactions`` (histograms), and
``event_loop_stall_seconds`` (time since the loop's last heartbeat).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from models.records import Action
from processor.settings import Settings

if TYPE_CHECKING:
    from processor.runtime import Runtime

__all__ = [
    "BATCHES",
    "BatchMetrics",
    "Heartbeat",
    "WorkerCollector",
    "pick_port",
    "serve",
    "shown_host",
]

log = logging.getLogger("fraudstream.worker")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_000.0, 5_000.0)


class WorkerCollector(Collector):
    """The worker's tallies and model, as Prometheus series read when scraped."""

    def __init__(self, runtime: Runtime, heartbeat: Heartbeat | None = None) -> None:
        self.runtime = runtime
        self.heartbeat = heartbeat

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
        if self.heartbeat is not None:
            yield GaugeMetricFamily(
                "fraudstream_event_loop_stall_seconds",
                "Seconds since the worker's event loop last stamped its heartbeat (every second).",
                value=self.heartbeat.stalled_for(),
            )
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


class Heartbeat:
    """When the worker's event loop last ran a callback: the liveness ``/healthz`` reports.

    :meth:`start` schedules a stamp every ``every`` seconds on the loop; while anything blocks
    the loop, no stamp is made and :meth:`stalled_for` grows.
    """

    def __init__(
        self, stall_after: float, *, every: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stall_after = stall_after
        self.every = every
        self.clock = clock
        self.last = clock()
        self._reported = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stamp on ``loop`` from its first turn on (call before the loop runs, or from it)."""

        def stamp() -> None:
            self.last = self.clock()
            loop.call_later(self.every, stamp)

        loop.call_soon_threadsafe(stamp)

    def stalled_for(self) -> float:
        """Seconds since the last stamp (0 right after one)."""
        return max(0.0, self.clock() - self.last)

    def check(self) -> tuple[bool, str]:
        """``(alive, one line)``; logs a stall once when it is first seen, and its end."""
        stalled = self.stalled_for()
        alive = stalled <= self.stall_after
        if not alive and not self._reported:
            log.error(
                "event loop stalled: /healthz fails until it runs again",
                extra={"stalled_s": round(stalled, 1), "stall_after_s": self.stall_after},
            )
        elif alive and self._reported:
            log.warning("event loop running again", extra={"stalled_s": round(stalled, 1)})
        self._reported = not alive
        if alive:
            return True, "ok"
        return False, f"event loop stalled for {stalled:.0f} s (limit {self.stall_after:g} s)"


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


_WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


def endpoint(
    heartbeat: Heartbeat, registry: CollectorRegistry = REGISTRY
) -> Callable[[dict[str, Any], _WsgiStart], Iterable[bytes]]:
    """The WSGI app of the worker's HTTP port: ``/healthz``, else Prometheus' exposition."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: _WsgiStart) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        alive, text = heartbeat.check()
        status = "200 OK" if alive else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [text.encode() + b"\n"]

    return app


def serve(settings: Settings, runtime: Runtime, heartbeat: Heartbeat) -> str | None:
    """Serve ``/metrics`` (the default registry, with the worker's series) and ``/healthz``
    over HTTP in a daemon thread; the metrics URL, or None if off.

    A port that is taken is logged as an error and the worker runs on without the endpoint:
    a missing scrape target is an alert, a fraud pipeline stopped over it would be an outage.
    """
    if settings.metrics_port == 0:
        log.info("metrics endpoint off (FRAUD_METRICS_PORT=0)")
        return None
    REGISTRY.register(WorkerCollector(runtime, heartbeat))
    host, port = settings.metrics_host, settings.metrics_port
    try:
        start_server(host, port, endpoint(heartbeat))
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


def start_server(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> ThreadingWSGIServer:
    """A threaded WSGI server for ``app`` on ``host:port``, serving from a daemon thread."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd


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
