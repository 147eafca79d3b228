"""The naive benchmark variant (``bench.naive``) computes the product's features honestly.

Its numbers are only worth setting beside the worker's if it does the same work: the same
feature definitions (checked against ``InMemoryFeatureStore`` on handbook rows, labels
included), one Redis command per feature rather than a script or a pipeline, and every
transaction consumed, decided, produced and committed once, on the real broker and Redis.
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.naive import NaiveFeatures, naive_loop
from bench.worker import train_checkpoint
from models.checkpoint import dumps
from models.features import FeatureConfig, InMemoryFeatureStore
from replay.producer import replay_async
from replay.readers import Row
from tests.integration.harness import handbook_rows, read_topic

# A one-day label delay, so that a few weeks of a few cards give the terminal windows values.
CONFIG = FeatureConfig(label_delay_days=1.0)
# Features that need no state: every other one needs at least one Redis command of its own.
STATELESS = {"amount", "is_weekend", "is_night", "log_amount"}


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    """Every payment, over ten days of the handbook, of the cards with the most frauds (~400)."""
    head = handbook_rows(100_000)
    frauds = collections.Counter(r.tx.card_id for r in head if r.is_fraud)
    per_card = collections.Counter(r.tx.card_id for r in head)
    cards: set[str] = set()
    for card, _ in frauds.most_common():
        if sum(per_card[c] for c in cards) >= 400:
            break
        cards.add(card)
    return [r for r in head if r.tx.card_id in cards]


def assert_same(expected: Mapping[str, float], got: Mapping[str, float], where: str) -> None:
    """Counts equal, means and rates within a loose relative tolerance."""
    assert set(got) == set(expected), where
    for name, value in expected.items():
        assert math.isclose(got[name], value, rel_tol=1e-6, abs_tol=1e-9), (
            f"{where} {name}: {got[name]} != {value}"
        )


async def test_features_match_the_reference(
    rows: Sequence[Row], redis_client: aioredis.Redis
) -> None:
    assert sum(bool(r.is_fraud) for r in rows) >= 20, "the slice must hold frauds to test the risk"
    reference = InMemoryFeatureStore(CONFIG)
    naive = NaiveFeatures(redis_client, CONFIG, prefix=f"nv-{uuid.uuid4().hex[:8]}")
    nonzero: collections.Counter[str] = collections.Counter()
    last: dict[str, float] = {}
    for row in rows:
        expected = reference.update_one(row.tx).values
        last = await naive.update_one(row.tx)
        assert_same(expected, last, row.tx.tx_id)
        nonzero.update(name for name, value in expected.items() if value)
        if row.is_fraud:  # known at once: the next payments' risk features see it
            reference.record_label(row.tx.tx_id, True)
            assert await naive.record_label(row.tx.tx_id, True)
    # The slice exercises every windowed feature, the label-based ones included.
    assert {"terminal_count_1d", "terminal_risk_7d", "card_known_frauds_30d"} <= set(nonzero)
    stateful = len(CONFIG.names) - len(STATELESS)
    assert naive.calls >= stateful * len(rows), "one Redis command per feature at least"
    # A redelivered payment is not counted twice.
    again = await naive.update_one(rows[-1].tx)
    assert again["card_count_30d"] == last["card_count_30d"]
    assert not await naive.record_label("no-such-tx", True)


async def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(TopicPartition(topic, 0))
        return offset
    finally:
        await consumer.stop()


async def test_loop_decides_every_transaction_once(
    rows: Sequence[Row],
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    source, decisions, escalations = (topic_factory(1, prefix=p) for p in ("tx", "dec", "esc"))
    await replay_async(rows, bootstrap=kafka_bootstrap, topic=source, send_labels=False)
    checkpoint = tmp_path / "model.bin"
    checkpoint.write_bytes(dumps(train_checkpoint(rows)))
    group = f"naive-{uuid.uuid4().hex[:8]}"
    summary = await naive_loop(
        kafka_bootstrap,
        redis_url,
        source,
        (decisions, escalations),
        group,
        f"nv-{uuid.uuid4().hex[:8]}",
        checkpoint,
        len(rows),
        CONFIG,
    )
    assert summary["decided"] == len(rows)
    assert summary["skipped"] == 0
    assert await _committed(kafka_bootstrap, group, source) == len(rows)
    records = await read_topic(kafka_bootstrap, decisions, lambda r: len(r) >= len(rows))
    assert sorted(d["tx_id"] for d in records) == sorted(r.tx.tx_id for r in rows)
    reference = InMemoryFeatureStore(CONFIG)  # no labels reach the loop: none here either
    by_id = {d["tx_id"]: d for d in records}
    for row in rows:
        assert_same(reference.update_one(row.tx).values, by_id[row.tx.tx_id]["features"], "loop")
    escalated = sum(d["action"] != "approve" for d in records)
    assert escalated, "the trained model escalates some of these fraud-heavy cards"
    cases = await read_topic(kafka_bootstrap, escalations, lambda r: len(r) >= escalated)
    assert len(cases) == escalated
