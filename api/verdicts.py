"""Analysts' verdicts: stored once in Redis (shared by every replica), audited, sent on as labels.

Key layout (``<p>`` is ``FRAUD_REDIS_PREFIX``; every verdict key shares the ``{audit}`` hash tag so
one Lua call can write a verdict and its audit record atomically on Redis Cluster too):

================================  ======  ===================================================
``<p>:{audit}:verdict:<tx_id>``   STR     the current verdict (JSON); TTL ``api_verdict_ttl_days``
``<p>:{audit}:verdicts``          STREAM  one entry per stored verdict: tx_id, verdict, note,
                                          who, role, at, change, previous (JSON or empty);
                                          ``MAXLEN ~ api_audit_maxlen``
``<p>:{rate}:<name>:<minute>``    STR     writes of one token (by its name) in one UTC minute
================================  ======  ===================================================

A verdict is written only if none exists (or the analyst asked to change it); the check and both
writes are one script, so two analysts racing on one case get one 201 and one 409, on any replica.
The label goes to Kafka after Redis has the verdict; if that send fails the caller is told (503)
and a retry with ``change: true`` sends it again — the learner is idempotent on ``tx_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.asyncio as redis
from aiokafka import AIOKafkaProducer

from api.auth import Principal
from api.errors import RateLimited, Unavailable
from models.records import Label, format_ts, mask_pan

log = logging.getLogger("fraudstream.api.verdicts")

# KEYS: verdict key, audit stream. ARGV: verdict JSON, change ("1"/"0"), ttl seconds, audit
# maxlen, then the audit fields tx_id, verdict, note, who, role, at.
_RECORD = """
local previous = redis.call('GET', KEYS[1])
if previous and ARGV[2] ~= '1' then
  return {0, previous, ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
  'tx_id', ARGV[5], 'verdict', ARGV[6], 'note', ARGV[7], 'who', ARGV[8], 'role', ARGV[9],
  'at', ARGV[10], 'change', ARGV[2], 'previous', previous or '')
return {1, previous or '', id}
"""


class VerdictStore:
    """Verdicts by ``tx_id`` in Redis, with their audit stream."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float, audit_maxlen: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = max(1, int(ttl_s))
        self.audit_maxlen = audit_maxlen
        self._record = client.register_script(_RECORD)

    def key(self, tx_id: str) -> str:
        return f"{self.prefix}:{{audit}}:verdict:{tx_id}"

    @property
    def audit_key(self) -> str:
        return f"{self.prefix}:{{audit}}:verdicts"

    async def record(
        self, tx_id: str, verdict: str, note: str, who: Principal, change: bool
    ) -> tuple[bool, dict[str, Any], dict[str, Any] | None]:
        """(stored?, the verdict now in force, the one before). Not stored: one exists already."""
        now = time.time()
        doc = {
            "tx_id": tx_id,
            "verdict": verdict,
            "note": mask_pan(note),
            "by": who.name,
            "role": who.role.label,
            "at": format_ts(now),
        }
        stored, previous, _ = await self._record(
            keys=[self.key(tx_id), self.audit_key],
            args=[
                orjson.dumps(doc),
                "1" if change else "0",
                self.ttl_s,
                self.audit_maxlen,
                tx_id,
                verdict,
                doc["note"],
                who.name,
                who.role.label,
                doc["at"],
            ],
        )
        before = orjson.loads(previous) if previous else None
        if not stored:
            assert before is not None  # the script refuses only when one exists
            return False, before, None
        return True, doc, before

    async def get(self, tx_id: str) -> dict[str, Any] | None:
        raw = await self.client.get(self.key(tx_id))
        return orjson.loads(raw) if raw else None

    async def get_many(self, tx_ids: list[str]) -> list[dict[str, Any] | None]:
        if not tx_ids:
            return []
        raws = await self.client.mget([self.key(t) for t in tx_ids])
        return [orjson.loads(r) if r else None for r in raws]


class WriteLimiter:
    """At most ``per_minute`` writes per token name per UTC minute, counted in Redis."""

    def __init__(self, client: redis.Redis, prefix: str, per_minute: int) -> None:
        self.client = client
        self.prefix = prefix
        self.per_minute = per_minute

    async def check(self, who: Principal) -> None:
        now = time.time()
        window = int(now // 60)
        key = f"{self.prefix}:{{rate}}:{who.name}:{window}"
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
        if count > self.per_minute:
            raise RateLimited(
                f"more than {self.per_minute} writes a minute for this token; try again later",
                retry_after=int(60 - now % 60) + 1,
            )


class LabelPublisher:
    """Sends analysts' labels to the ``labels`` topic (key: tx_id), started on first need."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                client_id="fraudstream-api",
                request_timeout_ms=10_000,
            )
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                raise
            self._producer = producer

    async def stop(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    async def publish(self, tx_id: str, verdict: str, known_at: float) -> None:
        label = Label(tx_id=tx_id, is_fraud=verdict == "fraud", source="analyst", known_at=known_at)
        try:
            async with asyncio.timeout(15):
                await self.start()
                assert self._producer is not None
                await self._producer.send_and_wait(
                    self.topic, orjson.dumps(label.to_wire()), key=tx_id.encode()
                )
        except Exception as exc:
            log.error(
                "label not sent", extra={"tx_id": tx_id, "error": f"{type(exc).__name__}: {exc}"}
            )
            raise Unavailable(
                "the verdict is stored but its label could not be sent to Kafka; "
                "send it again with change: true"
            ) from None
