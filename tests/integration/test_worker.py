"""The worker end to end on a real broker and a real Redis: decisions, parity, faults, hot swap."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from models.checkpoint import Checkpoint
from models.features import FeatureConfig, InMemoryFeatureStore
from models.learner import DelayedLabelLearner
from models.model import FraudModel, ModelConfig
from models.policy import Policy
from models.scoring import Scorer
from processor.checkpoints import RedisCheckpointStore
from processor.runtime import Runtime
from processor.worker import create_topics
from replay.producer import replay_async
from replay.readers import Row
from tests.integration.harness import (
    Stack,
    WorkerProcess,
    count_by,
    handbook_rows,
    read_topic,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str) -> Stack:
    stack = Stack(kafka_bootstrap, redis_url)
    await create_topics(stack.settings())
    return stack


@pytest.fixture
def workers(tmp_path: Path):
    started: list[WorkerProcess] = []

    def start(stack: Stack, name: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(stack, tmp_path, name).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc is not None and worker.proc.returncode is None:
            worker.stop()


def trained_checkpoint(rows: list[Row], version: int) -> Checkpoint:
    """A model taught on ``rows`` with the core's learner (labels known at once)."""
    store = InMemoryFeatureStore()
    learner = DelayedLabelLearner(FraudModel(), label_delay=0.0, version=version - 1)
    for row in rows:
        features = store.update_one(row.tx).values
        learner.observe(row.tx.tx_id, row.tx.ts, features)
        learner.advance(row.tx.ts)
    return learner.checkpoint(rows[-1].tx.ts)


async def publish(stack: Stack, checkpoint: Checkpoint) -> None:
    client = aioredis.from_url(stack.redis_url)
    try:
        assert await RedisCheckpointStore(client, prefix=stack.name).publish(checkpoint)
    finally:
        await client.aclose()


async def send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"poison")
    finally:
        await producer.stop()


def describe(*workers: WorkerProcess):
    return lambda: "\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in workers)


async def test_every_transaction_gets_one_decision_and_poison_goes_to_the_dlq(stack, workers):
    rows = handbook_rows(3_000)
    s = stack.settings()
    worker = workers(stack)
    poison = [b"{not json", orjson.dumps({"tx_id": "p-1", "amount": "lots"}), b"\xff\xfe"]
    await send_raw(stack.bootstrap, s.topic_transactions, poison[:2])
    await replay_async(
        rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    await send_raw(stack.bootstrap, s.topic_transactions, poison[2:])

    decisions = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(count_by(got)) >= len(rows),
        alive=worker.alive,
        describe=describe(worker),
    )
    counts = count_by(decisions)
    assert set(counts) == {r.tx.tx_id for r in rows}
    assert max(counts.values()) == 1, "a clean run decides each transaction exactly once"
    first = decisions[0]
    assert {"score", "action", "reasons", "features", "model_version", "policy_version"} <= set(
        first
    )
    assert first["model_version"] == "logreg-v0"  # no checkpoint yet: a fresh model

    dead = await read_topic(stack.bootstrap, s.topic_dlq, lambda got: len(got) >= 3)
    assert len(dead) == 3
    errors = sorted(d["error"] for d in dead)
    assert any("not JSON" in e for e in errors)
    assert any(d.get("field") == "ts" or "ts" in d["error"] for d in dead)
    assert all(isinstance(d["partition"], int) and isinstance(d["offset"], int) for d in dead)
    assert {d["raw_encoding"] for d in dead} == {"utf-8", "base64"}

    escalations = await read_topic(
        stack.bootstrap,
        s.topic_escalations,
        lambda got: len(got) >= sum(d["action"] != "approve" for d in decisions),
    )
    assert {e["tx_id"] for e in escalations} == {
        d["tx_id"] for d in decisions if d["action"] != "approve"
    }


