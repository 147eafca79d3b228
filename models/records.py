"""Typed records of the core and the one conversion point from wire dictionaries.

The wire format is JSON; each record arrives as a dictionary and is validated here, once, into a
frozen slotted dataclass. A record that fails raises :class:`InvalidRecord` naming the field, so
the caller can dead-letter it with that reason. Anything that looks like a card number in a text
field is masked to BIN + last four before the record exists at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from models.errors import InvalidRecord

# Epoch bounds a payment timestamp may take: anything else is a unit mistake or garbage.
_MIN_TS = 0.0
_MAX_TS = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
_MS_THRESHOLD = 1e11
_NAIVE_EPOCH = datetime(
    1970, 1, 1
)  # numbers above this are epoch milliseconds, below epoch seconds

_PAN_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_TEXT = 1024

_REQUIRED = ("tx_id", "ts", "card_id", "merchant_id", "amount", "currency")
_OPTIONAL_TEXT = ("mcc", "country", "channel", "device_id", "ip", "merchant_name", "memo")
_KNOWN = frozenset(_REQUIRED + _OPTIONAL_TEXT + ("lat", "lon"))


class Action(StrEnum):
    """What happens to a payment; ordered by severity."""

    APPROVE = "approve"
    REVIEW = "review"
    DECLINE = "decline"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.APPROVE: 0, Action.REVIEW: 1, Action.DECLINE: 2}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_match(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = raw.replace(" ", "").replace("-", "")
    if not _luhn_ok(digits):
        return raw
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def mask_pan(text: str) -> str:
    """Mask every card-number-looking run (13-19 digits passing Luhn) to BIN + last four."""
    if len(text) < 13:
        return text
    return _PAN_CANDIDATE.sub(_mask_match, text)


@dataclass(frozen=True, slots=True)
class Transaction:
    """A payment to score. ``ts`` is event time in epoch seconds (UTC)."""

    tx_id: str
    ts: float
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    mcc: str | None = None
    country: str | None = None
    channel: str | None = None
    device_id: str | None = None
    ip: str | None = None
    lat: float | None = None
    lon: float | None = None
    merchant_name: str | None = None
    memo: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tx_id": self.tx_id,
            "ts": format_ts(self.ts),
            "card_id": self.card_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
        }
        for name in (*_OPTIONAL_TEXT, "lat", "lon"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True, slots=True)
class Label:
    """What became known about a transaction, and when (epoch seconds)."""

    tx_id: str
    is_fraud: bool
    source: str
    known_at: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "tx_id": self.tx_id,
            "label": "fraud" if self.is_fraud else "legit",
            "source": self.source,
            "known_at": format_ts(self.known_at),
        }


@dataclass(frozen=True, slots=True)
class Reason:
    """One reason behind a decision: a stable code, a sentence for people, and its weight."""

    code: str
    text: str
    weight: float

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "weight": round(self.weight, 6)}


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """The features of one transaction as the store computed them at scoring time."""

    tx_id: str
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one transaction, with everything needed to explain and audit it."""

    tx_id: str
    ts: float
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    score: float
    action: Action
    reasons: tuple[Reason, ...]
    features: Mapping[str, float]
    model_version: str
    policy_version: str
    decided_at: float
    latency_ms: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "tx_id": self.tx_id,
            "ts": format_ts(self.ts),
            "card_id": self.card_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
            "score": self.score,
            "action": self.action.value,
            "reasons": [r.to_wire() for r in self.reasons],
            "features": dict(self.features),
            "model_version": self.model_version,
            "policy_version": self.policy_version,
            "decided_at": format_ts(self.decided_at),
            "latency_ms": self.latency_ms,
        }


