"""The LLM stalls mid-narrative while payments flow: scoring goes on, every case gets a whole
narrative (the LLM's or the template's), and the LLM's narratives come back when it does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Record, Workers
from tests.faults.load import (
    PacedLoad,
    Seen,
    Timing,
    TopicWatch,
    recovery_figures,
    wait_members,
)
from tests.faults.outcome import scrape, settle
from tests.integration.harness import Stack, handbook_rows
from tests.llm_server import LLMServer, Reply

pytestmark = pytest.mark.timeout(150)

RATE = 250.0
TEXT = "The card paid an unusual amount at a terminal that has a recent history of fraud."
# Large amounts go to review, so about one payment in ten is escalated and narrated.
POLICY = """\
version: "fault-llm"
thresholds: {review: 0.5, decline: 0.95}
rules:
  - {name: big_amount, when: {feature: amount, op: ">=", value: 120}, action: review,
     priority: 10, text: "Large amount"}
"""


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    # Every call streams two words, then goes silent until released.
    with LLMServer(default=Reply(text=TEXT, stall_after=2, stall_s=600)) as server:
        yield server


def narratives_by_case(records: list[Seen]) -> dict[str, list[dict[str, Any]]]:
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for seen in records:
        by_tx.setdefault(seen.value["tx_id"], []).append(seen.value)
    return by_tx


def assert_whole(chunks: list[dict[str, Any]]) -> None:
    """One narrative: seq 0..n, one final record last, its text the deltas joined."""
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "gapless, once each"
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final["text"] and final["text"] == "".join(c["delta"] for c in chunks)
    assert final["source"] in ("llm", "template")


async def test_the_llm_stalls_while_payments_flow(
    stack: Stack, workers: Workers, llm: LLMServer, tmp_path: Path, record: Record
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    stack.extra.update(
        {
            "FRAUD_POLICY": str(policy),
            "OPENAI_API_KEY": "sk-fault-suite",
            "OPENAI_BASE_URL": llm.base_url,
            "FRAUD_LLM_CONCURRENCY": "2",
            "FRAUD_LLM_QUEUE_SIZE": "16",
            "FRAUD_LLM_STALL_TIMEOUT_S": "1",
            "FRAUD_LLM_MAX_WAIT_S": "2",
            "FRAUD_LLM_CACHE_SIZE": "0",
            "FRAUD_LLM_BREAKER_COOLDOWN_S": "2",
            "FRAUD_LLM_REQUESTS_PER_MIN": "100000",
        }
    )
    rows = handbook_rows(4_000)
    s = stack.settings()
    worker = workers.start(stack)
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with (
        TopicWatch(stack.bootstrap, s.topic_decisions) as decisions,
        TopicWatch(stack.bootstrap, s.topic_narratives) as narratives,
    ):
        stall = Timing(began=time.time())
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await decisions.until(
            lambda w: len(w.records) >= 1_500,
            60,
            what="decisions while the LLM stalls",
            alive=worker.alive,
            describe=workers.describe,
        )
        stalled_calls = len(llm.requests)
        llm.default = Reply(text=TEXT, pace_s=0.002)
        llm.release()
        stall.close()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            60,
            what="every payment decided",
            alive=worker.alive,
            describe=workers.describe,
        )
        escalated = {d["tx_id"] for d in decisions.values() if d["action"] != "approve"}
        await narratives.until(
            lambda w: {r.value["tx_id"] for r in w.records if r.value["done"]} >= escalated,
            60,
            what="a finished narrative for every escalation",
            alive=worker.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["worker"])
        worker.stop()
        seen = list(decisions.records)
        chunks = list(narratives.records)
    by_case = narratives_by_case(chunks)
    finals = {tx: parts[-1] for tx, parts in by_case.items()}
    llm_back = [
        c.at
        for c in chunks
        if c.value["done"] and c.value["source"] == "llm" and c.at > stall.ended
    ]
    figures = recovery_figures(seen, load.sent_at, stall)
    figures |= await settle(stack, rows, seen, [stall])
    record(
        fault="every LLM call stalls after two words until released, mid-feed",
        stall_s=round(stall.ended - stall.began, 3),
        stalled_calls=stalled_calls,
        escalated=len(escalated),
        narratives_llm=sum(f["source"] == "llm" for f in finals.values()),
        narratives_template=sum(f["source"] == "template" for f in finals.values()),
        fallbacks=sorted({str(f.get("fallback")) for f in finals.values()}),
        llm_back_s=round(min(llm_back) - stall.ended, 3) if llm_back else None,
        worker_metrics=metrics,
        **figures,
    )
    assert len(escalated) >= 100, "the policy escalates large amounts"
    assert set(by_case) == escalated, "every escalated payment, and only those, is narrated"
    for parts in by_case.values():
        assert_whole(parts)
    stalled = [f for f in finals.values() if str(f.get("fallback", "")).startswith("llm_")]
    assert stalled, "stalled calls were completed by the template"
    assert llm_back, "the LLM's narratives came back once it answered again"
    # Scoring never waited for the LLM: decisions flowed at the feed's pace all along.
    assert figures["longest_pause_s"] < 2.0, figures
    assert figures["duplicates"] == 0 and figures["dlq"] == 0
    assert metrics["fraudstream_escalations_total"] == len(escalated)
    finished = sum(v for k, v in metrics.items() if k.startswith("fraudstream_llm_narratives"))
    assert finished == len(escalated), "one finished narrative per escalation"
    assert metrics.get('fraudstream_llm_errors_total{kind="stall"}', 0) >= 1
