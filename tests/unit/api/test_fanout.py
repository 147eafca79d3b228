"""Plain clients read the buffer's ring, filtered ones have queues: both keep the same promises."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from api.buffer import DecisionBuffer
from api.decisions import DecisionFilter, parse_decision
from api.subscribers import PlainSubscriber, Subscriber


def feed(buffer: DecisionBuffer, offset: int) -> None:
    raw = orjson.dumps(
        {
            "tx_id": f"t{offset}",
            "card_id": "c",
            "merchant_id": "m",
            "action": "approve",
            "score": 0.5,
        }
    )
    record, data = parse_decision(raw)
    buffer.add(0, offset, record, data)


@pytest.mark.parametrize(("retention", "capacity"), [(1_000, 7), (5, 7), (20, 1), (3, 50)])
async def test_a_plain_client_drops_and_delivers_as_a_queue_would(
    retention: int, capacity: int
) -> None:
    rng = random.Random(retention * 100 + capacity)
    buffer = DecisionBuffer(retention=retention, case_retention=10)
    drops: dict[str, list[int]] = {"plain": [], "queued": []}
    plain, _ = buffer.subscribe(DecisionFilter(), capacity, None, drops["plain"].append)
    # Matches everything, but a filter is set: this client gets a queue of its own.
    queued, _ = buffer.subscribe(
        DecisionFilter(min_score=0.0), capacity, None, drops["queued"].append
    )
    assert isinstance(plain, PlainSubscriber) and isinstance(queued, Subscriber)
    offset = 0
    for _ in range(20):
        batch = rng.randrange(0, 3 * capacity + 2)
        for _ in range(batch):
            feed(buffer, offset)
            offset += 1
        if not batch:  # nothing new: both would wait
            continue
        got_plain = await asyncio.wait_for(plain.take(), 1)
        got_queued = await asyncio.wait_for(queued.take(), 1)
        assert got_plain[0] == got_queued[0], "the same number dropped"
        assert [e.tx_id for e in got_plain[1]] == [e.tx_id for e in got_queued[1]]
    assert sum(drops["plain"]) == sum(drops["queued"])


async def test_plain_clients_woken_in_one_round_share_one_list() -> None:
    buffer = DecisionBuffer(retention=100, case_retention=10)
    first, _ = buffer.subscribe(DecisionFilter(), 10, None)
    second, _ = buffer.subscribe(DecisionFilter(), 10, None)
    waiting = [asyncio.ensure_future(s.take()) for s in (first, second)]
    await asyncio.sleep(0)
    for offset in range(4):
        feed(buffer, offset)
    (_, a), (_, b) = await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert a is b and [e.tx_id for e in a] == ["t0", "t1", "t2", "t3"]
    assert buffer.joined(a) is buffer.joined(b)
    assert buffer.joined(a) == b"".join(e.frame for e in a)
