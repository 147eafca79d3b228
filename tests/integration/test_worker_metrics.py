"""The worker's ``/metrics`` on a real broker and Redis: it counts what the worker published."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from models.checkpoint import Checkpoint
from models.model import FraudModel
from processor.checkpoints import RedisCheckpointStore
from processor.worker import create_topics
from replay.producer import replay_async
from tests.integration.harness import Stack, WorkerProcess, count_by, handbook_rows, read_topic
from tests.services.ports import free_port

pytestmark = pytest.mark.timeout(240)

ROWS = 1_500
POISON = [b"{not json", orjson.dumps({"tx_id": "p-1", "amount": "lots"})]

# A fresh model approves everything: rules on the amount give every action its share.
POLICY = """\
version: "metrics"
thresholds: {review: 0.5, decline: 0.95}
explain_top: 3
lists: {block_cards: [], block_merchants: [], allow_cards: [], allow_merchants: []}
rules:
  - {name: large_amount, when: {feature: amount, op: ">=", value: 120}, action: review}
  - {name: very_large_amount, when: {feature: amount, op: ">=", value: 200}, action: decline}
"""

Workers = Callable[[Stack], WorkerProcess]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Stack:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    extra = {
        "FRAUD_METRICS_PORT": str(free_port()),
        "FRAUD_METRICS_HOST": "127.0.0.1",
        "FRAUD_POLICY": str(policy),
    }
    stack = Stack(kafka_bootstrap, redis_url, extra=extra)
    await create_topics(stack.settings())
    return stack


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started: list[WorkerProcess] = []

    def start(stack: Stack) -> WorkerProcess:
        worker = WorkerProcess(stack, tmp_path).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def metrics_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.extra['FRAUD_METRICS_PORT']}/metrics"


async def read_decisions(stack: Stack, worker: WorkerProcess, count: int) -> list[dict[str, Any]]:
    """The decisions topic from the start, once ``count`` distinct transactions are decided."""
    return await read_topic(
        stack.bootstrap,
        stack.settings().topic_decisions,
        lambda got: len(count_by(got)) >= count,
        alive=worker.alive,
        describe=worker.log_tail,
    )


async def scrape(url: str) -> Samples:
    """Every sample of the endpoint, by name and labels."""
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(url)
    answer.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} is not on /metrics"
    return samples[key]


async def scrape_until(
    url: str, ready: Callable[[Samples], bool], worker: WorkerProcess, timeout: float = 20.0
) -> Samples:
    """Scrape until ``ready`` holds (the narrator and the model poll run on their own time)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(url)
        if ready(samples):
            return samples
        assert worker.alive(), worker.log_tail()
        assert time.monotonic() < deadline, "the metrics never got there"
        await asyncio.sleep(0.2)


async def publish_model(stack: Stack, version: int) -> None:
    """An untrained model under a version number the scorer will name."""
    client = aioredis.from_url(stack.redis_url)
    try:
        checkpoint = Checkpoint(
            version=version, created_at=time.time(), trained_on=0, model=FraudModel()
        )
        assert await RedisCheckpointStore(client, prefix=stack.name).publish(checkpoint)
    finally:
        await client.aclose()


async def send_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for raw in values:
            await producer.send_and_wait(topic, raw, key=b"poison")
    finally:
        await producer.stop()


