"""The API's Prometheus metrics, on a registry of its own (one per app: tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ApiMetrics:
    """Every metric ``GET /metrics`` shows; names start with ``fraudstream_api_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fraudstream_api_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fraudstream_api_request_seconds",
            "Time to answer a request (SSE: to the end of the stream).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600),
            registry=r,
        )
        self.sse_clients = Gauge(
            "fraudstream_api_sse_clients", "Open SSE streams.", ["stream"], registry=r
        )
        self.events_streamed = Counter(
            "fraudstream_api_events_streamed", "SSE events sent.", ["stream"], registry=r
        )
        self.events_dropped = Counter(
            "fraudstream_api_events_dropped",
            "Decisions dropped for clients that did not keep up.",
            registry=r,
        )
        self.gaps = Counter(
            "fraudstream_api_gaps", "Gap events sent, by reason.", ["reason"], registry=r
        )
        self.verdicts = Counter(
            "fraudstream_api_verdicts", "Verdicts stored, by label.", ["verdict"], registry=r
        )
        self.rate_limited = Counter(
            "fraudstream_api_rate_limited", "Writes refused by the rate limit.", registry=r
        )
        self.records = Counter(
            "fraudstream_api_records",
            "Records consumed from Kafka, by topic and outcome (ok, invalid).",
            ["topic", "outcome"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fraudstream_api_consumer_lag",
            "Records on the broker not yet consumed by this replica.",
            ["topic"],
            registry=r,
        )
        self.buffered = Gauge(
            "fraudstream_api_buffered_decisions", "Decisions held in memory.", registry=r
        )
