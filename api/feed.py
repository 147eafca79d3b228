"""The replica's own reading of ``decisions`` and ``narratives`` from Kafka.

No consumer group: every replica reads every partition (it must, to stream any card to any client)
and commits nothing. On start each partition is read from ``end - ceil(retention / partitions)``
(not before the log start), which refills the in-memory buffer with about the last ``retention``
records without a long replay; after a broker hiccup the consumer resumes where the buffer stands,
so nothing is taken in twice. Partitions added to a topic are picked up within a minute.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from api.buffer import DecisionBuffer
from api.decisions import parse_decision
from api.metrics import ApiMetrics
from api.narratives import NarrativeStore, parse_chunk
from models.errors import InvalidRecord

log = logging.getLogger("fraudstream.api.feed")

_REFRESH_S = 60.0


class KafkaFeed:
    """Consumes both topics into the decision buffer and the narrative store, until cancelled."""

    def __init__(
        self,
        bootstrap: str,
        decisions_topic: str,
        narratives_topic: str,
        decisions: DecisionBuffer,
        narratives: NarrativeStore,
        metrics: ApiMetrics,
        backlog: int,
        slice_size: int = 250,
    ) -> None:
        self.bootstrap = bootstrap
        self.decisions_topic = decisions_topic
        self.narratives_topic = narratives_topic
        self.decisions = decisions
        self.narratives = narratives
        self.metrics = metrics
        self.backlog = backlog
        self.slice = max(1, slice_size)
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned = asyncio.Event()
        self.last_error: str | None = None
        self._narrative_positions: dict[int, int] = {}

    async def run(self) -> None:
        """Consume forever; connection failures are logged and retried with a growing pause."""
        pause = 0.5
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "kafka feed failed; retrying",
                    extra={"error": self.last_error, "retry_in_s": pause},
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="fraudstream-api",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        try:
            self.consumer = consumer
            assigned = await self._assign(consumer, set())
            self.assigned.set()
            self.last_error = None
            refresh_at = time.monotonic() + _REFRESH_S
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
                for tp, messages in batch.items():
                    if tp.topic != self.decisions_topic:
                        self._take_narratives(tp.partition, messages)
                        continue
                    # A fetch can bring thousands of records at once. Handing them to the SSE
                    # clients in slices, with a turn of the event loop in between, lets every
                    # client that keeps up drain its queue; only the stalled ones overflow.
                    for start in range(0, len(messages), self.slice):
                        self._take_decisions(tp.partition, messages[start : start + self.slice])
                        await asyncio.sleep(0)
                self._measure_lag(consumer, assigned)
                if time.monotonic() > refresh_at:
                    refresh_at = time.monotonic() + _REFRESH_S
                    await _refresh_metadata(consumer)
                    assigned = await self._assign(consumer, assigned)
        finally:
            self.consumer = None
            self.assigned.clear()
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            await _refresh_metadata(consumer)
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                self.last_error = f"topic {topic!r} does not exist (yet)"
                log.warning("waiting for topic", extra={"topic": topic})
                await asyncio.sleep(2.0)
        return set(partitions)

    async def _assign(
        self, consumer: AIOKafkaConsumer, current: set[TopicPartition]
    ) -> set[TopicPartition]:
        """Assign every partition of both topics, each at the buffer's position or the backlog."""
        wanted: set[TopicPartition] = set()
        for topic in (self.decisions_topic, self.narratives_topic):
            wanted |= {TopicPartition(topic, p) for p in await self._partitions(consumer, topic)}
        if wanted == current:
            return current
        starts: dict[TopicPartition, int] = {}
        fresh = [tp for tp in wanted if self._position(tp) is None]
        if fresh:
            begin = await consumer.beginning_offsets(fresh)
            end = await consumer.end_offsets(fresh)
            counts = {
                topic: sum(1 for tp in wanted if tp.topic == topic)
                for topic in (self.decisions_topic, self.narratives_topic)
            }
            for tp in fresh:
                per_partition = math.ceil(self.backlog / counts[tp.topic])
                starts[tp] = max(begin[tp], end[tp] - per_partition)
        consumer.assign(list(wanted))
        for tp in wanted:
            position = self._position(tp)
            offset = starts[tp] if position is None else position
            if tp.topic == self.decisions_topic:
                self.decisions.start_partition(tp.partition, offset)
            else:
                self._narrative_positions.setdefault(tp.partition, offset)
            consumer.seek(tp, offset)
        log.info(
            "kafka feed assigned",
            extra={
                "partitions": len(wanted),
                "decisions": self.decisions_topic,
                "narratives": self.narratives_topic,
            },
        )
        return wanted

    def _position(self, tp: TopicPartition) -> int | None:
        if tp.topic == self.decisions_topic:
            return self.decisions.position(tp.partition)
        return self._narrative_positions.get(tp.partition)

    def _take_decisions(self, partition: int, messages: list[Any]) -> None:
        ok = bad = 0
        for message in messages:
            try:
                record, data = parse_decision(message.value)
            except InvalidRecord as exc:
                bad += 1
                log.warning(
                    "decision record skipped",
                    extra={"partition": partition, "offset": message.offset, "error": str(exc)},
                )
                continue
            self.decisions.add(partition, message.offset, record, data)
            ok += 1
        if messages:
            self.decisions.mark_position(partition, messages[-1].offset + 1)
        self.metrics.records.labels(self.decisions_topic, "ok").inc(ok)
        if bad:
            self.metrics.records.labels(self.decisions_topic, "invalid").inc(bad)
        self.metrics.buffered.set(len(self.decisions))

    def _take_narratives(self, partition: int, messages: list[Any]) -> None:
        ok = bad = 0
        for message in messages:
            try:
                self.narratives.add(parse_chunk(message.value))
                ok += 1
            except InvalidRecord as exc:
                bad += 1
                log.warning(
                    "narrative record skipped",
                    extra={"partition": partition, "offset": message.offset, "error": str(exc)},
                )
        if messages:
            self._narrative_positions[partition] = messages[-1].offset + 1
        self.metrics.records.labels(self.narratives_topic, "ok").inc(ok)
        if bad:
            self.metrics.records.labels(self.narratives_topic, "invalid").inc(bad)

    def _measure_lag(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        lag = {self.decisions_topic: 0, self.narratives_topic: 0}
        for tp in assigned:
            high = consumer.highwater(tp)
            position = self._position(tp)
            if high is not None and position is not None:
                lag[tp.topic] += max(0, high - position)
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)

    async def check(self, timeout: float = 3.0) -> str | None:
        """None when the broker answers a metadata request, else what is wrong."""
        consumer = self.consumer
        if consumer is None or not self.assigned.is_set():
            return f"not connected: {self.last_error or 'starting'}"
        try:
            async with asyncio.timeout(timeout):
                await consumer.topics()
        except TimeoutError:
            return f"no metadata answer within {timeout:.0f}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


async def _refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    # aiokafka has no public call that refreshes the metadata the consumer itself looks partitions
    # up in (``topics()`` fetches a separate copy); its client's is the documented-by-use one.
    await consumer._client.force_metadata_update()