async def test_streaming_decisions_equal_the_backtest_core(stack, workers):
    """Learning off, one checkpoint: the live path and the in-process core agree exactly."""
    train = handbook_rows(20_000)
    rows = handbook_rows(12_000, skip=80_000)  # days 8-9: terminal windows are populated
    checkpoint = trained_checkpoint(train, version=3)
    stack.extra["FRAUD_LEARN"] = "false"
    await publish(stack, checkpoint)
    s = stack.settings()
    # Warm the stores with the earlier week first, so the slice's terminal windows (7 days back)
    # are populated; partitions are consumed in parallel, so only what was decided before the
    # slice starts is in every worker's past.
    warm = handbook_rows(68_000, skip=12_000)
    worker = workers(stack)
    await replay_async(
        warm, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(got) >= len(warm),
        timeout=240,
        alive=worker.alive,
        describe=describe(worker),
    )
    await replay_async(
        rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    wanted = {r.tx.tx_id for r in rows}
    decisions = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: wanted <= {d["tx_id"] for d in got},
        timeout=240,
        alive=worker.alive,
        describe=describe(worker),
    )
    live = {d["tx_id"]: d for d in decisions if d["tx_id"] in wanted}

    store = InMemoryFeatureStore(FeatureConfig())
    scorer = Scorer(store, checkpoint, Policy.load(None))
    reference = {}
    for row in warm + rows:
        decision = scorer.decide_one(row.tx)
        if row.tx.tx_id in wanted:
            reference[row.tx.tx_id] = decision

    mismatches: list[str] = []
    for tx_id, expected in reference.items():
        got = live[tx_id]
        assert got["model_version"] == "logreg-v3"
        for name, value in expected.features.items():
            if not math.isclose(got["features"][name], value, rel_tol=1e-9, abs_tol=1e-9):
                mismatches.append(f"{tx_id} {name}: live {got['features'][name]} core {value}")
        if not math.isclose(got["score"], expected.score, rel_tol=1e-9, abs_tol=1e-12):
            mismatches.append(f"{tx_id} score: live {got['score']} core {expected.score}")
        if got["action"] != expected.action.value:
            mismatches.append(f"{tx_id} action: live {got['action']} core {expected.action}")
    assert not mismatches, "\n".join(mismatches[:20])
    nonzero = sum(1 for d in reference.values() if d.features["terminal_count_7d"] > 0)
    assert nonzero > len(rows) // 3, "the slice must exercise the terminal windows"


async def test_redelivery_changes_no_feature(stack, workers):
    """Reset the group's offsets and run again: every feature value stays what it was."""
    rows = handbook_rows(4_000)
    stack.extra["FRAUD_LEARN"] = "false"
    s = stack.settings()
    worker = workers(stack, "first")
    await replay_async(
        rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    first = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(count_by(got)) >= len(rows),
        alive=worker.alive,
        describe=describe(worker),
    )
    worker.stop()
    keys_before = await _redis_keys(stack)

    # A new consumer group on the same topics is a full reset of offsets: everything again.
    stack.extra["FRAUD_GROUP"] = f"{stack.name}-again"
    second_worker = workers(stack, "second")
    both = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(got) >= 2 * len(rows),
        alive=second_worker.alive,
        describe=describe(second_worker),
    )
    again = both[len(first) :]
    by_id = {d["tx_id"]: d for d in first}
    assert len(again) == len(rows)
    for decision in again:
        assert decision["features"] == by_id[decision["tx_id"]]["features"]
        assert decision["score"] == by_id[decision["tx_id"]]["score"]
    assert await _redis_keys(stack) == keys_before


async def _redis_keys(stack: Stack) -> dict[bytes, Any]:
    """Every feature key of this stack with its content (sorted sets with scores, hashes, ...)."""
    client = aioredis.from_url(stack.redis_url)
    try:
        out: dict[bytes, Any] = {}
        async for key in client.scan_iter(match=f"{stack.name}:*", count=1000):
            if b"{model}" in key:
                continue
            kind = (await client.type(key)).decode()
            if kind == "zset":
                out[key] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                out[key] = await client.hgetall(key)
            elif kind == "string":
                out[key] = await client.get(key)
            elif kind == "set":
                out[key] = sorted(await client.smembers(key))
            elif kind == "list":
                out[key] = await client.lrange(key, 0, -1)
            else:
                out[key] = kind
        return out
    finally:
        await client.aclose()


async def test_kill_minus_nine_loses_no_transaction(stack, workers):
    rows = handbook_rows(30_000)
    s = stack.settings()
    worker = workers(stack, "victim")
    sending = asyncio.create_task(
        replay_async(rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False)
    )
    await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(got) >= 2_000,
        alive=worker.alive,
        describe=describe(worker),
    )
    worker.kill()
    await sending
    survivor = workers(stack, "survivor")
    decisions = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(count_by(got)) >= len(rows),
        timeout=240,
        alive=survivor.alive,
        describe=describe(survivor),
    )
    counts = count_by(decisions)
    assert set(counts) == {r.tx.tx_id for r in rows}, "every transaction has a decision"
    duplicates = {tx for tx, n in counts.items() if n > 1}
    # Redelivered decisions are identical in features: the store never counted them twice.
    firsts: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if d["tx_id"] in duplicates:
            seen = firsts.setdefault(d["tx_id"], d)
            assert seen["features"] == d["features"]


