"""Card-number masking: every PAN-looking run of digits in text becomes BIN + last four.

A card number is 13-19 decimal digits (of any script) passing Luhn, written plain, in groups or
digit by digit with one separator at most between two digits: spaces, dashes, their Unicode
look-alikes and the invisible characters that would otherwise let a number pass as plain text.
Masking is applied to every text a record carries before it is stored, logged, streamed or sent
to an LLM; it is idempotent, and it changes nothing but digits and their separators.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["PAN_MAX", "PAN_MIN", "mask_pan"]

# Characters a card number may be written with between its digits: space and dash, and the
# look-alikes and invisible ones that would otherwise let a number pass as plain text (no-break
# space, soft hyphen, Unicode dashes, zero-width spaces and joiners, word joiner, BOM).
_PAN_SEPARATOR = "[ \\-\u00a0\u00ad\u2010-\u2015\u200b-\u200d\u2060\ufeff]"
# A run of 13 digits or more (any script's decimal digits), one separator at most between two.
# Which digit groups of a run form a card number is decided by _mask_run: a card number may be
# followed or preceded by other numbers ("4111 1111 1111 1111 2 items").
# (The lookahead checks for 13 digits; the run itself is then matched group by group, which is
# far quicker than digit by digit on long runs.)
_PAN_RUN = re.compile(rf"(?<!\d)(?=(?:\d{_PAN_SEPARATOR}?){{12}}\d)\d+(?:{_PAN_SEPARATOR}\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
PAN_MIN, PAN_MAX = 13, 19


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


def _ascii_digits(text: str) -> str:
    """Decimal digits of any script as ASCII ("\uff14" -> "4"), so Luhn sees their values."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) for ch in text)


def _mask_run(match: re.Match[str]) -> str:
    """Mask every stretch of digit groups that holds a Luhn-valid 13-19 digit number.

    Each window of whole groups is tried, so a card number is found whatever digits stand next
    to it; a stretch keeps its first six and last four digits, the rest become ``*``. Next to
    digits it keeps a ``*`` there instead, so what it shows can never join them into another
    card-number-looking run.
    """
    run = match.group(0)
    groups = [(m.start(), m.end(), _ascii_digits(m.group())) for m in _DIGIT_GROUP.finditer(run)]
    covered = [False] * len(groups)
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j][2]
            if len(digits) > PAN_MAX:
                break
            if len(digits) >= PAN_MIN and _luhn_ok(digits):
                covered[i : j + 1] = [True] * (j + 1 - i)
    if not any(covered):
        return run
    out: list[str] = []
    pos = i = 0
    while i < len(groups):
        if not covered[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(groups) and covered[j + 1]:
            j += 1
        digits = "".join(group[2] for group in groups[i : j + 1])
        head = 6 if i == 0 else 0
        tail = 4 if j == len(groups) - 1 else 0
        stars = "*" * (len(digits) - head - tail)
        out += (run[pos : groups[i][0]], digits[:head], stars, digits[len(digits) - tail :])
        pos, i = groups[j][1], j + 1
    out.append(run[pos:])
    return "".join(out)


def mask_pan(text: str) -> str:
    """Mask every card-number-looking run (13-19 digits passing Luhn) to BIN + last four."""
    if len(text) < PAN_MIN:
        return text
    return _PAN_RUN.sub(_mask_run, text)
