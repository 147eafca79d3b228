"""Bursts of poison messages between good payments: each goes to the DLQ once, the rest flows."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from processor.app import DLQ_RAW_MAX
from tests.faults.conftest import Record, Workers
from tests.faults.load import (
    PacedLoad,
    Timing,
    TopicWatch,
    recovery_figures,
    wait_members,
)
from tests.faults.outcome import scrape, settle
from tests.integration.harness import Stack, handbook_rows

pytestmark = pytest.mark.timeout(150)

RATE = 250.0
BURSTS = 4
BURST_GAP_S = 1.5


def good(n: int) -> dict[str, object]:
    """A valid payment's fields, to spoil one at a time."""
    return {
        "tx_id": f"poison-{n}",
        "ts": "2018-04-01T03:00:00Z",
        "card_id": f"poison-card-{n}",
        "merchant_id": "poison-terminal",
        "amount": 10.0,
        "currency": "EUR",
    }


def poison_kinds(n: int) -> list[bytes]:
    """One of each kind of bad record: not JSON, wrong types, out of range, huge."""

    def spoil(**fields: object) -> bytes:
        record = good(n)
        record.update(fields)
        return orjson.dumps({k: v for k, v in record.items() if v is not None})

    return [
        b'{"tx_id": "torn", "amount": 1',  # cut off mid-record
        b"\xff\xfe\x00binary",  # not UTF-8
        b"[1, 2, 3]",  # JSON, not an object
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than any parser goes
        spoil(tx_id=None),
        spoil(tx_id=True),
        spoil(amount="lots"),
        spoil(amount=-5),
        spoil(amount=[1]),
        spoil(ts="yesterday"),
        spoil(ts=1e300),  # epoch milliseconds far past 2100
        spoil(currency="EURO"),
        spoil(lat=1e6),
        spoil(card_id="c" * 5_000),  # longer than any field may be
        spoil(tx_id="t" * 100_000),
        # 600 kB of quotes in a memo: escaped twice in a DLQ record, it outgrows a Kafka message.
        spoil(memo='"' * 300_000),
    ]


async def send_poison(bootstrap: str, topic: str, keys: list[bytes]) -> int:
    """``BURSTS`` bursts of every poison kind, keyed by real cards (so they sit between good
    payments on the same partitions); how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**21)
    await producer.start()
    cycle = itertools.cycle(keys)
    sent = 0
    try:
        for burst in range(BURSTS):
            records = poison_kinds(burst)
            futures = [await producer.send(topic, r, key=next(cycle)) for r in records]
            await asyncio.gather(*futures)
            sent += len(records)
            await asyncio.sleep(BURST_GAP_S)
    finally:
        await producer.stop()
    return sent


async def test_a_burst_of_poison_messages_between_good_ones(
    stack: Stack, workers: Workers, record: Record
) -> None:
    rows = handbook_rows(4_000)
    s = stack.settings()
    worker = workers.start(stack)
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with (
        TopicWatch(stack.bootstrap, s.topic_decisions) as decisions,
        TopicWatch(stack.bootstrap, s.topic_dlq) as dead,
    ):
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await decisions.until(
            lambda w: len(w.records) >= 500,
            60,
            what="decisions before the poison",
            alive=worker.alive,
            describe=workers.describe,
        )
        burst = Timing(began=time.time())
        keys = [row.tx.card_id.encode() for row in rows[:500]]
        poisoned = await send_poison(stack.bootstrap, s.topic_transactions, keys)
        burst.close()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            60,
            what="every good payment decided",
            alive=worker.alive,
            describe=workers.describe,
        )
        await dead.until(
            lambda w: len(w.records) + w.undecodable >= poisoned,
            30,
            what="every poison message dead-lettered",
            alive=worker.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["worker"])
        worker.stop()
        seen = list(decisions.records)
        letters = dead.values()
        undecodable = dead.undecodable
    figures = recovery_figures(seen, load.sent_at, burst)
    figures |= await settle(stack, rows, seen, [burst])
    record(
        fault=f"{BURSTS} bursts of {poisoned // BURSTS} poison records between good payments",
        poison_sent=poisoned,
        worker_metrics=metrics,
        **figures,
    )
    assert undecodable == 0, "every DLQ record is JSON"
    assert figures["dlq"] == poisoned, "each poison record dead-lettered exactly once"
    where = {(d["partition"], d["offset"]) for d in letters}
    assert len(where) == poisoned and all(isinstance(p, int) for p, _ in where)
    assert all(d["error"] and d["raw_encoding"] in ("utf-8", "base64") for d in letters)
    # The huge ones keep their head, marked as cut: a DLQ record must fit a Kafka message.
    cut = [d for d in letters if d.get("raw_truncated")]
    huge = sum(len(r) > DLQ_RAW_MAX for r in poison_kinds(0)) * BURSTS
    assert len(cut) == huge and all(d["raw_size"] > len(d["raw"]) == DLQ_RAW_MAX for d in cut)
    assert figures["duplicates"] == 0, "no fault but poison: nothing was redelivered"
    assert figures["longest_pause_s"] < 5.0, figures
    assert metrics["fraudstream_dead_letters_total"] == poisoned
    assert metrics["fraudstream_transactions_scored_total"] == len(rows)
