"""The worker's dead-letter record for every input the decoder refuses: never a silent drop.

``processor.app.dead_letter`` is the pure function the score and labels agents call with the
refused Kafka message; here it gets real Faust messages and events (no broker needed: it reads
only the message) carrying hostile bytes, and every record it writes must say why, where the
message came from, and hold its bytes with card numbers masked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import faust
import orjson
import pytest
from faust.types.tuples import Message
from hypothesis import example, given
from hypothesis import strategies as st

from models.errors import InvalidRecord
from models.records import Transaction, transaction_from_wire
from processor.app import dead_letter
from tests.unit.properties.strategies import (
    SEPARATORS,
    assert_clear_reason,
    assert_valid_transaction,
    examples,
    leaked,
    mutated_wire,
    written_pans,
)

# Keys a DLQ record may add when a huge record's bytes are cut short.
_OPTIONAL_KEYS = {"received_at", "raw_truncated", "raw_size"}
_KEPT = re.compile(r"[\d*" + re.escape("".join(SEPARATORS)) + r"\u2011-\u2015\u200d\ufeff]")


@pytest.fixture(scope="module")
def app() -> Iterator[faust.App]:
    """A Faust app for building events; it is never started, so nothing connects anywhere."""
    yield faust.App("props-dlq", broker="kafka://127.0.0.1:9", autodiscover=False)


def _event(app: faust.App, value: bytes | None, partition: int, offset: int) -> faust.Event:
    message = Message("transactions", partition, offset, 0.0, 0, {}, b"card", value, None)
    return faust.Event(app, b"card", value, {}, message)


def route(app: faust.App, value: bytes | None, partition: int, offset: int) -> Any:
    """What the score agent does with one message: a transaction, or its DLQ record (parsed)."""
    event = _event(app, value, partition, offset)
    try:
        # A tombstone's value is None: orjson refuses it as not JSON, and so it is dead-lettered.
        return transaction_from_wire(orjson.loads(event.message.value))  # type: ignore[arg-type]
    except orjson.JSONDecodeError as exc:
        return orjson.loads(dead_letter(event, f"not JSON: {exc}"))
    except InvalidRecord as exc:
        return orjson.loads(dead_letter(event, str(exc), exc.field))


def _raw_text(doc: dict[str, Any]) -> str:
    """The DLQ record's bytes as text (bytes that are not UTF-8 as lone surrogates)."""
    if doc["raw_encoding"] == "utf-8":
        raw: str = doc["raw"]
        return raw
    assert doc["raw_encoding"] == "base64"
    return base64.b64decode(doc["raw"], validate=True).decode("utf-8", "surrogateescape")


def _assert_dead_letter(
    doc: dict[str, Any], value: bytes | None, planted: list[str], partition: int, offset: int
) -> None:
    required = {"error", "field", "topic", "partition", "offset", "raw", "raw_encoding"}
    assert required | {"received_at"} <= set(doc) <= required | _OPTIONAL_KEYS
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("transactions", partition, offset)
    assert_clear_reason(doc["error"], planted)
    assert doc["field"] is None or isinstance(doc["field"], str)
    text = _raw_text(doc)
    for pan in planted:
        assert not leaked(pan, text), f"card number {pan} in the DLQ bytes"
    # Masking touches digits and their separators only: everything else is the message as sent.
    source = (value or b"").decode("utf-8", "surrogateescape")
    if doc.get("raw_truncated"):
        # A huge record keeps its head. Masking only shortens, so the head comes from at most
        # twice its length of the record; the cut may split one character's bytes.
        assert doc["raw_size"] == len(value or b"")
        head = _KEPT.sub("", text)[:-4]
        assert _KEPT.sub("", source[: 2 * len(text) + 8]).startswith(head)
    else:
        assert _KEPT.sub("", text) == _KEPT.sub("", source)


_positions = {
    "partition": st.integers(min_value=0, max_value=2**31 - 1),
    "offset": st.integers(min_value=0, max_value=2**63 - 1),
}


@examples(250)
@given(wire=mutated_wire(), data=st.data(), **_positions)
def test_every_refused_record_becomes_one_dead_letter(
    app: faust.App,
    wire: tuple[dict[str, Any], list[str]],
    data: st.DataObject,
    partition: int,
    offset: int,
) -> None:
    raw, planted = wire
    value = orjson.dumps(raw)
    if data.draw(st.booleans(), label="corrupt the bytes"):
        at = data.draw(st.integers(0, len(value)), label="at")
        value = value[:at] + data.draw(st.binary(min_size=1, max_size=4), label="junk") + value[at:]
    result = route(app, value, partition, offset)
    if isinstance(result, Transaction):
        assert_valid_transaction(result, planted)
    else:
        _assert_dead_letter(result, value, planted, partition, offset)


@examples(100)
@given(pan=written_pans(), junk=st.binary(min_size=1, max_size=8), **_positions)
@example(pan=("4111111111111111", "4111 1111 1111 1111"), junk=b"\xff", partition=0, offset=0)
def test_card_numbers_in_bytes_that_are_not_utf8_are_masked(
    app: faust.App, pan: tuple[str, str], junk: bytes, partition: int, offset: int
) -> None:
    """Base64 would hide a card number from a reader, not from anyone who decodes it."""
    digits, written = pan
    value = b"\xff" + junk + b'{"memo": " ' + written.encode() + b' "}'
    doc = route(app, value, partition, offset)
    assert doc["raw_encoding"] == "base64"
    _assert_dead_letter(doc, value, [digits], partition, offset)


@examples(100)
@given(value=st.one_of(st.none(), st.binary(max_size=200)), **_positions)
def test_random_bytes_are_dead_lettered_not_dropped(
    app: faust.App, value: bytes | None, partition: int, offset: int
) -> None:
    result = route(app, value, partition, offset)
    if not isinstance(result, Transaction):
        _assert_dead_letter(result, value, [], partition, offset)
