"""Wire validation and card-number masking."""

from __future__ import annotations

import math

import pytest

from models import InvalidRecord, label_from_wire, mask_pan, transaction_from_wire
from models.records import format_ts, parse_ts

GOOD = {
    "tx_id": "t1",
    "ts": "2018-04-01T00:00:31Z",
    "card_id": "c1",
    "merchant_id": "m1",
    "amount": "57.16",
    "currency": "eur",
    "merchant_name": "Corner shop",
    "channel_hint": "pos",
}


def test_a_good_record() -> None:
    tx = transaction_from_wire(GOOD)
    assert (tx.tx_id, tx.amount, tx.currency) == ("t1", 57.16, "EUR")
    assert tx.ts == 1_522_540_831.0
    assert tx.extra == {"channel_hint": "pos"}  # unknown fields are kept
    assert transaction_from_wire(tx.to_wire()) == tx


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2018-04-01 00:00:31", 1_522_540_831.0),  # no zone: UTC
        ("2018-04-01T02:00:31+02:00", 1_522_540_831.0),
        (1_522_540_831_000, 1_522_540_831.0),  # epoch milliseconds
        (1_522_540_831, 1_522_540_831.0),  # epoch seconds
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    assert parse_ts(value) == expected


def test_format_ts_is_rfc3339_utc() -> None:
    assert format_ts(1_522_540_831.5) == "2018-04-01T00:00:31.500Z"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tx_id": ""}, "tx_id"),
        ({"tx_id": None}, "tx_id"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": "2150-01-01T00:00:00Z"}, "ts"),
        ({"ts": math.nan}, "ts"),
        ({"ts": True}, "ts"),
        ({"amount": "abc"}, "amount"),
        ({"amount": math.inf}, "amount"),
        ({"amount": "nan"}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": 1e308}, "amount"),
        ({"amount": "1000000000001"}, "amount"),
        ({"amount": [1]}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"card_id": None}, "card_id"),
        ({"merchant_id": {"x": 1}}, "merchant_id"),
        ({"merchant_name": "x" * 5000}, "merchant_name"),
        ({"lat": 91}, "lat"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRecord) as err:
        transaction_from_wire({**GOOD, **change})
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_not_an_object() -> None:
    with pytest.raises(InvalidRecord, match="JSON object"):
        transaction_from_wire(["t1"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111111111111111", "411111******1111"),
        ("card 4111 1111 1111 1111 paid", "card 411111******1111 paid"),
        ("4111-1111-1111-1111", "411111******1111"),
        ("4111111111111112", "4111111111111112"),  # fails Luhn: not a card number
        ("order 12345", "order 12345"),
    ],
)
def test_mask_pan(text: str, expected: str) -> None:
    assert mask_pan(text) == expected


def test_card_numbers_are_masked_in_every_text_field() -> None:
    raw = {
        **GOOD,
        "card_id": "4111111111111111",
        "memo": "pan 4111111111111111",
        "x": "4111111111111111",
    }
    tx = transaction_from_wire(raw)
    assert tx.card_id == "411111******1111"
    assert tx.memo == "pan 411111******1111"
    assert tx.extra["x"] == "411111******1111"


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ({"tx_id": "t", "label": "fraud", "source": "analyst", "known_at": 0}, True),
        ({"tx_id": "t", "label": "maybe", "source": "analyst", "known_at": 0}, False),
        ({"tx_id": "t", "label": "legit", "source": "rumour", "known_at": 0}, False),
        ({"tx_id": "t", "label": "legit", "source": "replay"}, False),
    ],
)
def test_labels(raw: dict[str, object], ok: bool) -> None:
    if ok:
        label = label_from_wire(raw)
        assert label.is_fraud and label_from_wire(label.to_wire()) == label
    else:
        with pytest.raises(InvalidRecord):
            label_from_wire(raw)
