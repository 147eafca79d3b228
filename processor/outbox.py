"""The scorer's records of one batch, handed to Kafka as one record batch per topic partition.

At least once, a scored batch is acknowledged (its offsets committed) only after every record it
produced is on the broker, so one acknowledgement per partition's record batch says all a future
per record would. Building aiokafka record batches directly (``create_batch`` / ``send_batch``)
skips what ``send`` does for every record: a metadata wait, the partition lookup, a future and
its resolution; that was about a tenth of the worker's CPU per payment (``bench/worker.md``).

Records are partitioned as the producer's own default partitioner does (murmur2 of the key, as
the Java client), so a card's decisions land where ``send`` would have put them. Within a topic
partition, records keep the order they were added in.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

__all__ = ["Outbox"]

_partition = DefaultPartitioner()


class Outbox:
    """Collects keyed records for :meth:`send`; use one per scored batch."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitions: dict[str, list[int]] = {}
        self._open: dict[tuple[str, int], Any] = {}  # (topic, partition) -> BatchBuilder
        self._full: list[tuple[tuple[str, int], Any]] = []
        self.records = 0

    async def topic(self, name: str) -> None:
        """Learn ``name``'s partitions (waiting for the broker's metadata if need be)."""
        if name not in self._partitions:
            self._partitions[name] = sorted(await self._producer.partitions_for(name))

    def add(self, topic: str, key: bytes, value: bytes) -> None:
        """Add a record to ``topic`` (announced with :meth:`topic`), partitioned by ``key``."""
        partitions = self._partitions[topic]
        where = (topic, _partition(key, partitions, partitions))
        builder = self._open.get(where)
        if builder is None:
            builder = self._open[where] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:
            # Full: it goes out first, and a new batch takes this record (an empty batch takes
            # any record, as ``send`` would: a record the broker refuses fails the batch).
            self._full.append((where, builder))
            builder = self._open[where] = self._producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)
        self.records += 1

    async def send(self) -> list[asyncio.Future[Any]]:
        """Queue every record batch for the producer; one future per batch, set on delivery."""
        batches = [*self._full, *self._open.items()]
        self._full, self._open = [], {}
        sent = []
        for (topic, partition), builder in batches:
            sent.append(await self._producer.send_batch(builder, topic, partition=partition))
        return sent
