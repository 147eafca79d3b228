"""File readers on files with bad rows mixed into good ones, in every format they read.

Each written row has a known fate: a good row comes through as a ``Row`` at its line, a bad row
as a ``BadRow`` at its line with a one-line reason that names the field (card numbers masked),
and nothing else comes out; a file that cannot be read at all fails with one ``ReaderError``
line. The backtest's ``collect`` keeps that contract: every good row scored, every bad row
counted, or with ``--strict`` a stop at the first bad one.
"""

from __future__ import annotations

import gzip
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replay.backtest import BacktestAborted, collect
from replay.commands import open_rows
from replay.readers import PRESETS, BadRow, ReaderError, Row, read_transactions
from tests.unit.properties.strategies import (
    assert_clear_reason,
    assert_valid_transaction,
    examples,
    hostile_text,
    leaked,
    written_pans,
)

COLUMNS = ("tx_id", "ts", "card_id", "merchant_id", "amount", "currency", "note", "label")
FORMATS = ("csv", "csv.gz", "tsv", "jsonl", "jsonl.gz", "parquet")
# Characters that end a line for the CSV and JSONL readers: a note must not split its row.
_LINE_BREAKS = str.maketrans(dict.fromkeys("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


@dataclass(frozen=True)
class Written:
    """One row as written, and what reading it must give."""

    values: dict[str, str]
    bad: str | None  # the word the reason must contain; None for a good row
    planted: tuple[str, ...] = ()


def _good(i: int, note: str, label: str) -> dict[str, str]:
    return {
        "tx_id": f"t{i}",
        "ts": f"2018-04-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
        "card_id": f"c{i % 7}",
        "merchant_id": f"m{i % 5}",
        "amount": f"{(i * 37) % 500}.25",
        "currency": "EUR",
        "note": note,
        "label": label,
    }


# (field to spoil, value or None for a card number, word the reason must contain)
_SPOILS = (
    ("amount", "abc", "amount"),
    ("amount", "-5", "amount"),
    ("amount", "nan", "amount"),
    ("amount", "1e400", "amount"),
    ("ts", "yesterday", "ts"),
    ("ts", "2100-01-02T00:00:00Z", "ts"),
    ("ts", "1969-07-20T20:17:00Z", "ts"),
    ("card_id", "", "card_id"),
    ("merchant_id", "", "merchant_id"),
    ("tx_id", "", "tx_id"),
    ("currency", "EURO", "currency"),
    ("currency", "EU\u20ac", "currency"),
    ("label", "maybe", "label"),
    ("ts", None, "ts"),  # a card number where the time should be: shown masked
    ("amount", None, "amount"),
)


@st.composite
def rows(draw: st.DrawFn) -> list[Written]:
    """Rows numbered 0..n: good ones with hostile notes, bad ones with one field spoiled."""
    out: list[Written] = []
    n = draw(st.integers(min_value=1, max_value=25))
    for i in range(n):
        text, planted = draw(hostile_text(max_chunks=4))
        note = text.translate(_LINE_BREAKS)[:200]
        label = draw(st.sampled_from(("0", "1", "")))
        values = _good(i, note, label)
        if i == 0 or draw(st.integers(0, 2)) > 0:  # the first row is good: JSONL's header
            out.append(Written(values, None, tuple(p for p in planted if leaked(p, note))))
            continue
        name, value, word = draw(st.sampled_from(_SPOILS))
        pans: tuple[str, ...] = ()
        if value is None:
            pan, written = draw(written_pans())
            value, pans = f"{written}x", (pan,)
        out.append(Written({**values, name: value}, word, pans))
    return out


def _write(path: Path, fmt: str, written: list[Written]) -> None:
    records = [w.values for w in written]
    if fmt in ("csv", "csv.gz", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        lines = [sep.join(COLUMNS)]
        for record in records:
            cells = (record[c] for c in COLUMNS)
            lines.append(sep.join('"' + v.replace('"', '""') + '"' for v in cells))
        data = ("\n".join(lines) + "\n").encode("utf-8")
    elif fmt in ("jsonl", "jsonl.gz"):
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
    else:
        table = pa.table({c: pa.array([r[c] for r in records], pa.string()) for c in COLUMNS})
        pq.write_table(table, path)
        return
    path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)


def _first_line(fmt: str) -> int:
    """The line number of the first row: after the header in CSV, the first line elsewhere."""
    return 2 if fmt in ("csv", "csv.gz", "tsv") else 1


@examples(40)
@given(written=rows(), fmt=st.sampled_from(FORMATS))
def test_every_row_comes_out_once_at_its_line(
    tmp_path_factory: pytest.TempPathFactory, written: list[Written], fmt: str
) -> None:
    path = tmp_path_factory.mktemp("rows") / f"mixed.{fmt}"
    _write(path, fmt, written)
    out = list(read_transactions(path, PRESETS["fraudstream"]))
    first = _first_line(fmt)
    assert [item.line for item in out] == list(range(first, first + len(written)))
    for item, row in zip(out, written, strict=True):
        if row.bad is None:
            assert isinstance(item, Row), f"line {item.line}: {item}"
            assert item.tx.tx_id == row.values["tx_id"]
            assert item.is_fraud == {"0": False, "1": True, "": None}[row.values["label"]]
            assert_valid_transaction(item.tx, list(row.planted))
        else:
            assert isinstance(item, BadRow), f"line {item.line} read although bad: {row}"
            assert row.bad in item.reason, item.reason
            assert_clear_reason(item.reason, list(row.planted))
    good = sum(row.bad is None for row in written)
    kept, bad = collect(iter(out), strict=False)
    assert (len(kept), len(bad)) == (good, len(written) - good)
    if bad:
        with pytest.raises(BacktestAborted):
            collect(iter(out), strict=True)


@examples(40)
@given(
    written=rows(),
    fmt=st.sampled_from(("csv", "jsonl")),
    damage=st.sampled_from(("width", "json", "array", "blank")),
    at=st.integers(min_value=1, max_value=30),
)
def test_broken_lines_are_reported_and_reading_goes_on(
    tmp_path_factory: pytest.TempPathFactory,
    written: list[Written],
    fmt: str,
    damage: str,
    at: int,
) -> None:
    """A line no row can come from: a CSV row of the wrong width, JSON that is not an object."""
    path = tmp_path_factory.mktemp("broken") / f"broken.{fmt}"
    _write(path, fmt, written)
    lines = path.read_bytes().split(b"\n")
    at = min(at, len(lines) - 1)  # after the header (CSV) or the first record (JSONL)
    junk = {
        "width": b'"a","b"',
        "json": b'{"tx_id": "t", ',
        "array": b"[1, 2]",
        "blank": b"   ",
    }[damage]
    lines.insert(at, junk)
    path.write_bytes(b"\n".join(lines))
    out = list(read_transactions(path, PRESETS["fraudstream"]))
    first = _first_line(fmt)
    broken = at + 1
    reasons = {item.line: item.reason for item in out if isinstance(item, BadRow)}
    goods = {item.line for item in out if isinstance(item, Row)}
    expected = _BROKEN_REASON[fmt, damage]
    if expected is None:  # a blank JSONL line is no record at all
        assert broken not in reasons and broken not in goods
    else:
        assert expected in reasons.pop(broken)
    # Every other row keeps its fate, one line further down when after the broken one.
    expected_good: set[int] = set()
    expected_bad: set[int] = set()
    for n, row in enumerate(written):
        line = first + n + (1 if first + n >= broken else 0)
        (expected_good if row.bad is None else expected_bad).add(line)
    assert goods == expected_good
    assert set(reasons) == expected_bad


# What a broken line reads as: in CSV any of them is a row of the wrong width (a line of spaces
# is one field, not a blank line); JSONL skips a blank line.
_BROKEN_REASON = {
    **{("csv", damage): "expected 8 fields" for damage in ("width", "json", "array", "blank")},
    ("jsonl", "width"): "invalid JSON",
    ("jsonl", "json"): "invalid JSON",
    ("jsonl", "array"): "not a JSON object but an array",
    ("jsonl", "blank"): None,
}

_garbage = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(str.encode),
    st.lists(
        st.sampled_from((b"tx_id,ts", b'"', b"\x00", b"\n", b",", b"{", b"PAR1")), max_size=40
    ).map(b"".join),
)


@examples(60)
@given(content=_garbage, suffix=st.sampled_from((".csv", ".csv.gz", ".jsonl", ".parquet")))
def test_any_file_reads_or_fails_with_one_clear_line(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, suffix: str
) -> None:
    """Garbage under a known name: rows, bad rows, or one ``ReaderError`` line, no traceback."""
    path = tmp_path_factory.mktemp("garbage") / f"file{suffix}"
    path.write_bytes(content)
    try:
        out = list(itertools.islice(open_rows(path, None, None), 1000))
    except ReaderError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    for item in out:
        assert isinstance(item, Row | BadRow)
        if isinstance(item, BadRow):
            assert item.line >= 1
            assert_clear_reason(item.reason, [])


def test_a_jsonl_file_is_read_without_naming_its_layout(tmp_path: Path) -> None:
    """The wire layout is found for JSONL as for CSV (it once stopped at the first preset)."""
    path = tmp_path / "wire.jsonl"
    _write(path, "jsonl", [Written(_good(i, "", "0"), None) for i in range(3)])
    out = list(open_rows(path, None, None))
    assert [type(item) for item in out] == [Row, Row, Row]


def test_a_jsonl_file_whose_first_record_lacks_a_column_fails_in_one_line(tmp_path: Path) -> None:
    """JSONL has no header: the first record stands in for one, so it must fit the layout."""
    path = tmp_path / "short.jsonl"
    first = {k: v for k, v in _good(0, "", "0").items() if k != "amount"}
    path.write_bytes(orjson.dumps(first) + b"\n" + orjson.dumps(_good(1, "", "0")) + b"\n")
    with pytest.raises(ReaderError) as caught:
        list(open_rows(path, None, None))
    assert "--preset or --columns" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ReaderError) as caught:
        list(open_rows(path, "fraudstream", None))
    assert "'amount'" in str(caught.value) and "\n" not in str(caught.value)


def test_binary_and_duration_columns_are_kept_as_json(tmp_path: Path) -> None:
    """Unknown Parquet columns ride along to Kafka, so they must come out as JSON values."""
    records = [_good(i, "", "0") for i in range(2)]
    table = pa.table(
        {
            **{c: pa.array([r[c] for r in records], pa.string()) for c in COLUMNS},
            "blob": pa.array([b"\xffraw", None], pa.binary()),
            "wait": pa.array([1500, 20], pa.duration("ms")),
        }
    )
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    out: list[Any] = list(read_transactions(path, PRESETS["fraudstream"]))
    assert [type(item) for item in out] == [Row, Row]
    assert out[0].tx.extra["blob"] == "\ufffdraw" and out[1].tx.extra["blob"] is None
    assert [item.tx.extra["wait"] for item in out] == [1500, 20]
    for item in out:
        assert_valid_transaction(item.tx, [])