async def test_metrics_count_what_the_worker_published(stack: Stack, workers: Workers) -> None:
    rows = handbook_rows(ROWS)
    stack.extra["FRAUD_LEARN"] = "false"  # the model version stays the one published here
    s = stack.settings()
    await publish_model(stack, 5)
    worker = workers(stack)
    await send_raw(stack.bootstrap, s.topic_transactions, POISON)
    await replay_async(
        rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    decisions = await read_decisions(stack, worker, ROWS)
    await read_topic(stack.bootstrap, s.topic_dlq, lambda got: len(got) >= len(POISON))
    url = metrics_url(stack)
    by_action = Counter(d["action"] for d in decisions)
    assert min(by_action[a] for a in ("approve", "review", "decline")) > 0, by_action
    escalated = by_action["review"] + by_action["decline"]
    # Every escalation is narrated (by the template: no API key) on the narrator's own time.
    samples = await scrape_until(
        url,
        lambda m: (
            m.get(("fraudstream_llm_narratives_total", (("source", "template"),)), 0) >= escalated
        ),
        worker,
    )

    assert len(decisions) == ROWS, "a clean run decides each transaction once"
    for action in ("approve", "review", "decline"):
        counted = value(samples, "fraudstream_decisions_total", action=action)
        assert counted == by_action[action], action
    assert sum(value(samples, "fraudstream_decisions_total", action=a) for a in by_action) == ROWS
    assert value(samples, "fraudstream_transactions_scored_total") == ROWS
    assert value(samples, "fraudstream_escalations_total") == escalated
    assert value(samples, "fraudstream_dead_letters_total") == len(POISON)
    assert value(samples, "fraudstream_decision_latency_seconds_count") == ROWS
    assert value(samples, "fraudstream_batch_transactions_sum") == ROWS
    batches = value(samples, "fraudstream_batch_transactions_count")
    assert 1 <= batches <= ROWS
    assert value(samples, "fraudstream_llm_narratives_total", source="template") == escalated

    assert {d["model_version"] for d in decisions} == {"logreg-v5"}
    assert value(samples, "fraudstream_model_version") == 5
    policy = decisions[0]["policy_version"]
    assert value(
        samples, "fraudstream_model_info", model_version="logreg-v5", policy_version=policy
    )
    assert value(samples, "fraudstream_model_swaps_total") == 0
    # The worker's loop stamps its heartbeat every second: its liveness passes. (A heartbeat
    # never started would be as old as the worker, well past 2 s by now.)
    assert value(samples, "fraudstream_event_loop_stall_seconds") <= 2.0
    async with httpx.AsyncClient(timeout=5) as client:
        health = await client.get(url.replace("/metrics", "/healthz"))
    assert (health.status_code, health.text) == (200, "ok\n")

    # A newer checkpoint is swapped in without a restart, and the gauge follows.
    await publish_model(stack, 6)
    samples = await scrape_until(
        url, lambda m: m.get(("fraudstream_model_version", ()), 0) == 6, worker
    )
    assert value(samples, "fraudstream_model_swaps_total") == 1


async def test_a_taken_metrics_port_does_not_stop_the_worker(
    stack: Stack, workers: Workers
) -> None:
    rows = handbook_rows(200)
    s = stack.settings()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(stack.extra["FRAUD_METRICS_PORT"])))
        squatter.listen()
        worker = workers(stack)
        await replay_async(
            rows, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
        )
        decisions = await read_decisions(stack, worker, len(rows))
    assert set(count_by(decisions)) == {r.tx.tx_id for r in rows}
    assert worker.alive()


async def tx_ids_on(stack: Stack, topic: str, seconds: float) -> set[str]:
    """The ``tx_id`` of every record ``topic`` holds, read from the start for ``seconds``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(stack.settings().partitions)])
        await consumer.seek_to_beginning()
        seen: set[str] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            seen.update(orjson.loads(m.value)["tx_id"] for ms in batch.values() for m in ms)
        return seen
    finally:
        await consumer.stop()


async def test_a_redis_that_refuses_writes_holds_the_batch_until_it_accepts(
    stack: Stack, workers: Workers
) -> None:
    """Redis out of memory (``maxmemory`` reached, no eviction) refuses the feature scripts.

    The worker keeps the batch and tries again, counting each refusal, until Redis accepts
    writes: every transaction is then decided, none skipped, none twice.
    """
    rows = handbook_rows(600)
    before, during = rows[:300], rows[300:]
    s = stack.settings()
    worker = workers(stack)
    await replay_async(
        before, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
    )
    await read_decisions(stack, worker, len(before))
    url = metrics_url(stack)
    client = aioredis.from_url(stack.redis_url)
    saved = await client.config_get("maxmemory")
    policy = await client.config_get("maxmemory-policy")
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")  # below what is in use: every write refused
        await replay_async(
            during, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
        )
        await scrape_until(
            url, lambda m: m.get(("fraudstream_redis_retries_total", ()), 0) >= 3, worker
        )
        decided = await tx_ids_on(stack, s.topic_decisions, seconds=3.0)
        assert decided == {r.tx.tx_id for r in before}, "decided without its features"
        assert worker.alive(), worker.log_tail()
    finally:
        await client.config_set("maxmemory", saved["maxmemory"])
        await client.config_set("maxmemory-policy", policy["maxmemory-policy"])
        await client.aclose()

    decisions = await read_decisions(stack, worker, len(rows))
    counts = count_by(decisions)
    assert set(counts) == {r.tx.tx_id for r in rows}
    assert max(counts.values()) == 1
    samples = await scrape(url)
    assert value(samples, "fraudstream_transactions_scored_total") == len(rows)
