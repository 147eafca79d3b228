"""The worker's state outside Faust: Redis, the scorer with the newest model, the learner.

A :class:`Runtime` is made once per worker process and shared by its agents (see
:mod:`processor.app`). The scorer starts from the newest checkpoint in Redis that this worker can
use (a fresh model if there is none) and swaps in newer ones between batches; the learner
continues from the same checkpoint with its own copy of the model. Redis errors are retried with
back-off and counted, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis

from models.checkpoint import Checkpoint
from models.features import FeatureConfig
from models.learner import DelayedLabelLearner
from models.model import FraudModel
from models.policy import Policy
from models.scoring import Scorer
from processor.checkpoints import RedisCheckpointStore
from processor.redis_store import RedisFeatureStore, RedisStoreError
from processor.settings import Settings

log = logging.getLogger("fraudstream.worker")

DAY = 86_400.0
# Redis unreachable, or answering with an error (out of memory, a read-only replica after a
# failover): the batch waits and is tried again, so nothing is decided without its features and
# nothing is skipped. A feature script refused at its first write has written nothing.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.ResponseError,
    RedisStoreError,
    ConnectionError,
    OSError,
)


def _fresh_checkpoint() -> Checkpoint:
    """Version 0: an untrained model, for a worker that finds none it can use."""
    return Checkpoint(version=0, created_at=time.time(), trained_on=0, model=FraudModel())


@dataclass
class Counters:
    """What the worker did since it started (read by tests, logs and metrics)."""

    scored: int = 0
    dead_lettered: int = 0
    escalated: int = 0
    labels: int = 0
    model_swaps: int = 0
    redis_retries: int = 0
    by_action: dict[str, int] = field(default_factory=dict)


class Runtime:
    """The worker's state outside Faust: Redis clients, the scorer, the learner."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("FRAUD_REDIS_URL is not set")
        self.settings = settings
        self.redis = redis.from_url(settings.redis_url, decode_responses=False)
        self.features = FeatureConfig(label_delay_days=settings.label_delay_days)
        self.store = RedisFeatureStore(self.redis, self.features, prefix=settings.redis_prefix)
        self.checkpoints = RedisCheckpointStore(self.redis, prefix=settings.redis_prefix)
        self.counters = Counters()
        self.scorer: Scorer | None = None
        self.learner: DelayedLabelLearner | None = None
        self._ready = asyncio.Event()
        self._refused: set[int] = set()  # checkpoint versions already refused (logged once)
        self._starting = asyncio.Lock()

    async def ready(self) -> Scorer:
        """Load the policy and the newest model once; every agent waits for it."""
        async with self._starting:
            if self.scorer is None:
                policy = Policy.load(self.settings.policy, known_features=self.features.names)
                checkpoint = await self._load_checkpoint()
                if not self._usable(checkpoint):
                    checkpoint = _fresh_checkpoint()
                self.scorer = Scorer(self.store, checkpoint, policy)  # type: ignore[arg-type]
                log.info(
                    "scorer ready",
                    extra={
                        "model_version": checkpoint.model_version,
                        "policy_version": policy.version,
                    },
                )
                self._ready.set()
        return self.scorer

    async def _load_checkpoint(self) -> Checkpoint:
        checkpoint = await self.checkpoints.load_latest()
        if checkpoint is None:
            log.warning("no model checkpoint in Redis: starting from a fresh model")
            checkpoint = _fresh_checkpoint()
        return checkpoint

    def _usable(self, checkpoint: Checkpoint) -> bool:
        """Whether this worker can score with ``checkpoint``: its model reads only features the
        store computes (a model made for another feature layout fails on every payment)."""
        wanted = checkpoint.model.config.features
        missing = sorted(set(wanted or ()) - set(self.features.names))
        if not missing:
            return True
        if checkpoint.version not in self._refused:
            self._refused.add(checkpoint.version)
            log.error(
                "model checkpoint refused: it needs features this worker does not compute",
                extra={"model_version": checkpoint.model_version, "missing": missing},
            )
        return False

    async def start_learner(self) -> DelayedLabelLearner:
        """The learner continues from the newest checkpoint (its own copy of the model)."""
        if self.learner is None:
            checkpoint = await self._load_checkpoint()
            model = checkpoint.model
            if not self._usable(checkpoint):
                # A fresh model, numbered after the refused one: its first checkpoint replaces
                # the refused one on every scorer.
                model = FraudModel()
            self.learner = DelayedLabelLearner(
                model,
                label_delay=self.settings.label_delay_days * DAY,
                publish_every=self.settings.publish_every_s,
                version=checkpoint.version,
            )
            log.info("learner ready", extra={"model_version": checkpoint.model_version})
        return self.learner

    async def retry_redis(self, what: str, call: Any) -> Any:
        """Run ``call()`` until Redis answers; the batch waits, nothing is skipped or lost."""
        attempt = 0
        while True:
            try:
                return await call()
            except REDIS_ERRORS as exc:
                await self.redis_failed(what, exc, attempt)
                attempt += 1

    async def redis_failed(self, what: str, exc: BaseException, attempt: int) -> None:
        """Count and log a failed Redis call, then wait before the next try (backing off)."""
        self.counters.redis_retries += 1
        log.warning("redis call failed; retrying", extra={"during": what, "error": str(exc)})
        await asyncio.sleep(min(0.05 * 2**attempt, 2.0))

    async def swap_if_newer(self) -> bool:
        scorer = self.scorer
        if scorer is None:
            return False
        # A refused version counts as seen: it is not fetched again every poll.
        seen = max(scorer.checkpoint.version, *self._refused, 0)
        checkpoint = await self.checkpoints.load_newer(seen)
        if checkpoint is None or not self._usable(checkpoint) or not scorer.swap(checkpoint):
            return False
        self.counters.model_swaps += 1
        log.info("model swapped in", extra={"model_version": checkpoint.model_version})
        return True

    async def close(self) -> None:
        await self.redis.aclose()
