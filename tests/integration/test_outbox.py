"""The scorer's outbox on a real broker: each record once, where ``send`` puts it, in order."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.outbox import Outbox

pytestmark = pytest.mark.timeout(120)

RECORDS = 600
KEYS = [f"card-{i}".encode() for i in range(37)]


async def test_an_outbox_delivers_each_record_once_where_send_would(
    topic_factory: Callable[..., str], kafka_bootstrap: str
) -> None:
    four, three = topic_factory(partitions=4, prefix="outbox"), topic_factory(3, "outbox")
    # Small record batches, so some fill up and a partition gets more than one.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, max_batch_size=16 * 1024, linger_ms=1
    )
    await producer.start()
    try:
        # Where the producer's own send puts each key: the partition the outbox must match.
        probes = {
            (topic, key): producer.send(topic, b"probe", key=key)
            for topic in (four, three)
            for key in KEYS
        }
        where = {
            tk: (await (await fut)).partition  # type: ignore[misc]
            for tk, fut in probes.items()
        }
        outbox = Outbox(producer)
        await outbox.topic(four)
        await outbox.topic(three)
        for n in range(RECORDS):
            topic = three if n % 3 == 0 else four
            outbox.add(topic, KEYS[n % len(KEYS)], orjson.dumps({"n": n, "pad": "x" * 900}))
        assert outbox.records == RECORDS
        futures = await outbox.send()
        assert len(futures) > 4 + 3, "no record batch filled up: the full-batch path is untested"
        await asyncio.gather(*futures)
        assert await outbox.send() == [], "sent batches are not sent again"
    finally:
        await producer.stop()

    got = await read_all(kafka_bootstrap, {four: 4, three: 3}, len(where) + RECORDS)
    seen: dict[int, int] = defaultdict(int)
    last: dict[tuple[str, int], int] = {}
    for topic, partition, key, value in got:
        if value == b"probe":
            continue
        n = orjson.loads(value)["n"]
        seen[n] += 1
        assert partition == where[(topic, key)], (topic, key, partition)
        assert n > last.get((topic, partition), -1), "records left their order in a partition"
        last[(topic, partition)] = n
    assert sorted(seen) == list(range(RECORDS))
    assert set(seen.values()) == {1}


async def read_all(
    bootstrap: str, partitions: dict[str, int], count: int, timeout: float = 60.0
) -> list[tuple[str, int, bytes, bytes]]:
    """``count`` records from the start, as (topic, partition, key, value)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t, n in partitions.items() for p in range(n)])
        await consumer.seek_to_beginning()
        out: list[tuple[str, int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"{len(out)} of {count} records"
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                out += [(tp.topic, tp.partition, r.key, r.value) for r in records]
        return out
    finally:
        await consumer.stop()
