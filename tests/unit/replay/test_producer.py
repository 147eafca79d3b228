"""The replay's pure parts: speeds, resume points, the merged event order, what goes on the wire."""

from __future__ import annotations

import orjson
import pytest

from models.errors import FraudstreamError
from models.records import Label, Transaction
from replay.producer import (
    ReplayStats,
    events,
    ordered,
    parse_speed,
    parse_start,
    transaction_bytes,
)
from replay.readers import BadRow, Row

DAY = 86_400.0


def row(line: int, ts: float, fraud: bool = False, card: str = "c1") -> Row:
    return Row(line, Transaction(f"t{line}", ts, card, "m1", 10.0, "EUR"), fraud)


@pytest.mark.parametrize(
    ("text", "speed"), [("60x", 60.0), ("1", 1.0), ("0.5x", 0.5), ("MAX", None)]
)
def test_speeds(text: str, speed: float | None) -> None:
    assert parse_speed(text) == speed


@pytest.mark.parametrize("text", ["fast", "0x", "-3x", ""])
def test_bad_speeds_are_one_clear_error(text: str) -> None:
    with pytest.raises(FraudstreamError, match="--speed"):
        parse_speed(text)


def test_resume_points() -> None:
    assert parse_start(None) == (None, None)
    assert parse_start("120") == (120, None)
    line, ts = parse_start("2018-05-01")
    assert line is None and ts == 1525132800.0
    with pytest.raises(FraudstreamError, match="--from"):
        parse_start("yesterday-ish")


def test_labels_come_when_known_merged_in_event_time() -> None:
    rows = [row(2, 0.0, fraud=True), row(3, 1.0 * DAY), row(4, 3.0 * DAY), row(5, 9.0 * DAY)]
    stats = ReplayStats()
    out = list(events(rows, label_delay=2 * DAY, stats=stats))
    kinds = [(ts / DAY, type(rec).__name__) for ts, rec, _ in out]
    assert kinds == [
        (0.0, "Transaction"),
        (1.0, "Transaction"),
        (2.0, "Label"),
        (3.0, "Transaction"),
        (9.0, "Transaction"),
    ]
    label = out[2][1]
    assert isinstance(label, Label)
    assert label.tx_id == "t2" and label.is_fraud and label.source == "replay"


def test_labels_still_due_at_the_end_are_sent() -> None:
    out = list(events([row(2, 0.0, fraud=True)], label_delay=7 * DAY, stats=ReplayStats()))
    assert [type(rec).__name__ for _, rec, _ in out] == ["Transaction", "Label"]
    assert out[1][0] == 7 * DAY


def test_bad_rows_are_counted_not_sent() -> None:
    stats = ReplayStats()
    out = list(events([BadRow(2, "amount: not a number"), row(3, 0.0)], label_delay=0, stats=stats))
    assert len(out) == 1 and stats.bad_rows == 1


def test_resume_skips_rows_before_the_start() -> None:
    rows = [row(2, 0.0), row(3, 10.0), row(4, 20.0)]
    stats = ReplayStats()
    assert [line for *_, line in events(rows, label_delay=0, stats=stats, from_line=3)] == [3, 4]
    stats = ReplayStats()
    out = list(events(rows, label_delay=0, stats=stats, from_ts=15.0))
    assert [line for *_, line in out] == [4] and stats.skipped == 2


def test_ground_truth_never_rides_along() -> None:
    tx = Transaction(
        "t1", 0.0, "c1", "m1", 1.0, "EUR", extra={"TX_FRAUD_SCENARIO": "2", "shop": "x"}
    )
    wire = orjson.loads(transaction_bytes(tx))
    assert "TX_FRAUD_SCENARIO" not in wire
    assert wire["shop"] == "x"


def test_unordered_files_are_sorted_stably() -> None:
    rows = [row(2, 5.0), BadRow(3, "bad"), row(4, 1.0), row(5, 5.0)]
    out = list(ordered(rows))
    assert isinstance(out[0], BadRow)
    assert [r.line for r in out[1:]] == [4, 2, 5]
    in_order = [row(2, 1.0), row(3, 2.0)]
    assert list(ordered(in_order)) == in_order
