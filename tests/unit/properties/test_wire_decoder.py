"""The wire decoder on hostile input: a valid record or one clear ``InvalidRecord``, nothing else.

The worker decodes each Kafka record as ``transaction_from_wire(orjson.loads(value))`` and sends
``orjson.JSONDecodeError`` and ``InvalidRecord`` to the DLQ; any other exception would stop the
agent, and any record that passes must hold the core's invariants, since scoring trusts them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from api.schemas import VerdictRequest
from models.errors import InvalidRecord
from models.records import Label, Transaction, label_from_wire, transaction_from_wire
from tests.unit.properties.strategies import (
    SURROGATES,
    assert_clear_reason,
    assert_valid_label,
    assert_valid_transaction,
    examples,
    good_wire,
    hostile_text,
    json_values,
    leaked,
    mutated_wire,
)

# The exceptions the worker's score and labels agents turn into DLQ records.
DEAD_LETTERED = (orjson.JSONDecodeError, InvalidRecord)


def decode_transaction(value: bytes) -> Transaction:
    """The worker's decode step for one ``transactions`` record."""
    return transaction_from_wire(orjson.loads(value))


def decode_label(value: bytes) -> Label:
    """The worker's decode step for one ``labels`` record."""
    return label_from_wire(orjson.loads(value))


def _outcome(decode: Any, value: Any) -> Any:
    """The decoded record, or the exception the worker dead-letters (anything else escapes)."""
    try:
        return decode(value)
    except DEAD_LETTERED as exc:
        return exc


@examples(100)
@given(wire=good_wire())
def test_a_valid_record_decodes_and_keeps_every_invariant(
    wire: tuple[dict[str, Any], list[str]],
) -> None:
    raw, planted = wire
    tx = decode_transaction(orjson.dumps(raw))
    assert_valid_transaction(tx, planted)


@examples(300)
@given(wire=mutated_wire())
def test_a_mangled_record_decodes_validly_or_fails_with_one_clear_reason(
    wire: tuple[dict[str, Any], list[str]],
) -> None:
    raw, planted = wire
    result = _outcome(decode_transaction, orjson.dumps(raw))
    if isinstance(result, Transaction):
        event("decoded")
        assert_valid_transaction(result, planted)
    else:
        assert isinstance(result, InvalidRecord)
        event(f"refused: {result.field}")
        assert_clear_reason(str(result), planted)


@examples(150)
@given(wire=mutated_wire(python=True))
def test_python_callers_get_the_same_contract(wire: tuple[dict[str, Any], list[str]]) -> None:
    """Dictionaries from code (file readers, tools) may hold what JSON never does."""
    raw, planted = wire
    try:
        tx = transaction_from_wire(raw)
    except InvalidRecord as exc:
        assert_clear_reason(str(exc), planted)
    else:
        assert_valid_transaction(tx, planted)


@examples(200)
@given(value=st.binary(max_size=300))
@example(value=b"")
@example(value=b"\xff\xfe{}")
@example(value=b"[" * 5000)
@example(value=b'{"tx_id": "t", "ts": 1e400}')
@example(value=b'{"tx_id": "\\ud800"}')
@example(value=b'\xef\xbb\xbf{"tx_id": "t"}')
def test_random_bytes_never_escape_the_dead_letter_path(value: bytes) -> None:
    result = _outcome(decode_transaction, value)
    if isinstance(result, InvalidRecord):
        assert_clear_reason(str(result), [])
    elif isinstance(result, Transaction):
        assert_valid_transaction(result, [])


@examples(150)
@given(data=st.data(), top=json_values)
def test_any_json_document_decodes_or_is_dead_lettered(data: st.DataObject, top: Any) -> None:
    value = orjson.dumps(top)
    if data.draw(st.booleans(), label="splice non-UTF-8 bytes"):
        at = data.draw(st.integers(0, len(value)), label="at")
        value = value[:at] + b"\xc3\x28\xff" + value[at:]
    result = _outcome(decode_transaction, value)
    if isinstance(result, Transaction):
        assert_valid_transaction(result, [])
    elif isinstance(result, InvalidRecord):
        assert_clear_reason(str(result), [])


@examples(150)
@given(wire=good_wire(), name=st.sampled_from(("merchant_name", "memo")), data=st.data())
def test_hostile_merchant_names_are_data_not_failures(
    wire: tuple[dict[str, Any], list[str]], name: str, data: st.DataObject
) -> None:
    """Bidi overrides, zero-width, control characters and NULs are kept, card numbers masked."""
    raw, planted = wire
    text, pans_in = data.draw(hostile_text(max_chunks=10), label="text")
    assume(text and len(text) <= 1024)
    raw[name] = text
    tx = decode_transaction(orjson.dumps(raw))
    assert_valid_transaction(tx, planted + pans_in)
    kept = getattr(tx, name)
    assert kept is not None
    assert not pans_in or not leaked(pans_in[0], kept)