def format_ts(ts: float) -> str:
    """RFC 3339 in UTC with millisecond precision."""
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_ts(value: Any, name: str = "ts") -> float:
    """Event time as epoch seconds from RFC 3339 text (no zone means UTC) or epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidRecord(f"{name}: expected a timestamp, got a boolean", field=name)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidRecord(f"{name}: not a finite number", field=name)
        seconds = value / 1000.0 if abs(value) >= _MS_THRESHOLD else float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidRecord(f"{name}: empty", field=name)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRecord(
                f"{name}: {value[:40]!r} is neither RFC 3339 nor epoch milliseconds", field=name
            ) from None
        if moment.tzinfo is None:  # no zone means UTC; subtracting a naive epoch is cheapest
            seconds = (moment - _NAIVE_EPOCH).total_seconds()
        else:
            seconds = moment.timestamp()
    else:
        raise InvalidRecord(f"{name}: expected text or a number, got {type(value).__name__}")
    if not _MIN_TS <= seconds < _MAX_TS:
        raise InvalidRecord(f"{name}: {value!r} is outside 1970..2100", field=name)
    return seconds


def _text(raw: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRecord(f"{name}: missing", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord(f"{name}: expected text, got {type(value).__name__}", field=name)
    text = str(value)
    if len(text) > _MAX_TEXT:
        raise InvalidRecord(f"{name}: longer than {_MAX_TEXT} characters", field=name)
    return mask_pan(text)


def _number(raw: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRecord(f"{name}: missing", field=name)
        return None
    if isinstance(value, bool):
        raise InvalidRecord(f"{name}: expected a number, got a boolean", field=name)
    if isinstance(value, str):
        text = value
        try:
            value = float(text)
        except ValueError:
            raise InvalidRecord(f"{name}: {text[:40]!r} is not a number", field=name) from None
    if not isinstance(value, int | float):
        raise InvalidRecord(f"{name}: expected a number, got {type(value).__name__}", field=name)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRecord(f"{name}: not a finite number", field=name)
    return number


def transaction_from_wire(raw: Mapping[str, Any]) -> Transaction:
    """Validate a wire dictionary into a :class:`Transaction` or raise :class:`InvalidRecord`."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(raw).__name__}")
    tx_id = raw.get("tx_id")
    if isinstance(tx_id, bool) or not isinstance(tx_id, str | int) or str(tx_id) == "":
        raise InvalidRecord("tx_id: missing or not text", field="tx_id")
    tx_id = str(tx_id)
    if len(tx_id) > 128:
        raise InvalidRecord("tx_id: longer than 128 characters", field="tx_id")
    if "ts" not in raw:
        raise InvalidRecord("ts: missing", field="ts")
    ts = parse_ts(raw["ts"])
    amount = _number(raw, "amount", required=True)
    assert amount is not None
    if amount < 0:
        raise InvalidRecord("amount: negative", field="amount")
    currency = _text(raw, "currency", required=True)
    assert currency is not None
    currency = currency.upper()
    if not _CURRENCY.match(currency):
        raise InvalidRecord(
            f"currency: {currency[:10]!r} is not an ISO 4217 code", field="currency"
        )
    lat = _number(raw, "lat", required=False) if "lat" in raw else None
    lon = _number(raw, "lon", required=False) if "lon" in raw else None
    if lat is not None and not -90 <= lat <= 90:
        raise InvalidRecord("lat: outside -90..90", field="lat")
    if lon is not None and not -180 <= lon <= 180:
        raise InvalidRecord("lon: outside -180..180", field="lon")
    extra = {
        key: mask_pan(value) if isinstance(value, str) and len(value) >= 13 else value
        for key, value in raw.items()
        if key not in _KNOWN
    }
    card_id = _text(raw, "card_id", required=True)
    merchant_id = _text(raw, "merchant_id", required=True)
    assert card_id is not None and merchant_id is not None
    return Transaction(
        tx_id=tx_id,
        ts=ts,
        card_id=card_id,
        merchant_id=merchant_id,
        amount=amount,
        currency=currency,
        lat=lat,
        lon=lon,
        extra=extra,
        **{
            name: _text(raw, name, required=False)
            for name in _OPTIONAL_TEXT
            if raw.get(name) not in (None, "")
        },
    )


_LABELS = {"fraud": True, "legit": False}
_SOURCES = frozenset({"chargeback", "analyst", "replay"})


def label_from_wire(raw: Mapping[str, Any]) -> Label:
    """Validate a wire dictionary into a :class:`Label` or raise :class:`InvalidRecord`."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(raw).__name__}")
    tx_id = raw.get("tx_id")
    if isinstance(tx_id, bool) or not isinstance(tx_id, str | int) or str(tx_id) == "":
        raise InvalidRecord("tx_id: missing or not text", field="tx_id")
    label = raw.get("label")
    if label not in _LABELS:
        raise InvalidRecord("label: expected 'fraud' or 'legit'", field="label")
    source = raw.get("source")
    if source not in _SOURCES:
        raise InvalidRecord(f"source: expected one of {sorted(_SOURCES)}", field="source")
    if "known_at" not in raw:
        raise InvalidRecord("known_at: missing", field="known_at")
    return Label(
        tx_id=str(tx_id),
        is_fraud=_LABELS[label],
        source=source,
        known_at=parse_ts(raw["known_at"], "known_at"),
    )
