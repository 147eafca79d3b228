"""Narrative chunks: kept per case in seq order, repeats ignored, bounded, done ends a stream."""

from __future__ import annotations

import orjson
import pytest

from api.narratives import NarrativeStore, parse_chunk
from models.errors import InvalidRecord


def chunk(tx: str, seq: int, delta: str = "x", done: bool = False) -> dict[str, object]:
    return parse_chunk(
        orjson.dumps(
            {"tx_id": tx, "seq": seq, "delta": delta, "done": done, "source": "llm", "model": "m"}
        )
    )


def test_chunks_come_back_in_seq_order_and_end_with_done() -> None:
    store = NarrativeStore(retention=10)
    for seq in (0, 2, 1, 1):
        store.add(chunk("t", seq, f"d{seq}"))
    chunks, done = store.after("t", -1)
    assert [s for s, _ in chunks] == [0, 1, 2] and not done
    assert orjson.loads(chunks[1][1])["delta"] == "d1"
    store.add(chunk("t", 3, "", done=True))
    chunks, done = store.after("t", 2)
    assert [s for s, _ in chunks] == [3] and done
    assert store.after("t", 3) == ([], True)


def test_the_store_keeps_the_most_recent_narratives() -> None:
    store = NarrativeStore(retention=2)
    for tx in ("a", "b", "c"):
        store.add(chunk(tx, 0))
    store.add(chunk("b", 1))
    store.add(chunk("d", 0))
    assert len(store) == 2
    assert store.after("a", -1) == ([], False) and store.after("c", -1) == ([], False)
    assert len(store.after("b", -1)[0]) == 2


async def test_watchers_are_woken_and_forgotten() -> None:
    store = NarrativeStore(retention=2)
    event = store.watch("t")
    store.add(chunk("other", 0))
    assert not event.is_set()
    store.add(chunk("t", 0))
    assert event.is_set()
    store.unwatch("t", event)
    assert store.watchers == 0


def test_card_numbers_in_text_are_masked() -> None:
    record = chunk("t", 0, "card 4111111111111111 was used")
    assert record["delta"] == "card 411111******1111 was used"


@pytest.mark.parametrize(
    "raw",
    [
        {"seq": 0},
        {"tx_id": "t", "seq": -1},
        {"tx_id": "t", "seq": "1"},
        {"tx_id": "t", "seq": True},
        {"tx_id": "t", "seq": 0, "done": "yes"},
        {"tx_id": "t", "seq": 0, "delta": 3},
    ],
)
def test_unusable_chunks_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidRecord):
        parse_chunk(orjson.dumps(raw))