async def test_a_published_checkpoint_is_used_without_restart(stack, workers):
    first, second = handbook_rows(2_000), handbook_rows(2_000, skip=2_000)
    stack.extra["FRAUD_LEARN"] = "false"
    s = stack.settings()
    worker = workers(stack)
    await replay_async(
        first, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(got) >= len(first),
        alive=worker.alive,
        describe=describe(worker),
    )
    await publish(stack, trained_checkpoint(first, version=7))
    await asyncio.sleep(2.0)  # the scorers poll every 0.2 s in these tests
    await replay_async(
        second, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    decisions = await read_topic(
        stack.bootstrap,
        s.topic_decisions,
        lambda got: len(got) >= len(first) + len(second),
        alive=worker.alive,
        describe=describe(worker),
    )
    versions = {d["tx_id"]: d["model_version"] for d in decisions}
    assert {versions[r.tx.tx_id] for r in first} == {"logreg-v0"}
    assert {versions[r.tx.tx_id] for r in second} == {"logreg-v7"}
    assert worker.alive()


async def test_a_checkpoint_made_for_other_features_is_refused(stack, workers):
    """A model reading a feature this worker does not compute would fail on every payment: it
    is refused at start and as a hot swap, and scoring goes on with the model in hand."""
    rows = handbook_rows(1_500)
    parts = rows[:500], rows[500:1_000], rows[1_000:]
    stack.extra["FRAUD_LEARN"] = "false"
    s = stack.settings()

    def alien(version: int) -> Checkpoint:
        config = ModelConfig(features=("amount", "device_risk_score"))
        return Checkpoint(version=version, created_at=0.0, trained_on=0, model=FraudModel(config))

    async def decide(part: list[Row], before: int) -> list[dict[str, Any]]:
        await replay_async(
            part, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
        )
        return await read_topic(
            stack.bootstrap,
            s.topic_decisions,
            lambda got: len(got) >= before + len(part),
            alive=worker.alive,
            describe=describe(worker),
        )

    await publish(stack, alien(3))
    worker = workers(stack)
    await decide(parts[0], 0)
    await publish(stack, trained_checkpoint(rows[:500], version=4))
    await asyncio.sleep(2.0)  # the scorers poll every 0.2 s in these tests
    await decide(parts[1], 500)
    await publish(stack, alien(5))
    await asyncio.sleep(2.0)
    decisions = await decide(parts[2], 1_000)

    versions = {d["tx_id"]: d["model_version"] for d in decisions}
    assert len(decisions) == len(versions) == len(rows), "each decided once"
    expected = ("logreg-v0", "logreg-v4", "logreg-v4")  # fresh, swapped in, kept
    for part, version in zip(parts, expected, strict=True):
        assert {versions[r.tx.tx_id] for r in part} == {version}
    assert worker.alive()


async def test_a_learner_given_a_refused_checkpoint_starts_fresh_after_its_version(stack):
    """The learner starts from a fresh model numbered after the refused checkpoint, so the
    first checkpoint it publishes supersedes the refused one on every scorer."""
    config = ModelConfig(features=("amount", "device_risk_score"))
    await publish(
        stack, Checkpoint(version=3, created_at=0.0, trained_on=0, model=FraudModel(config))
    )
    runtime = Runtime(stack.settings())
    try:
        learner = await runtime.start_learner()
        assert learner.version == 3
        assert learner.model.config.features is None  # the store's own layout
        assert learner.checkpoint(0.0).version == 4
    finally:
        await runtime.close()


async def test_labels_teach_the_model_and_scorers_follow(stack, workers):
    rows = handbook_rows(6_000)
    stack.extra.update({"FRAUD_LABEL_DELAY_DAYS": "0.05", "FRAUD_PUBLISH_EVERY_S": "1800"})
    s = stack.settings()
    worker = workers(stack)
    await replay_async(
        rows,
        bootstrap=stack.bootstrap,
        topic=s.topic_transactions,
        labels_topic=s.topic_labels,
        label_delay=0.05 * 86_400,
    )
    client = aioredis.from_url(stack.redis_url)
    store = RedisCheckpointStore(client, prefix=stack.name)
    try:
        for _ in range(150):
            info = await store.info()
            if info and info["version"] >= 2:
                break
            assert worker.alive(), describe(worker)()
            await asyncio.sleep(0.2)
        assert info is not None and info["version"] >= 2, describe(worker)()
        assert info["trained_on"] > 0
    finally:
        await client.aclose()
