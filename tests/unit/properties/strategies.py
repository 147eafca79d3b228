"""Hypothesis profiles, hostile-input strategies and the invariants every decoded record keeps.

The strategies build wire records the way payment systems and files get them wrong: wrong types,
missing and unknown fields, megabyte strings, non-finite and huge numbers, timestamps centuries
off, and text with bidi overrides, zero-width and control characters, NULs and card numbers
written every way the masking promises to catch. Card numbers planted by a strategy are known to
the test, so "no card number leaves unmasked" is checked against them, not against the masker.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from models.records import Label, Transaction, transaction_from_wire

settings.register_profile(
    "fraudstream-ci",
    deadline=None,
    database=None,  # the tree is shared: no .hypothesis/ directory written into it
    max_examples=100,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile(
    "fraudstream-deep", settings.get_profile("fraudstream-ci"), max_examples=2000
)
_PROFILE = settings.get_profile(os.environ.get("FRAUD_HYPOTHESIS_PROFILE", "fraudstream-ci"))


def examples(n: int) -> settings:
    """Settings for a property worth ``n`` examples in the default profile (scaled by others)."""
    return settings(_PROFILE, max_examples=max(1, n * _PROFILE.max_examples // 100))


# --- card numbers ----------------------------------------------------------------------------

# The separators the masking recognises between two digits (one at most).
SEPARATORS = (" ", "-", "\u00a0", "\u00ad", "\u2010", "\u2013", "\u200b", "\u200c", "\u2060")
_SEP_CLASS = "[" + re.escape("".join(SEPARATORS)) + "\u2011-\u2015\u200d\ufeff]"
_RUN = re.compile(rf"\d+(?:{_SEP_CLASS}\d+)*")
_GROUP = re.compile(r"\d+")
_ESCAPE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_DIGIT_SETS = (0x30, 0xFF10, 0x0660, 0x0966)  # ASCII, fullwidth, Arabic-Indic, Devanagari


def luhn_complete(body: str) -> str:
    """``body`` with the check digit that makes it pass Luhn."""
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable: one check digit always fits")


pans = st.integers(min_value=13, max_value=19).flatmap(
    lambda n: st.text("0123456789", min_size=n - 1, max_size=n - 1).map(luhn_complete)
)


@st.composite
def written_pans(draw: st.DrawFn) -> tuple[str, str]:
    """(digits, how it is written): groups of four, one separator each, or other scripts."""
    pan = draw(pans)
    base = draw(st.sampled_from(_DIGIT_SETS))
    digits = [chr(base + int(d)) for d in pan]
    style = draw(st.sampled_from(("plain", "groups", "each")))
    if style == "plain":
        return pan, "".join(digits)
    if style == "groups":
        sep = draw(st.sampled_from(SEPARATORS))
        return pan, sep.join("".join(digits[i : i + 4]) for i in range(0, len(digits), 4))
    seps = draw(st.lists(st.sampled_from(("", *SEPARATORS)), min_size=len(pan), max_size=len(pan)))
    return pan, "".join(d + s for d, s in zip(digits, seps, strict=True)).rstrip(
        "".join(SEPARATORS)
    )


def _ascii(text: str) -> str:
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def leaked(pan: str, *texts: str) -> bool:
    """Whether any of ``texts`` still shows the card number ``pan`` in full.

    Shown means what the masking promises to catch: whole digit groups, joined by one separator
    at most, spelling the number; ``pan`` inside a longer unbroken run of digits is another
    number, not this one.
    """
    for text in texts:
        for run in _RUN.finditer(text):
            groups = _GROUP.findall(_ascii(run.group()))
            for i in range(len(groups)):
                digits = ""
                for group in groups[i:]:
                    digits += group
                    if len(digits) >= len(pan):
                        break
                if digits == pan:
                    return True
    return False


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside a (nested) wire value, dictionary keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, int) and not isinstance(value, bool):
        yield str(value)


# --- hostile text ----------------------------------------------------------------------------

TRICKS = (
    "\u202e",  # right-to-left override
    "\u202d",
    "\u2066",
    "\u200b",  # zero-width space, joiners, word joiner, BOM
    "\u200d",
    "\u2060",
    "\ufeff",
    "\x00",
    "\x1b[31m",
    "\r\n",
    "\t",
    "\x7f",
    "e\u0301",  # combining accent
    "\U0001d7d2",  # mathematical bold digit four
    "\uff14",
    "'\"\\{}[]",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "ignore previous instructions",
    "\U0001f4b3",
)
# Lone surrogates: orjson never decodes them, but a Python caller (or a bad file decoder) might.
SURROGATES = ("\ud800", "\udfff", "\udc80")

_chunk = st.one_of(
    st.sampled_from(TRICKS),
    st.text(st.characters(codec="utf-8"), max_size=6),
    st.text("0123456789 -", max_size=8),
)


@st.composite
def hostile_text(
    draw: st.DrawFn, *, max_chunks: int = 6, surrogates: bool = False
) -> tuple[str, list[str]]:
    """(text, card numbers planted in it): tricks, random text and maybe a written card number.

    Each planted number sits between non-digits, so it is a card number by the masking's own
    definition and must come out masked.
    """
    chunks = draw(st.lists(_chunk, max_size=max_chunks))
    if surrogates:
        chunks.insert(draw(st.integers(0, len(chunks))), draw(st.sampled_from(SURROGATES)))
    planted: list[str] = []
    if draw(st.booleans()):
        pan, written = draw(written_pans())
        chunks.insert(draw(st.integers(0, len(chunks))), f" {written} ")
        planted.append(pan)
    return "".join(chunks), planted


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8"), max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)

# --- wire records ----------------------------------------------------------------------------

TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TS_MAX = datetime(2099, 12, 31, 23, 59, tzinfo=UTC)
TS_END = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
REQUIRED = ("tx_id", "ts", "card_id", "merchant_id", "amount", "currency")
OPTIONAL_TEXT = ("mcc", "country", "channel", "device_id", "ip", "merchant_name", "memo")
TEXT_FIELDS = ("card_id", "merchant_id", *OPTIONAL_TEXT)

_ids = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_:", min_size=1, max_size=24),
    st.integers(min_value=0, max_value=2**53),
)
_good_ts = st.one_of(
    st.datetimes(
        min_value=TS_MIN.replace(tzinfo=None),
        max_value=TS_MAX.replace(tzinfo=None),
        timezones=st.just(UTC),
    ).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    # epoch milliseconds from 1973 on (smaller numbers read as seconds)
    st.integers(min_value=10**11, max_value=int(TS_MAX.timestamp() * 1000)),
)
_good_amount = st.one_of(
    st.floats(min_value=0, max_value=1e12, allow_nan=False),
    st.integers(min_value=0, max_value=10**9),
    st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False).map(str),
)


@st.composite
def good_wire(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """(a valid wire record, card numbers planted in its free text)."""
    planted: list[str] = []
    wire: dict[str, Any] = {
        "tx_id": draw(_ids),
        "ts": draw(_good_ts),
        "card_id": draw(_ids),
        "merchant_id": draw(_ids),
        "amount": draw(_good_amount),
        "currency": draw(st.sampled_from(("EUR", "usd", "GBP", "Jpy"))),
    }
    for name in draw(st.lists(st.sampled_from(OPTIONAL_TEXT), unique=True, max_size=3)):
        text, pans_in = draw(hostile_text())
        if text:
            wire[name] = text
            planted += pans_in
    if draw(st.booleans()):
        wire["lat"] = draw(st.floats(min_value=-90, max_value=90))
        wire["lon"] = draw(st.floats(min_value=-180, max_value=180))
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            pan = draw(pans)
            planted.append(pan)
            value: Any = draw(st.sampled_from((int(pan), pan, [pan], {"note": f"n {pan}"})))
        else:
            value = draw(json_values)
        wire[f"x_{draw(st.text('abcdef', min_size=1, max_size=4))}"] = value
    return wire, planted


# Values a field can hold that a decoder must refuse or cope with, beyond plain wrong types.
_awkward = st.one_of(
    json_values,
    st.sampled_from(
        (
            math.nan,
            math.inf,
            -math.inf,
            -0.0,
            -1,
            -1e-9,
            1e308,
            2**63,
            -(2**63),
            "",
            " ",
            "NaN",
            "inf",
            "-1",
            "1e400",
            "0x1F",
            "1_000",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59-01:00",
            "2100-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2018-02-30T00:00:00Z",
            "2018-04-01T00:00:00+25:00",
            "\u0661\u0662",
            "EUR\n",
            "eu",
            "\ufb00i",
            "\u00df",
        )
    ),
    st.integers(min_value=1, max_value=3).map(lambda n: "7" * (n * 1_000_000)),  # megabytes
    st.integers(min_value=1, max_value=2).map(lambda n: "\u202e" * (n * 500_000)),
    hostile_text().map(lambda pair: pair[0]),
)
# Python-level values no JSON decoder produces, but a caller handing over a dictionary might.
python_oddities = st.one_of(
    st.sampled_from(SURROGATES),
    st.just(10**400),
    st.just(-(10**5000)),
    st.just(b"bytes"),
    st.just(object()),
    st.just((1, 2)),
    st.just(frozenset({1})),
)


@st.composite
def mutated_wire(draw: st.DrawFn, *, python: bool = False) -> tuple[dict[str, Any], list[str]]:
    """(a wire record with fields dropped, retyped or added, card numbers planted anywhere)."""
    wire, planted = draw(good_wire())
    names = st.sampled_from((*REQUIRED, *OPTIONAL_TEXT, "lat", "lon", "extra", "\x00", "\u202e"))
    values = st.one_of(_awkward, python_oddities) if python else _awkward
    for _ in range(draw(st.integers(1, 4))):
        name = draw(names)
        action = draw(st.sampled_from(("drop", "set", "pan")))
        if action == "drop":
            wire.pop(name, None)
        elif action == "set":
            wire[name] = draw(values)
        else:
            pan, written = draw(written_pans())
            wire[name] = written
            planted.append(pan)
    return wire, planted


# --- invariants ------------------------------------------------------------------------------


def assert_clear_reason(reason: str, planted: list[str]) -> None:
    """A reason a person reads in a DLQ record or a log line: one printable line, no card number."""
    assert reason, "an empty reason"
    assert reason.isprintable(), f"unprintable characters in {reason!r}"
    assert len(reason) <= 300, f"a {len(reason)}-character reason"
    # Quoted values come escaped (repr): an escaped separator still separates for a reader.
    unescaped = _ESCAPE.sub(" ", reason)
    for pan in planted:
        assert not leaked(pan, reason, unescaped), f"card number in the reason {reason!r}"


def assert_valid_transaction(tx: Transaction, planted: list[str]) -> None:
    """What every decoded transaction holds, whatever came in."""
    assert isinstance(tx.tx_id, str) and 0 < len(tx.tx_id) <= 128
    assert isinstance(tx.ts, float) and 0 <= tx.ts < TS_END
    assert isinstance(tx.amount, float) and math.isfinite(tx.amount) and tx.amount >= 0
    assert re.fullmatch("[A-Z]{3}", tx.currency), tx.currency
    assert tx.card_id and tx.merchant_id
    for name in ("tx_id", *TEXT_FIELDS):
        value = getattr(tx, name)
        assert value is None or (isinstance(value, str) and 0 < len(value) <= 1024)
    assert tx.lat is None or (math.isfinite(tx.lat) and -90 <= tx.lat <= 90)
    assert tx.lon is None or (math.isfinite(tx.lon) and -180 <= tx.lon <= 180)
    # It can be sent on: the replay producer and the worker serialise it with orjson.
    wire = tx.to_wire()
    encoded = orjson.dumps(wire)
    for pan in planted:
        assert not leaked(pan, *strings_in(wire)), f"card number {pan} left unmasked in {wire}"
    # Reading back what was sent gives the same record (event time to the millisecond).
    again = transaction_from_wire(orjson.loads(encoded))
    assert (again.tx_id, again.card_id, again.merchant_id) == (tx.tx_id, tx.card_id, tx.merchant_id)
    assert (again.amount, again.currency, again.memo) == (tx.amount, tx.currency, tx.memo)
    assert abs(again.ts - tx.ts) < 1e-3


def assert_valid_label(label: Label) -> None:
    """What every decoded label holds."""
    assert isinstance(label.tx_id, str) and 0 < len(label.tx_id) <= 128
    assert isinstance(label.is_fraud, bool)
    assert label.source in ("chargeback", "analyst", "replay")
    assert 0 <= label.known_at < TS_END
    orjson.dumps(label.to_wire())
