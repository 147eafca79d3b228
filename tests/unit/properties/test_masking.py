"""Card-number masking: what ``mask_pan`` promises, and the places that promise to use it.

A card number here is 13-19 digits passing Luhn, written plain, in groups or digit by digit with
one separator at most between two digits (spaces, dashes, their Unicode look-alikes, invisible
characters), in any script's digits. Whatever stands around it, it comes out as at most its BIN
and last four; everything that is not a digit or a separator comes out unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from models.pan import mask_pan
from processor.prompts import build_messages, clean_text
from tests.unit.properties.strategies import (
    SEPARATORS,
    examples,
    hostile_text,
    leaked,
    written_pans,
)

_SEP = "[" + re.escape("".join(SEPARATORS)) + "\u2011-\u2015\u200d\ufeff]"
_RUN = re.compile(rf"\d+(?:{_SEP}\d+)*")
_NOT_KEPT = re.compile(rf"[\d*]|{_SEP}")
# Text that cannot touch a card number: no digits, no separators.
_plain = st.text(
    st.characters(
        codec="utf-8", exclude_categories=["Nd"], exclude_characters="".join(SEPARATORS)
    ).filter(lambda ch: not re.fullmatch(_SEP, ch)),
    max_size=12,
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_numbers_left(text: str) -> list[str]:
    """Every Luhn-valid 13-19 digit span of whole digit groups still readable in ``text``."""
    found = []
    for run in _RUN.finditer(text):
        groups = [
            "".join(str(unicodedata.decimal(c)) for c in g) for g in re.findall(r"\d+", run.group())
        ]
        for i in range(len(groups)):
            digits = ""
            for group in groups[i:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _luhn(digits):
                    found.append(digits)
    return found


@examples(300)
@given(pan=written_pans(), before=_plain, after=_plain)
def test_a_card_number_between_words_keeps_its_bin_and_last_four(
    pan: tuple[str, str], before: str, after: str
) -> None:
    digits, written = pan
    masked = mask_pan(before + written + after)
    assert masked == before + digits[:6] + "*" * (len(digits) - 10) + digits[-4:] + after


@examples(100)
@given(pan=written_pans(), digits_after=st.text("0123456789", min_size=1, max_size=6))
@example(pan=("4111111111111111", "4111 1111 1111 1111"), digits_after="2")
def test_numbers_next_to_a_card_number_do_not_hide_it(
    pan: tuple[str, str], digits_after: str
) -> None:
    """ "4111 1111 1111 1111 2 items" once passed unmasked: the 17 digits failed Luhn."""
    digits, written = pan
    masked = mask_pan(f"paid {written} {digits_after} items")
    assert not leaked(digits, masked)
    assert masked.startswith("paid " + digits[:6] + "*")


@examples(300)
@given(text=hostile_text(max_chunks=12).map(lambda pair: pair[0]), data=st.data())
def test_no_card_number_survives_and_nothing_else_changes(text: str, data: st.DataObject) -> None:
    pans = data.draw(st.lists(written_pans(), max_size=3), label="card numbers")
    for _, written in pans:
        at = data.draw(st.integers(0, len(text)), label="at")
        text = text[:at] + written + text[at:]
    masked = mask_pan(text)
    assert _card_numbers_left(masked) == []
    assert mask_pan(masked) == masked
    assert _NOT_KEPT.sub("", masked) == _NOT_KEPT.sub("", text)


@examples(200)
@given(text=st.text(st.characters(codec="utf-8"), max_size=40))
def test_text_without_a_card_number_is_left_alone(text: str) -> None:
    if not _card_numbers_left(text):
        assert mask_pan(text) == text


@examples(150)
@given(
    pan=written_pans(),
    name=st.sampled_from(("merchant_name", "memo", "device_id", "channel")),
    before=hostile_text(max_chunks=3).map(lambda pair: pair[0]),
    nested=st.booleans(),
)
def test_prompts_never_carry_a_card_number(
    pan: tuple[str, str], name: str, before: str, nested: bool
) -> None:
    """What goes to the LLM is cleaned again, even from a record the decoder never saw."""
    digits, written = pan
    text = f"{before} {written} pay"
    record: dict[str, Any] = {"action": "review", "score": 0.9, "amount": 12.5, "currency": "EUR"}
    if nested:
        record["transaction"] = {name: text}
    else:
        record[name] = text
    messages = build_messages(record)
    content = "\n".join(message["content"] for message in messages)
    assert not leaked(digits, content)
    cleaned = clean_text(text, 200)
    assert not leaked(digits, cleaned)
    assert cleaned.isprintable() and "<" not in cleaned and ">" not in cleaned
