"""Narratives on a real ``narratives`` topic, from a real local OpenAI-compatible server that
streams, stalls and fails on cue; and a real worker that keeps scoring while the LLM hangs.

The fault cases drive :class:`processor.narrator.Narrator` (the agent's core) with a real Kafka
producer and read the topic back, so each case costs about a second; the last tests run
``fraudstream worker`` itself, escalations to narratives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from processor.llm import LLMMetrics, NarratorSettings
from processor.narrator import Narrator
from processor.worker import create_topics
from replay.producer import replay_async
from tests.integration.harness import Stack, WorkerProcess, handbook_rows, read_topic
from tests.llm_server import LLMServer, Reply

pytestmark = pytest.mark.timeout(180)

TEXT = "The card paid an unusual amount at a terminal that has a recent history of fraud."


def escalation(tx_id: str, score: float = 0.8, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "tx_id": tx_id,
        "ts": "2018-04-02T01:15:30.000Z",
        "card_id": f"card-{tx_id}",
        "merchant_id": "term-9",
        "amount": 212.5,
        "currency": "EUR",
        "score": score,
        "action": "review",
        "reasons": [{"code": "RULE_BIG", "text": "Large amount", "weight": 1.0}],
        "features": {"amount": 212.5, "card_count_1d": 4.0, "card_count_7d": 11.0},
        "model_version": "logreg-v3",
        "policy_version": "1",
        "decided_at": "2018-04-02T01:15:30.004Z",
        "latency_ms": 1.2,
    }
    record.update(extra)
    return record


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer(default=Reply(text=TEXT, pace_s=0.005)) as server:
        yield server


class Topic:
    """A fresh narratives topic, a real producer onto it, and a reader of whole narratives."""

    def __init__(self, bootstrap: str, name: str) -> None:
        self.bootstrap = bootstrap
        self.name = name
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
        self.keys: dict[str, set[bytes]] = {}

    async def publish(self, key: bytes, value: bytes) -> None:
        await self.producer.send(self.name, value, key=key)

    async def narratives(self, tx_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
        await self.producer.flush()
        consumer = AIOKafkaConsumer(
            self.name, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        found: dict[str, list[dict[str, Any]]] = {}
        try:
            deadline = time.monotonic() + 30
            while not all(any(r["done"] for r in found.get(t, [])) for t in tx_ids):
                assert time.monotonic() < deadline, f"narratives missing: {found.keys()}"
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    for m in messages:
                        record = orjson.loads(m.value)
                        found.setdefault(record["tx_id"], []).append(record)
                        self.keys.setdefault(record["tx_id"], set()).add(m.key)
        finally:
            await consumer.stop()
        return found


@pytest.fixture
async def topic(kafka_bootstrap: str, topic_factory: Any) -> AsyncIterator[Topic]:
    t = Topic(kafka_bootstrap, topic_factory(partitions=1, prefix="narratives"))
    await t.producer.start()
    yield t
    await t.producer.stop()


async def narrate(
    topic: Topic, llm: LLMServer | None, records: list[dict[str, Any]], **overrides: Any
) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """Narrate ``records`` one by one onto ``topic``; the narratives and the metric reader."""
    registry = CollectorRegistry()
    settings = NarratorSettings(
        api_key="sk-integration" if llm else None,
        base_url=llm.base_url if llm else None,
        **{"stall_timeout_s": 0.5, "first_token_timeout_s": 1.0, "backoff_s": 0.05, **overrides},
    )
    narrator = Narrator(settings, topic.publish, metrics=LLMMetrics(registry))
    for record in records:
        await narrator.submit(orjson.dumps(record))
        await narrator.wait_idle(30)
    await narrator.close()
    found = await topic.narratives({r["tx_id"] for r in records})
    for tx_id, chunks in found.items():
        assert_complete(chunks)
        assert topic.keys[tx_id] == {f"card-{tx_id}".encode()}, "keyed by card"
    return found, registry.get_sample_value


def assert_complete(chunks: list[dict[str, Any]]) -> None:
    """One narrative: seq 0..n without gaps, one final record, deltas adding up to its text."""
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final["text"] == "".join(c["delta"] for c in chunks) and final["text"]
    assert {"tx_id", "seq", "delta", "done", "source", "model"} <= set(final)


def sources(chunks: list[dict[str, Any]]) -> list[str]:
    """The sources of the text chunks, runs collapsed: ["llm"], ["llm", "template"], ..."""
    out: list[str] = []
    for c in chunks[:-1]:
        if not out or out[-1] != c["source"]:
            out.append(c["source"])
    return out


async def test_a_streamed_llm_narrative_arrives_token_by_token(llm, topic):
    found, metric = await narrate(topic, llm, [escalation("ok")])
    chunks = found["ok"]
    final = chunks[-1]
    assert final["text"] == TEXT and final["source"] == "llm" and sources(chunks) == ["llm"]
    assert len(chunks) == len(TEXT.split()) + 1, "one record per streamed delta, then the end"
    assert final["model"] == "gpt-4o-mini" and final["usage"]["completion_tokens"] > 0
    (request,) = llm.requests
    assert request.body["stream"] is True and request.body["model"] == "gpt-4o-mini"
    assert metric("fraudstream_llm_calls_total", {"outcome": "ok"}) == 1
    assert metric("fraudstream_llm_tokens_total", {"kind": "prompt"}) > 0
    assert metric("fraudstream_llm_first_token_seconds_count", {}) == 1
    assert metric("fraudstream_llm_done_seconds_count", {}) == 1
    assert metric("fraudstream_llm_circuit_state", {}) == 0


async def test_429_is_retried_after_the_servers_retry_after(llm, topic):
    llm.script(Reply(status=429, retry_after="1"))
    found, metric = await narrate(topic, llm, [escalation("limited")])
    assert found["limited"][-1]["text"] == TEXT and found["limited"][-1]["source"] == "llm"
    first, second = llm.requests
    assert second.at - first.at >= 1.0, "Retry-After: 1 was honoured"
    assert metric("fraudstream_llm_errors_total", {"kind": "429"}) == 1
    assert metric("fraudstream_llm_attempts_total", {}) == 2


async def test_a_5xx_is_retried_with_backoff(llm, topic):
    llm.script(Reply(status=500), Reply(status=503))
    found, metric = await narrate(topic, llm, [escalation("flaky")])
    assert found["flaky"][-1]["source"] == "llm" and len(llm.requests) == 3
    assert metric("fraudstream_llm_errors_total", {"kind": "5xx"}) == 2


async def test_when_retries_run_out_the_template_narrates(llm, topic):
    llm.default = Reply(status=500)
    found, metric = await narrate(topic, llm, [escalation("down")], max_retries=2)
    final = found["down"][-1]
    assert final["source"] == "template" and final["fallback"] == "llm_failed"
    assert sources(found["down"]) == ["template"]
    assert len(llm.requests) == 3
    assert metric("fraudstream_llm_calls_total", {"outcome": "failed"}) == 1
    assert metric("fraudstream_llm_template_fallbacks_total", {"reason": "llm_failed"}) == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (Reply(text=TEXT, stall_after=4, stall_s=30), "stall"),
        (Reply(text=TEXT, malformed_after=4), "malformed"),
        (Reply(text=TEXT, disconnect_after=4), "connection"),
    ],
    ids=["stall", "malformed", "disconnect"],
)
async def test_a_failure_mid_stream_is_completed_by_the_template(llm, topic, reply, kind):
    llm.script(reply)
    found, metric = await narrate(topic, llm, [escalation("broken")])
    chunks = found["broken"]
    final = chunks[-1]
    assert sources(chunks) == ["llm", "template"], "the words already sent stay"
    assert final["text"].startswith("The card paid an ")
    assert "stopped before finishing" in final["text"] and "reason codes" in final["text"]
    assert final["source"] == "template" and final["fallback"] == f"llm_interrupted:{kind}"
    assert len(llm.requests) == 1, "no retry once text was published"
    assert metric("fraudstream_llm_errors_total", {"kind": kind}) == 1
    assert metric("fraudstream_llm_calls_total", {"outcome": "interrupted"}) == 1
    assert metric("fraudstream_llm_template_fallbacks_total", {"reason": "llm_interrupted"}) == 1
    llm.release()


async def test_a_slow_start_times_out_and_the_retry_streams(llm, topic):
    llm.script(Reply(text=TEXT, start_delay_s=3))
    found, metric = await narrate(topic, llm, [escalation("slow")], first_token_timeout_s=0.5)
    assert found["slow"][-1]["source"] == "llm" and found["slow"][-1]["text"] == TEXT
    assert len(llm.requests) == 2
    assert metric("fraudstream_llm_errors_total", {"kind": "timeout"}) == 1


async def test_the_circuit_opens_then_a_probe_closes_it(llm, topic):
    llm.default = Reply(status=500)
    registry = CollectorRegistry()
    settings = NarratorSettings(
        api_key="sk-integration",
        base_url=llm.base_url,
        max_retries=0,
        breaker_failures=2,
        breaker_cooldown_s=1.0,
    )
    narrator = Narrator(settings, topic.publish, metrics=LLMMetrics(registry))
    metric = registry.get_sample_value
    for tx_id in ("f1", "f2", "f3"):
        await narrator.submit(orjson.dumps(escalation(tx_id)))
        await narrator.wait_idle(10)
    assert len(llm.requests) == 2, "the third case never reached the server"
    assert metric("fraudstream_llm_circuit_state", {}) == 1
    llm.default = Reply(text=TEXT)
    await asyncio.sleep(1.1)
    await narrator.submit(orjson.dumps(escalation("probe")))
    await narrator.wait_idle(10)
    await narrator.close()
    assert metric("fraudstream_llm_circuit_state", {}) == 0
    found = await topic.narratives({"f1", "f2", "f3", "probe"})
    for chunks in found.values():
        assert_complete(chunks)
    assert [found[t][-1].get("fallback") for t in ("f1", "f2", "f3", "probe")] == [
        "llm_failed",
        "llm_failed",
        "circuit_open",
        None,
    ]
    assert found["probe"][-1]["source"] == "llm"
    assert metric("fraudstream_llm_template_fallbacks_total", {"reason": "circuit_open"}) == 1


async def test_without_a_key_the_template_streams_deterministically(topic):
    first, _ = await narrate(topic, None, [escalation("t1")])
    again = await narrate_again(topic, escalation("t1"))
    assert [orjson.dumps(c) for c in first["t1"]] == [orjson.dumps(c) for c in again]
    assert sources(first["t1"]) == ["template"] and len(first["t1"]) > 5


async def narrate_again(topic: Topic, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The same record through a new narrator onto a new reader: the second narrative's chunks."""
    narrator = Narrator(NarratorSettings(), topic.publish, metrics=LLMMetrics(None))
    await narrator.submit(orjson.dumps(record))
    await narrator.wait_idle(10)
    await narrator.close()
    await topic.producer.flush()
    chunks: list[dict[str, Any]] = []
    consumer = AIOKafkaConsumer(
        topic.name, bootstrap_servers=topic.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while sum(c["done"] for c in chunks) < 2:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                chunks.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    first_done = next(i for i, c in enumerate(chunks) if c["done"])
    return chunks[first_done + 1 :]


# --- the worker: escalations -> narratives, scoring untouched by a hanging LLM -------------

POLICY = """\
version: "narrator-test"
thresholds: {review: 0.5, decline: 0.95}
rules:
  - {name: big_amount, when: {feature: amount, op: ">=", value: 120}, action: review,
     priority: 10, text: "Large amount"}
"""


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> Stack:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    stack = Stack(kafka_bootstrap, redis_url, partitions=2)
    stack.extra.update({"FRAUD_LEARN": "false", "FRAUD_POLICY": str(policy)})
    await create_topics(stack.settings())
    return stack


async def test_the_worker_narrates_and_keeps_scoring_while_the_llm_hangs(
    stack: Stack, llm: LLMServer, tmp_path: Path
):
    # Every call streams two words and then hangs until released: the narrator's two slots
    # stay busy, the cases behind them overflow or outwait the queue to the template.
    llm.default = Reply(text=TEXT, stall_after=2, stall_s=120)
    stack.extra.update(
        {
            "OPENAI_API_KEY": "sk-worker-secret",
            "OPENAI_BASE_URL": llm.base_url,
            "FRAUD_LLM_CONCURRENCY": "2",
            "FRAUD_LLM_QUEUE_SIZE": "8",
            "FRAUD_LLM_STALL_TIMEOUT_S": "90",
            "FRAUD_LLM_TIMEOUT_S": "120",
            "FRAUD_LLM_MAX_WAIT_S": "3",
            "FRAUD_LLM_CACHE_SIZE": "0",
        }
    )
    s = stack.settings()
    worker = WorkerProcess(stack, tmp_path).start()
    rows = handbook_rows(1_500)
    warm, rest = rows[:100], rows[100:]
    try:
        await replay_async(
            warm, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
        )
        deadline = time.monotonic() + 45
        while llm.in_flight < 2:
            assert time.monotonic() < deadline and worker.alive(), worker.log_tail()
            await asyncio.sleep(0.1)
        # Both LLM calls hang now. The next 1,400 payments must all be decided while they do.
        sent_at = time.monotonic()
        await replay_async(
            rest, bootstrap=stack.bootstrap, topic=s.topic_transactions, send_labels=False
        )
        decisions = await read_topic(
            stack.bootstrap,
            s.topic_decisions,
            lambda got: len({d["tx_id"] for d in got}) >= len(rows),
            timeout=60,
            alive=worker.alive,
            describe=worker.log_tail,
        )
        scored_in = time.monotonic() - sent_at
        assert llm.in_flight == 2 and len(llm.requests) == 2, "the LLM hung all along"
        assert scored_in < 30, f"{len(rest)} payments took {scored_in:.1f}s"
        escalated = {d["tx_id"] for d in decisions if d["action"] != "approve"}
        assert len(escalated) >= 50, "the test policy escalates large amounts"
        llm.release()
        narratives = await read_topic(
            stack.bootstrap,
            s.topic_narratives,
            lambda got: {r["tx_id"] for r in got if r["done"]} >= escalated,
            timeout=60,
            alive=worker.alive,
            describe=worker.log_tail,
        )
    finally:
        llm.release()
        worker.stop()
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for record in narratives:
        by_tx.setdefault(record["tx_id"], []).append(record)
    assert set(by_tx) == escalated, "every escalated payment, and only those, is narrated"
    for chunks in by_tx.values():
        assert_complete(chunks)
    finals = [chunks[-1] for chunks in by_tx.values()]
    assert sum(f["source"] == "llm" for f in finals) >= 2, "the released calls finished"
    assert {"queue_full", "waited_too_long"} & {f.get("fallback") for f in finals}
    log = worker.log_path.read_text()
    assert "sk-worker-secret" not in log and "prompt_sha256" in log