@examples(50)
@given(wire=good_wire(), surrogate=st.sampled_from(SURROGATES))
def test_lone_surrogates_are_refused_not_passed_on(
    wire: tuple[dict[str, Any], list[str]], surrogate: str
) -> None:
    """JSON decoders refuse them; a dictionary from code gets a clear reason, never a record
    that fails later when it is encoded for Kafka."""
    raw, _ = wire
    raw["merchant_name"] = f"shop {surrogate}"
    with pytest.raises(InvalidRecord, match="merchant_name: not valid Unicode") as caught:
        transaction_from_wire(raw)
    assert caught.value.field == "merchant_name"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b'{"merchant_name": "\\ud800"}')


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "EUR\n"}, "currency"),
        ({"currency": "\ufb00i"}, "currency"),
        ({"amount": 10**400}, "amount"),
        ({"ts": 10**400}, "ts"),
        ({"ts": [1]}, "ts"),
        ({"tx_id": 10**5000}, "tx_id"),
        ({"card_id": 10**5000}, "card_id"),
        ({"x": 10**20}, "'x'"),
        ({"x": b"raw"}, "'x'"),
        ({"x": {1: "a"}}, "'x'"),
        ({"\ud800": 1}, "'\\ud800'"),
    ],
)
def test_edges_found_by_the_properties(change: dict[str, Any], field: str) -> None:
    """Each of these once slipped through (or crashed) and is refused now, naming the field."""
    raw = {
        "tx_id": "t1",
        "ts": "2018-04-01T00:00:00Z",
        "card_id": "c1",
        "merchant_id": "m1",
        "amount": 1.0,
        "currency": "EUR",
        **change,
    }
    with pytest.raises(InvalidRecord) as caught:
        transaction_from_wire(raw)
    assert caught.value.field == field
    assert_clear_reason(str(caught.value), [])


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        ("1970-01-01T00:00:00Z", True),
        ("2099-12-31T23:59:59.999Z", True),
        ("1969-12-31T23:59:59Z", False),
        ("2100-01-01T00:00:00Z", False),
        ("0001-01-01T00:00:00+01:00", False),
        ("9999-12-31T23:59:59-01:00", False),
        (-1, False),
        (4_102_444_800_000, False),  # 2100 in epoch milliseconds
        (4_102_444_799_999, True),
    ],
)
def test_far_past_and_far_future_timestamps(ts: Any, ok: bool) -> None:
    raw = {
        "tx_id": "t",
        "ts": ts,
        "card_id": "c",
        "merchant_id": "m",
        "amount": 1,
        "currency": "EUR",
    }
    result = _outcome(decode_transaction, orjson.dumps(raw))
    assert isinstance(result, Transaction) is ok
    if not ok:
        assert isinstance(result, InvalidRecord) and result.field == "ts"


# --- labels and verdicts ---------------------------------------------------------------------

_label_fields = st.fixed_dictionaries(
    {},
    optional={
        "tx_id": st.one_of(st.text(min_size=1, max_size=20), json_values),
        "label": st.one_of(st.sampled_from(("fraud", "legit", "FRAUD", "")), json_values),
        "source": st.one_of(st.sampled_from(("chargeback", "analyst", "replay")), json_values),
        "known_at": st.one_of(st.sampled_from(("2018-04-01T00:00:00Z", 1.5e12)), json_values),
        "extra": json_values,
    },
)


@examples(300)
@given(raw=_label_fields)
@example(raw={"tx_id": "t", "label": [], "source": "analyst", "known_at": 0})
@example(raw={"tx_id": "t", "label": "fraud", "source": {}, "known_at": 0})
def test_labels_decode_validly_or_fail_with_one_clear_reason(raw: dict[str, Any]) -> None:
    result = _outcome(decode_label, orjson.dumps(raw))
    if isinstance(result, Label):
        assert_valid_label(result)
    else:
        assert isinstance(result, InvalidRecord), result
        assert_clear_reason(str(result), [])


@examples(100)
@given(value=st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps)))
def test_random_label_bytes_never_escape_the_dead_letter_path(value: bytes) -> None:
    result = _outcome(decode_label, value)
    assert isinstance(result, Label | orjson.JSONDecodeError | InvalidRecord)


@examples(150)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.fixed_dictionaries(
            {},
            optional={
                "verdict": st.one_of(st.sampled_from(("fraud", "legit")), json_values),
                "note": st.one_of(hostile_text().map(lambda pair: pair[0]), json_values),
                "change": json_values,
                "other": json_values,
            },
        ).map(orjson.dumps),
    )
)
def test_verdict_bodies_validate_or_fail_with_a_validation_error(body: bytes) -> None:
    """The API's one decoder of analyst verdicts: a 422 for anything it cannot take."""
    try:
        verdict = VerdictRequest.model_validate_json(body)
    except ValidationError as exc:
        assert exc.errors()
        return
    assert verdict.verdict in ("fraud", "legit")
    assert isinstance(verdict.note, str) and len(verdict.note) <= 1000
    assert isinstance(verdict.change, bool)
