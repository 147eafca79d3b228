"""The decision buffer: cursors that resume exactly across partitions, bounded memory, the queue."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from api.buffer import DecisionBuffer
from api.decisions import DecisionFilter, decode_cursor, encode_cursor, parse_decision
from models.errors import InvalidRecord


def decision(
    tx: str, *, card: str = "c1", merchant: str = "m1", action: str = "approve", score: float = 0.1
) -> bytes:
    return orjson.dumps(
        {
            "tx_id": tx,
            "card_id": card,
            "merchant_id": merchant,
            "action": action,
            "score": score,
            "reasons": [],
            "features": {"amount": 1.0},
        }
    )


def feed(buffer: DecisionBuffer, partition: int, offset: int, raw: bytes) -> None:
    record, data = parse_decision(raw)
    buffer.add(partition, offset, record, data)


@pytest.mark.parametrize(
    "positions", [{0: 0}, {0: 26, 1: 15}, {3: 2**40, 0: 1, 11: 7}, {i: i * 1000 for i in range(64)}]
)
def test_cursor_round_trips(positions: dict[int, int]) -> None:
    text = encode_cursor(positions)
    assert "\n" not in text and decode_cursor(text) == positions


@pytest.mark.parametrize("text", ["", "zz", "0-1.", "0:1", "-1-2", "0-1\n1-2", "0-" + "f" * 17])
def test_foreign_cursors_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(text)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", None),
        (b"[1]", None),
        (
            orjson.dumps({"card_id": "c", "merchant_id": "m", "action": "review", "score": 1}),
            "tx_id",
        ),
        (
            orjson.dumps(
                {"tx_id": "t", "card_id": "c", "merchant_id": "m", "action": "x", "score": 1}
            ),
            "action",
        ),
        (
            orjson.dumps(
                {
                    "tx_id": "t",
                    "card_id": "c",
                    "merchant_id": "m",
                    "action": "review",
                    "score": "high",
                }
            ),
            "score",
        ),
    ],
)
def test_unusable_decisions_are_refused(raw: bytes, field: str | None) -> None:
    with pytest.raises(InvalidRecord) as caught:
        parse_decision(raw)
    assert caught.value.field == field


def test_a_card_number_is_masked_before_it_is_held() -> None:
    record, data = parse_decision(decision("t1", card="4111 1111 1111 1111"))
    assert record["card_id"] == "411111******1111"
    assert b"4111111111111111" not in data and b"4111 1111" not in data
    assert orjson.loads(data)["card_id"] == "411111******1111"


def test_resume_from_any_cursor_gives_every_later_record_once() -> None:
    rng = random.Random(7)
    buffer = DecisionBuffer(retention=10_000, case_retention=10)
    for p in range(3):
        buffer.start_partition(p, 100)
    offsets = {0: 100, 1: 100, 2: 100}
    order: list[tuple[int, int]] = []
    for n in range(300):
        p = rng.randrange(3)
        feed(buffer, p, offsets[p], decision(f"t{n}"))
        order.append((p, offsets[p]))
        offsets[p] += rng.choice((1, 1, 2))  # gaps in offsets, as compaction or markers leave
    entries = list(buffer.entries())
    for i in (0, 1, 57, 150, 299):
        _, replay = buffer.subscribe(DecisionFilter(), 10, decode_cursor(entries[i].cursor))
        assert not replay.gap
        assert [(e.partition, e.offset) for e in replay.entries] == order[i + 1 :]


def test_a_cursor_older_than_the_buffer_reports_a_gap_with_the_missed_count() -> None:
    buffer = DecisionBuffer(retention=5, case_retention=10)
    buffer.start_partition(0, 0)
    buffer.start_partition(1, 0)
    for n in range(10):
        feed(buffer, n % 2, n // 2, decision(f"t{n}"))
    _, replay = buffer.subscribe(DecisionFilter(), 10, {0: 0, 1: 0})
    assert replay.gap and replay.missed == 5
    assert len(replay.entries) == 5
    _, filtered = buffer.subscribe(DecisionFilter(merchant="m1"), 10, {0: 0, 1: 0})
    assert filtered.gap and filtered.missed is None, "with a filter the count is unknown"
    assert len(buffer) == 5 and buffer.get("t0") is None and buffer.get("t9") is not None


def test_a_cursor_from_a_replica_ahead_skips_what_the_client_already_has() -> None:
    buffer = DecisionBuffer(retention=100, case_retention=10)
    buffer.start_partition(0, 0)
    feed(buffer, 0, 0, decision("a"))
    subscriber, replay = buffer.subscribe(DecisionFilter(), 10, {0: 3})
    assert replay.entries == [] and not replay.gap
    for offset, tx in ((1, "b"), (2, "c"), (3, "d")):
        feed(buffer, 0, offset, decision(tx))
    assert [e.tx_id for e in subscriber.pending] == ["d"]


async def test_a_slow_subscriber_loses_its_pending_events_not_memory() -> None:
    buffer = DecisionBuffer(retention=1_000, case_retention=10)
    drops: list[int] = []
    slow, _ = buffer.subscribe(DecisionFilter(), 3, None, on_drop=drops.append)
    fast, _ = buffer.subscribe(DecisionFilter(), 100, None)
    for n in range(10):
        feed(buffer, 0, n, decision(f"t{n}"))
    assert len(slow.pending) <= 3
    dropped, events = await slow.take()
    assert dropped + len(events) == 10 and dropped > 0
    assert sum(drops) == dropped, "drops are reported as they happen"
    assert [e.tx_id for e in events] == [f"t{n}" for n in range(10 - len(events), 10)]
    assert (await fast.take()) == (0, list(buffer.entries()))
    buffer.unsubscribe(slow)
    assert buffer.subscribers == 1


async def test_take_waits_for_news() -> None:
    buffer = DecisionBuffer(retention=10, case_retention=10)
    subscriber, _ = buffer.subscribe(DecisionFilter(actions=frozenset({"review"})), 10, None)
    waiting = asyncio.ensure_future(subscriber.take())
    feed(buffer, 0, 0, decision("a"))
    await asyncio.sleep(0.01)
    assert not waiting.done(), "an approve does not match the filter"
    feed(buffer, 0, 1, decision("b", action="review"))
    dropped, events = await asyncio.wait_for(waiting, 1)
    assert dropped == 0 and [e.tx_id for e in events] == ["b"]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (DecisionFilter(), {"a", "b", "c", "d"}),
        (DecisionFilter(actions=frozenset({"review", "decline"})), {"b", "c"}),
        (DecisionFilter(min_score=0.5), {"b", "c"}),
        (DecisionFilter(merchant="m2"), {"c", "d"}),
        (DecisionFilter(card="c2", min_score=0.9), {"c"}),
    ],
)
def test_filters(wanted: DecisionFilter, expected: set[str]) -> None:
    buffer = DecisionBuffer(retention=10, case_retention=10)
    rows = [
        ("a", "c1", "m1", "approve", 0.1),
        ("b", "c1", "m1", "review", 0.6),
        ("c", "c2", "m2", "decline", 0.95),
        ("d", "c2", "m2", "approve", 0.2),
    ]
    for offset, (tx, card, merchant, action, score) in enumerate(rows):
        feed(
            buffer,
            0,
            offset,
            decision(tx, card=card, merchant=merchant, action=action, score=score),
        )
    _, replay = buffer.subscribe(wanted, 10, {0: 0})
    assert {e.tx_id for e in replay.entries} == expected


def test_cases_outlive_the_ring_and_order_by_score() -> None:
    buffer = DecisionBuffer(retention=3, case_retention=2)
    feed(buffer, 0, 0, decision("r1", action="review", score=0.6))
    feed(buffer, 0, 1, decision("r2", action="decline", score=0.9))
    feed(buffer, 0, 2, decision("r3", action="review", score=0.7))
    for n in range(3, 10):
        feed(buffer, 0, n, decision(f"a{n}"))
    assert [e.tx_id for e in buffer.open_cases()] == ["r2", "r3"], "r1 fell off the case bound"
    assert buffer.get("r3") is not None and buffer.get("a3") is None
    buffer.get("r2").verdict_seen = True  # type: ignore[union-attr]
    assert [e.tx_id for e in buffer.open_cases()] == ["r3"]


def test_card_history_is_newest_first_and_bounded() -> None:
    buffer = DecisionBuffer(retention=4, case_retention=2)
    for n in range(6):
        feed(buffer, 0, n, decision(f"t{n}", card="c1" if n % 2 else "c2"))
    assert [e.tx_id for e in buffer.card_history("c1", 10)] == ["t5", "t3"]
    assert [e.tx_id for e in buffer.card_history("c2", 1)] == ["t4"]
    assert buffer.card_history("nope", 5) == []
