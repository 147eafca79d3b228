"""Decisions as the API holds them: records checked off the topic, SSE frames, cursors, filters.

A record's **cursor** is the vector of per-partition *next offsets* at that record — what a
replica had consumed of every partition once the record was in — written
``<partition>-<offset>`` in hex, joined by dots (``0-1a.1-f.2-20``). Offsets are the broker's, not
the replica's, so a cursor minted by one replica resumes exactly on any other: after a cursor ``V``
a client is owed every record of partition ``p`` with offset ``>= V[p]``, and nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.errors import InvalidRecord
from models.records import Action, mask_pan

__all__ = [
    "DecisionEntry",
    "DecisionFilter",
    "case_key",
    "decision_entry",
    "decode_cursor",
    "encode_cursor",
    "json_object",
    "parse_decision",
]

_ACTIONS = frozenset(a.value for a in Action)
_CURSOR = re.compile(r"^[0-9a-f]{1,8}-[0-9a-f]{1,16}(?:\.[0-9a-f]{1,8}-[0-9a-f]{1,16}){0,4095}$")


def encode_cursor(positions: Mapping[int, int]) -> str:
    """``{0: 26, 1: 15}`` -> ``"0-1a.1-f"``."""
    return ".".join(f"{p:x}-{o:x}" for p, o in sorted(positions.items()))


def decode_cursor(text: str) -> dict[int, int]:
    """The positions a cursor stands for; ValueError when it is not one this API writes."""
    text = text.strip()
    if len(text) > 100_000 or not _CURSOR.match(text):
        raise ValueError("not a cursor this API issued")
    positions: dict[int, int] = {}
    for part in text.split("."):
        p, o = part.split("-")
        positions[int(p, 16)] = int(o, 16)
    return positions


def json_object(raw: bytes) -> dict[str, Any]:
    """A record's JSON object; InvalidRecord if it is not JSON or not an object."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRecord("not JSON") from None
    if not isinstance(record, dict):
        raise InvalidRecord("not a JSON object")
    return record


def parse_decision(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The decision record and its one-line JSON, card number masked; InvalidRecord if unusable."""
    record = json_object(raw)
    for name in ("tx_id", "card_id", "merchant_id"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise InvalidRecord(f"{name}: missing or not text", field=name)
    if record.get("action") not in _ACTIONS:
        raise InvalidRecord("action: expected approve, review or decline", field="action")
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidRecord("score: not a finite number", field="score")
    rewrite = b"\n" in raw or b"\r" in raw
    for name in ("tx_id", "card_id", "merchant_id"):
        if not isinstance(record[name], str):
            record[name] = str(record[name])
            rewrite = True
    masked = mask_pan(record["card_id"])
    if masked != record["card_id"]:
        record["card_id"] = masked
        rewrite = True
    if rewrite:
        raw = orjson.dumps(record)
    return record, raw


@dataclass(slots=True, eq=False)
class DecisionEntry:
    """One decision as held in memory: the SSE frame, and what filters and indexes need."""

    partition: int
    offset: int
    cursor: str
    tx_id: str
    card_id: str
    merchant_id: str
    action: str
    score: float
    frame: bytes = field(repr=False)
    _data_start: int = field(repr=False, default=0)
    verdict_seen: bool = False

    @property
    def data(self) -> bytes:
        """The decision's JSON, as on the topic (card number masked)."""
        return self.frame[self._data_start : -2]

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.data)  # type: ignore[no-any-return]


def decision_entry(
    partition: int, offset: int, cursor: str, record: dict[str, Any], data: bytes
) -> DecisionEntry:
    head = b"id: " + cursor.encode() + b"\nevent: decision\ndata: "
    return DecisionEntry(
        partition=partition,
        offset=offset,
        cursor=cursor,
        tx_id=str(record["tx_id"]),
        card_id=str(record["card_id"]),
        merchant_id=str(record["merchant_id"]),
        action=record["action"],
        score=float(record["score"]),
        frame=head + data + b"\n\n",
        _data_start=len(head),
    )


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """What one client wants to see; None means anything."""

    actions: frozenset[str] | None = None
    min_score: float | None = None
    merchant: str | None = None
    card: str | None = None

    def matches(self, entry: DecisionEntry) -> bool:
        return (
            (self.actions is None or entry.action in self.actions)
            and (self.min_score is None or entry.score >= self.min_score)
            and (self.merchant is None or entry.merchant_id == self.merchant)
            and (self.card is None or entry.card_id == self.card)
        )

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.actions, self.min_score, self.merchant, self.card))


def case_key(entry: DecisionEntry) -> tuple[float, str]:
    """The review queue's order: highest score first, then by payment id."""
    return (-entry.score, entry.tx_id)
