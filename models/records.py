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
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any

from models.errors import InvalidRecord
from models.pan import PAN_MAX, PAN_MIN
from models.pan import mask_pan as mask_pan  # re-exported: the records' masking

# Epoch bounds a payment timestamp may take: anything else is a unit mistake or garbage.
_MIN_TS = 0.0
_MAX_TS = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
_MS_THRESHOLD = 1e11
_NAIVE_EPOCH = datetime(
    1970, 1, 1
)  # numbers above this are epoch milliseconds, below epoch seconds

_CURRENCY = re.compile(r"[A-Z]{3}")
# The largest amount a payment may carry, in its currency's units: above it a number is a unit
# mistake or garbage, and one such amount would stay in its card's means for a month.
MAX_AMOUNT = 1e12
_MAX_TEXT = 1024
_MAX_ID = 128
# Integers an unknown field may hold: what JSON encoders write (signed or unsigned 64 bits).
_INT_LOW, _INT_HIGH = -(2**63), 2**64
# Integers that may be card numbers when written out: 13 to 19 digits.
_PAN_LOW, _PAN_HIGH = 10 ** (PAN_MIN - 1), 10**PAN_MAX

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


def _shown(value: Any, limit: int = 40) -> str:
    """A value as an error message may quote it: short, one line, card numbers masked.

    Text is masked before ``repr`` escapes its invisible separators (an escaped one still reads
    as a separator) and before the cut, on enough of it to hold any card number starting inside,
    so a number cut in two is never shown half unmasked.
    """
    if isinstance(value, str):
        return repr(mask_pan(value[: limit + 40]))[:limit]
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too long to show"
    return mask_pan(text[: limit + 40])[:limit]


def _is_unicode(text: str) -> bool:
    """No lone surrogates: the text can be encoded as UTF-8 and sent on."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _checked_text(text: str, name: str) -> str:
    """``text`` if it is valid Unicode, else :class:`InvalidRecord` naming the field."""
    if not _is_unicode(text):
        raise InvalidRecord(f"{name}: not valid Unicode text", field=name)
    return text


def _as_text(value: str | int, name: str, limit: int) -> str:
    """Text or an integer as text, at most ``limit`` characters, card numbers masked."""
    if type(value) is not str:
        # An integer too long to even print (str() refuses beyond 4300 digits).
        if isinstance(value, int) and value.bit_length() > 4 * limit:
            raise InvalidRecord(f"{name}: longer than {limit} characters", field=name)
        value = str(value)
    if len(value) > limit:
        raise InvalidRecord(f"{name}: longer than {limit} characters", field=name)
    if len(value) < PAN_MIN:  # the common case, on every row of a backtest: nothing to mask
        return value if value.isascii() else _checked_text(value, name)
    return mask_pan(_checked_text(value, name))


def parse_ts(value: Any, name: str = "ts") -> float:
    """Event time as epoch seconds from RFC 3339 text (no zone means UTC) or epoch milliseconds."""
    if isinstance(value, bool):
        raise InvalidRecord(f"{name}: expected a timestamp, got a boolean", field=name)
    if isinstance(value, int | float):
        try:
            if not math.isfinite(value):
                raise InvalidRecord(f"{name}: not a finite number", field=name)
            seconds = value / 1000.0 if abs(value) >= _MS_THRESHOLD else float(value)
        except OverflowError:  # an integer beyond any float
            raise InvalidRecord(
                f"{name}: {_shown(value)} is outside 1970..2100", field=name
            ) from None
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
                f"{name}: {_shown(value)} is neither RFC 3339 nor epoch milliseconds", field=name
            ) from None
        if moment.tzinfo is None:  # no zone means UTC; subtracting a naive epoch is cheapest
            seconds = (moment - _NAIVE_EPOCH).total_seconds()
        else:
            seconds = moment.timestamp()
    else:
        raise InvalidRecord(
            f"{name}: expected text or a number, got {type(value).__name__}", field=name
        )
    if not _MIN_TS <= seconds < _MAX_TS:
        raise InvalidRecord(f"{name}: {_shown(value)} is outside 1970..2100", field=name)
    return seconds


def _text(raw: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRecord(f"{name}: missing", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord(f"{name}: expected text, got {type(value).__name__}", field=name)
    return _as_text(value, name, _MAX_TEXT)


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
            raise InvalidRecord(f"{name}: {_shown(text)} is not a number", field=name) from None
    if not isinstance(value, int | float):
        raise InvalidRecord(f"{name}: expected a number, got {type(value).__name__}", field=name)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRecord(f"{name}: not a finite number", field=name)
    return number


def transaction_from_wire(raw: Mapping[str, Any]) -> Transaction:
    """Validate a wire dictionary into a :class:`Transaction` or raise :class:`InvalidRecord`."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(raw).__name__}")
    tx_id = _tx_id(raw)
    if "ts" not in raw:
        raise InvalidRecord("ts: missing", field="ts")
    ts = parse_ts(raw["ts"])
    amount = _number(raw, "amount", required=True)
    assert amount is not None
    if amount < 0:
        raise InvalidRecord("amount: negative", field="amount")
    if amount > MAX_AMOUNT:
        raise InvalidRecord(f"amount: above {MAX_AMOUNT:g}", field="amount")
    currency = _text(raw, "currency", required=True)
    assert currency is not None
    if not currency.isascii():  # "ﬀi".upper() is "FFI": only ASCII letters are a code
        raise InvalidRecord(
            f"currency: {_shown(currency)} is not an ISO 4217 code", field="currency"
        )
    currency = currency.upper()
    if not _CURRENCY.fullmatch(currency):
        raise InvalidRecord(
            f"currency: {currency[:10]!r} is not an ISO 4217 code", field="currency"
        )
    lat = _number(raw, "lat", required=False) if "lat" in raw else None
    lon = _number(raw, "lon", required=False) if "lon" in raw else None
    if lat is not None and not -90 <= lat <= 90:
        raise InvalidRecord("lat: outside -90..90", field="lat")
    if lon is not None and not -180 <= lon <= 180:
        raise InvalidRecord("lon: outside -180..180", field="lon")
    extra = _extra(raw)
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


