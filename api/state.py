"""Everything one API process holds: settings, tokens, the in-memory views, clients, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as redis

from api.auth import TokenTable
from api.buffer import DecisionBuffer
from api.errors import ConfigError
from api.feed import KafkaFeed
from api.metrics import ApiMetrics
from api.narratives import NarrativeStore
from api.settings import ApiSettings
from api.verdicts import LabelPublisher, VerdictStore, WriteLimiter

log = logging.getLogger("fraudstream.api")


class ApiState:
    """Built once per app from its settings; ``start``/``stop`` run in the app's lifespan."""

    def __init__(self, settings: ApiSettings) -> None:
        if not settings.kafka_bootstrap or not settings.redis_url:
            raise ConfigError("set FRAUD_KAFKA_BOOTSTRAP and FRAUD_REDIS_URL for the API")
        self.settings = settings
        self.tokens = TokenTable.load(
            settings.api_tokens.get_secret_value(), settings.api_tokens_file
        )
        self.metrics = ApiMetrics()
        self.decisions = DecisionBuffer(settings.api_retention_events, settings.api_retention_cases)
        self.narratives = NarrativeStore(settings.api_retention_narratives)
        self.redis = redis.from_url(
            settings.redis_url,
            decode_responses=False,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
        )
        prefix = settings.redis_prefix
        self.verdicts = VerdictStore(
            self.redis,
            prefix,
            settings.api_verdict_ttl_days * 86_400,
            settings.api_audit_maxlen,
        )
        self.limiter = WriteLimiter(self.redis, prefix, settings.api_write_rate_per_min)
        self.labels = LabelPublisher(settings.kafka_bootstrap, settings.topic_labels)
        self.feed = KafkaFeed(
            settings.kafka_bootstrap,
            settings.topic_decisions,
            settings.topic_narratives,
            self.decisions,
            self.narratives,
            self.metrics,
            backlog=settings.api_retention_events,
            slice_size=max(1, settings.api_client_buffer // 4),
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if not len(self.tokens):
            log.warning("no API tokens configured: every /v1 route answers 401")
        self._tasks.append(asyncio.create_task(self.feed.run(), name="kafka-feed"))
        self._tasks.append(asyncio.create_task(self._start_labels(), name="label-producer"))
        log.info("api started", extra={"settings": self.settings.public()})

    async def _start_labels(self) -> None:
        try:
            await self.labels.start()
        except Exception as exc:  # a verdict will try again
            log.warning("label producer not started yet", extra={"error": str(exc)})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.labels.stop()
        await self.redis.aclose()

    async def check_redis(self, timeout: float = 2.0) -> str | None:
        """None when Redis answers PING, else what is wrong."""
        try:
            async with asyncio.timeout(timeout):
                await self.redis.ping()
        except TimeoutError:
            return f"no PING answer within {timeout:.0f}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None