def _tx_id(raw: Mapping[str, Any]) -> str:
    """The record's id: non-empty text (or an integer), at most 128 characters, PANs masked."""
    tx_id = raw.get("tx_id")
    if isinstance(tx_id, bool) or not isinstance(tx_id, str | int) or tx_id == "":
        raise InvalidRecord("tx_id: missing or not text", field="tx_id")
    return _as_text(tx_id, "tx_id", _MAX_ID)


def _extra(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The unknown fields, kept to be sent on: card numbers masked, JSON values only."""
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _KNOWN:
            continue
        if type(value) is str and type(key) is str and value.isascii() and key.isascii():
            extra[mask_pan(key)] = mask_pan(value)  # the common case: plain text
            continue
        try:
            if not isinstance(key, str) or not _is_unicode(key):
                raise ValueError("the field name is not text")
            extra[mask_pan(key)] = _masked_value(value)
        except ValueError as exc:
            # The name is outside data too: shown short, escaped and masked.
            name = _shown(key)
            raise InvalidRecord(f"{name}: {exc}", field=name) from None
    return extra


def _masked_value(value: Any) -> Any:
    """An unknown field's value with card numbers masked, however deep or typed as a number.

    It is kept to be sent on, so it must be JSON: anything else fails the record here rather
    than the producer or the worker later (``ValueError`` says why).
    """
    if value is None or isinstance(value, bool | float | date | time):
        return value
    if isinstance(value, str):
        if not _is_unicode(value):
            raise ValueError("not valid Unicode text")
        return mask_pan(value)
    if isinstance(value, int):
        if not _INT_LOW <= value < _INT_HIGH:
            raise ValueError("an integer beyond 64 bits")
        if _PAN_LOW <= abs(value) < _PAN_HIGH:
            text = str(value)
            masked = mask_pan(text)
            return value if masked == text else masked
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _is_unicode(key):
                raise ValueError("a key inside is not text")
            out[mask_pan(key)] = _masked_value(item)
        return out
    if isinstance(value, list | tuple):
        return [_masked_value(item) for item in value]
    raise ValueError(f"a {type(value).__name__} value is not JSON")


_LABELS = {"fraud": True, "legit": False}
_SOURCES = frozenset({"chargeback", "analyst", "replay"})


def label_from_wire(raw: Mapping[str, Any]) -> Label:
    """Validate a wire dictionary into a :class:`Label` or raise :class:`InvalidRecord`."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"expected a JSON object, got {type(raw).__name__}")
    tx_id = _tx_id(raw)
    label = raw.get("label")
    if not isinstance(label, str) or label not in _LABELS:
        raise InvalidRecord("label: expected 'fraud' or 'legit'", field="label")
    source = raw.get("source")
    if not isinstance(source, str) or source not in _SOURCES:
        raise InvalidRecord(f"source: expected one of {sorted(_SOURCES)}", field="source")
    if "known_at" not in raw:
        raise InvalidRecord("known_at: missing", field="known_at")
    return Label(
        tx_id=tx_id,
        is_fraud=_LABELS[label],
        source=source,
        known_at=parse_ts(raw["known_at"], "known_at"),
    )
