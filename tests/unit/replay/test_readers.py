"""File readers: formats, column mappings, bad rows with their line numbers, whole-file errors."""

from __future__ import annotations

import gzip
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.records import Transaction, transaction_from_wire
from replay import readers
from replay.readers import (
    PRESETS,
    BadRow,
    ColumnMapping,
    ReaderError,
    Row,
    detect_format,
    read_transactions,
)

HANDBOOK = Path(__file__).resolve().parents[4] / "shared/data/handbook-2018-04-01_2018-07-31.csv.gz"
WIRE = PRESETS["fraudstream"]
COLUMNS = ("tx_id", "ts", "card_id", "merchant_id", "amount", "currency", "note", "label")

# Three transactions in the wire format, with an extra column and a label; each writer below
# stores them the way its format naturally would (text in CSV, native types elsewhere).
RECORDS: list[dict[str, Any]] = [
    {
        "tx_id": "t1",
        "ts": datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC),
        "card_id": "c1",
        "merchant_id": "m1",
        "amount": 57.16,
        "currency": "EUR",
        "note": "first",
        "label": False,
    },
    {
        "tx_id": "t2",
        "ts": datetime(2018, 4, 1, 0, 2, 10, 500000, tzinfo=UTC),
        "card_id": "c2",
        "merchant_id": "m2",
        "amount": 81.5,
        "currency": "USD",
        "note": "second, with a comma",
        "label": True,
    },
    {
        "tx_id": "t3",
        "ts": datetime(2018, 4, 2, 12, 0, 0, tzinfo=UTC),
        "card_id": "c1",
        "merchant_id": "m3",
        "amount": 0.0,
        "currency": "EUR",
        "note": "",
        "label": None,
    },
]


def _expected() -> list[tuple[Transaction, bool | None]]:
    out = []
    for record in RECORDS:
        wire = {k: v for k, v in record.items() if k != "label"}
        wire["ts"] = record["ts"].isoformat()
        out.append((transaction_from_wire(wire), record["label"]))
    return out


def _csv_text(records: list[dict[str, Any]], sep: str = ",") -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if key == "ts":
            return str(value.isoformat()).replace("+00:00", "Z")
        if key == "label":
            return "1" if value else "0"
        text = str(value)
        return f'"{text}"' if sep in text else text

    lines = [sep.join(COLUMNS)]
    lines += [sep.join(cell(k, r[k]) for k in COLUMNS) for r in records]
    return "\n".join(lines) + "\n"


def _jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)  # orjson writes RFC 3339 times


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    fmt = path.name.split(".", 1)[1]
    if fmt == "csv":
        path.write_text(_csv_text(records))
    elif fmt == "tsv":
        path.write_text(_csv_text(records, sep="\t"))
    elif fmt == "csv.gz":
        path.write_bytes(gzip.compress(_csv_text(records).encode()))
    elif fmt == "jsonl":
        path.write_bytes(_jsonl_bytes(records))
    elif fmt == "ndjson.gz":
        path.write_bytes(gzip.compress(_jsonl_bytes(records)))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        raise AssertionError(fmt)
    return path


def _read(path: Path, mapping: ColumnMapping = WIRE) -> list[Row | BadRow]:
    return list(read_transactions(path, mapping))


@pytest.mark.parametrize(
    ("name", "first_line"),
    [
        ("tx.csv", 2),
        ("tx.tsv", 2),
        ("tx.csv.gz", 2),
        ("tx.jsonl", 1),
        ("tx.ndjson.gz", 1),
        ("tx.parquet", 1),
    ],
)
def test_every_format_gives_the_same_transactions(
    tmp_path: Path, name: str, first_line: int
) -> None:
    rows = _read(_write(tmp_path / name, RECORDS))
    assert all(isinstance(r, Row) for r in rows), rows
    assert [(r.tx, r.is_fraud) for r in rows if isinstance(r, Row)] == _expected()
    assert [r.line for r in rows] == [first_line, first_line + 1, first_line + 2]


def test_the_handbook_preset_on_the_shared_file(tmp_path: Path) -> None:
    # The shared data sits beside every checkout, CI's included: its absence is a failure.
    assert HANDBOOK.exists(), f"the shared handbook data is missing: {HANDBOOK}"
    with gzip.open(HANDBOOK, "rt", newline="") as f:
        lines = list(itertools.islice(f, 200))
    small = tmp_path / "handbook.csv.gz"
    small.write_bytes(gzip.compress("".join(lines).encode()))
    header = lines[0].rstrip("\n").split(",")
    cells = [dict(zip(header, line.rstrip("\n").split(","), strict=True)) for line in lines[1:]]

    rows = _read(small, PRESETS["handbook"])

    assert all(isinstance(r, Row) for r in rows)
    assert [r.line for r in rows] == list(range(2, 201))
    for row, cell in zip(rows, cells, strict=True):
        assert isinstance(row, Row)
        tx = row.tx
        assert (tx.tx_id, tx.card_id, tx.merchant_id) == (
            cell["TRANSACTION_ID"],
            cell["CUSTOMER_ID"],
            cell["TERMINAL_ID"],
        )
        assert tx.amount == float(cell["TX_AMOUNT"])
        assert tx.currency == "EUR"  # the preset's default: the file has no currency
        moment = datetime.fromisoformat(cell["TX_DATETIME"]).replace(tzinfo=UTC)
        assert tx.ts == moment.timestamp()
        assert row.is_fraud is (cell["TX_FRAUD"] == "1")
        # Neither the label nor the fraud scenario reaches the transaction; the other columns
        # are kept as they are.
        assert tx.extra == {
            "TX_TIME_SECONDS": cell["TX_TIME_SECONDS"],
            "TX_TIME_DAYS": cell["TX_TIME_DAYS"],
        }


def test_the_label_column_is_never_in_extra(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("ID,TIME,CARD,TERM,AMT,CUR,FRAUD,SHOP\n1,2018-04-01 00:00:00,c,m,5,EUR,1,x\n")
    mapping = ColumnMapping.parse(
        "tx_id=ID,ts=TIME,card_id=CARD,merchant_id=TERM,amount=AMT,currency=CUR,label=FRAUD"
    )
    [row] = _read(path, mapping)
    assert isinstance(row, Row)
    assert row.is_fraud is True
    assert row.tx.extra == {"SHOP": "x"}  # neither FRAUD nor the mapped (renamed) columns


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_columns_that_tell_the_answer_never_reach_a_transaction(
    tmp_path: Path, suffix: str
) -> None:
    """Ground truth a file carries besides its label (the handbook's fraud scenario, a column
    named like a label) is dropped, under a preset or a mapping alike: unknown fields are sent
    on, as far as the LLM's prompt."""
    fields = {"tx_id": "1", "ts": "2018-04-01T00:00:00Z", "card_id": "c", "merchant_id": "m"}
    fields |= {"amount": "5", "currency": "EUR", "TX_FRAUD_SCENARIO": "2", "fraud": "1"}
    fields |= {"shop": "x", "label": "1"}
    path = tmp_path / f"tx{suffix}"
    if suffix == ".csv":
        path.write_text(",".join(fields) + "\n" + ",".join(fields.values()) + "\n")
    else:
        path.write_bytes(orjson.dumps(fields) + b"\n")
    for mapping in (PRESETS["fraudstream"], ColumnMapping.parse("tx_id=tx_id,label=label")):
        [row] = _read(path, mapping)
        assert isinstance(row, Row)
        assert row.is_fraud is True
        assert row.tx.extra == {"shop": "x"}


def _with_amount(records: list[dict[str, Any]], index: int, amount: Any) -> list[dict[str, Any]]:
    changed = [dict(r) for r in records]
    changed[index]["amount"] = amount
    return changed


@pytest.mark.parametrize(
    ("name", "bad_index", "bad_line"),
    [
        ("tx.csv", 3, 5),  # the header is line 1: the 4th record is on line 5
        ("tx.jsonl", 4, 5),
        ("tx.parquet", 4, 5),  # Parquet: the row number
    ],
)
def test_a_bad_row_reports_its_line_and_reading_goes_on(
    tmp_path: Path, name: str, bad_index: int, bad_line: int
) -> None:
    records = [RECORDS[i % 3] | {"tx_id": f"t{i}", "amount": str(i)} for i in range(6)]
    rows = _read(_write(tmp_path / name, _with_amount(records, bad_index, "abc")))
    assert len(rows) == 6
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert bad == [BadRow(line=bad_line, reason="amount: 'abc' is not a number")]


def test_csv_line_numbers_count_blank_lines_and_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    rows = [
        "tx_id,ts,card_id,merchant_id,amount,currency,memo",
        "a,2018-04-01T00:00:00Z,c,m,1,EUR,plain",
        "",
        'b,2018-04-01T00:00:01Z,c,m,2,EUR,"two',
        'lines"',
        "c,2018-04-01T00:00:02Z,c,m,x,EUR,bad amount",
    ]
    path.write_text("\n".join(rows) + "\n")
    out = _read(path)
    assert [(type(r).__name__, r.line) for r in out] == [("Row", 2), ("Row", 4), ("BadRow", 6)]
    assert isinstance(out[1], Row) and out[1].tx.memo == "two\nlines"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("t9,2018-04-01T00:00:00Z,c,m,1,EUR", "expected 8 fields, got 6"),
        ("t9,2018-04-01T00:00:00Z,c,m,1,EUR,x,1,extra", "expected 8 fields, got 9"),
        ("t9,yesterday,c,m,1,EUR,x,1", "ts: 'yesterday' is neither"),
        ("t9,2018-04-01T00:00:00Z,c,m,1,EURO,x,1", "currency"),
        ("t9,2018-04-01T00:00:00Z,c,m,-1,EUR,x,1", "amount: negative"),
        ("t9,2018-04-01T00:00:00Z,c,m,1,EUR,x,maybe", "label: 'maybe' is not 0/1"),
        ("t9,2018-04-01T00:00:00Z,c,m,1,EUR,x,2", "label: '2' is not 0/1"),
    ],
)
def test_malformed_csv_rows(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "tx.csv"
    good = _csv_text(RECORDS[:1]).splitlines()
    path.write_text("\n".join([*good, line, good[1]]) + "\n")
    out = _read(path)
    assert [type(r) for r in out] == [Row, BadRow, Row]
    assert isinstance(out[1], BadRow) and out[1].line == 3
    assert reason in out[1].reason and "\n" not in out[1].reason


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b"42", "not a JSON object but a number"),
        (b'"text"', "not a JSON object but a string"),
        (b"null", "not a JSON object but null"),
        (b'{"tx_id": "t9"}', "ts: missing"),
        (b'{"tx_id": "t9", "ts": [], "card_id": "c"}', "expected text or a number"),
        (b'{"label": "perhaps"}', "label: 'perhaps'"),
        (b'{"label": [1]}', "label: [1]"),
    ],
)
def test_malformed_jsonl_lines(tmp_path: Path, line: bytes, reason: str) -> None:
    good = orjson.loads(_jsonl_bytes(RECORDS[:1]))
    if line.startswith(b'{"label"'):
        line = orjson.dumps(good | orjson.loads(line))
    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(good), line, b"  ", orjson.dumps(good)]) + b"\n")
    out = _read(path)
    assert [(type(r), r.line) for r in out] == [(Row, 1), (BadRow, 2), (Row, 4)]
    assert isinstance(out[1], BadRow) and reason in out[1].reason and "\n" not in out[1].reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        (" FALSE ", False),
        ("fraud", True),
        ("Legit", False),
        ("1.0", True),
        ("0.0", False),
        ("", None),
    ],
)
def test_label_spellings(tmp_path: Path, value: str, expected: bool | None) -> None:
    path = tmp_path / "tx.csv"
    path.write_text(
        f"tx_id,ts,card_id,merchant_id,amount,currency,label\nt,2018-04-01,c,m,1,EUR,{value}\n"
    )
    [row] = _read(path)
    assert isinstance(row, Row) and row.is_fraud is expected


@pytest.mark.parametrize(
    "mapping", [ColumnMapping(columns={}), WIRE], ids=["no label", "optional label"]
)
def test_without_a_label_column_is_fraud_is_none(tmp_path: Path, mapping: ColumnMapping) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("tx_id,ts,card_id,merchant_id,amount,currency\nt,2018-04-01,c,m,1,EUR\n")
    [row] = _read(path, mapping)
    assert isinstance(row, Row) and row.is_fraud is None


def test_defaults_fill_only_missing_columns_and_mapped_names_win(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("ID,ts,card_id,merchant_id,amount,tx_id\nreal,2018-04-01,c,m,1,shadow\n")
    mapping = ColumnMapping(columns={"tx_id": "ID"}, defaults={"currency": "EUR"})
    [row] = _read(path, mapping)
    assert isinstance(row, Row)
    assert (row.tx.tx_id, row.tx.currency, dict(row.tx.extra)) == ("real", "EUR", {})
    path.write_text("ID,ts,card_id,merchant_id,amount,currency\nreal,2018-04-01,c,m,1,usd\n")
    [row] = _read(path, mapping)
    assert isinstance(row, Row) and row.tx.currency == "USD"


def test_parquet_is_read_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_PARQUET_BATCH", 2)
    records = [RECORDS[i % 3] | {"tx_id": f"t{i}"} for i in range(7)]
    rows = _read(_write(tmp_path / "tx.parquet", records))
    assert [r.line for r in rows] == list(range(1, 8))
    assert [r.tx.tx_id for r in rows if isinstance(r, Row)] == [f"t{i}" for i in range(7)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "tx_id=ID,ts=TIME,card_id=CARD,merchant_id=TERM,amount=AMT,label=FRAUD,currency=CUR",
            ColumnMapping(
                columns={
                    "tx_id": "ID",
                    "ts": "TIME",
                    "card_id": "CARD",
                    "merchant_id": "TERM",
                    "amount": "AMT",
                    "currency": "CUR",
                },
                label="FRAUD",
            ),
        ),
        (
            " tx_id = My ID , amount=AMT,",
            ColumnMapping(columns={"tx_id": "My ID", "amount": "AMT"}),
        ),
        ("label=is_fraud", ColumnMapping(columns={}, label="is_fraud")),
        ("memo=a=b", ColumnMapping(columns={"memo": "a=b"})),
    ],
)
def test_columns_spec_parses(spec: str, expected: ColumnMapping) -> None:
    assert ColumnMapping.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "--columns is empty"),
        (" , ", "--columns is empty"),
        ("tx_id", "'tx_id' is not field=column"),
        ("tx_id=", "'tx_id=' is not field=column"),
        ("=ID", "'=ID' is not field=column"),
        ("tx_id=A,tx_id=B", "field 'tx_id' is given twice"),
        ("label=A,label=B", "field 'label' is given twice"),
        ("amout=AMT", "unknown field 'amout'"),
        ("extra=X", "unknown field 'extra'"),
        ("tx_id=F,label=F", "'F' is the label and cannot also be a field"),
    ],
)
def test_bad_columns_specs(spec: str, message: str) -> None:
    with pytest.raises(ReaderError) as caught:
        ColumnMapping.parse(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.CSV.GZ", "csv"),
        ("a.tsv", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(Path(name)) == fmt


def _empty_parquet(path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(RECORDS).slice(0, 0), path)


@pytest.mark.parametrize(
    ("name", "content", "mapping", "message"),
    [
        ("missing.csv", None, WIRE, "no such file: "),
        ("tx.txt", "a,b\n", WIRE, "tx.txt: unknown file format"),
        ("tx.csv", "", WIRE, "tx.csv: the file is empty"),
        ("tx.csv", _csv_text([]), WIRE, "tx.csv: the file has no rows"),
        ("tx.csv", _csv_text([]) + "\n\n", WIRE, "tx.csv: the file has no rows"),
        ("tx.jsonl", "\n \n", WIRE, "tx.jsonl: the file has no rows"),
        ("tx.parquet", _empty_parquet, WIRE, "tx.parquet: the file has no rows"),
        ("tx.parquet", "not parquet", WIRE, "tx.parquet: not a readable Parquet file"),
        (
            "tx.csv",
            _csv_text(RECORDS),
            ColumnMapping.parse("tx_id=TX_AMT"),
            "tx.csv: column 'TX_AMT' for tx_id is not in the file (it has: tx_id, ts, card_id,",
        ),
        (
            "tx.csv",
            _csv_text(RECORDS),
            ColumnMapping(columns={}, label="FRAUD"),
            "tx.csv: label column 'FRAUD' is not in the file (it has: tx_id,",
        ),
        (
            "tx.csv",
            "ID,ts,card_id,merchant_id,amount\nt,0,c,m,1\n",
            ColumnMapping(columns={}),
            "tx.csv: no column for required field tx_id, currency in the file",
        ),
        (
            "tx.csv",
            "tx_id,tx_id,ts\n1,2,3\n",
            WIRE,
            "tx.csv: column 'tx_id' appears twice in the header",
        ),
        (
            "tx.jsonl",
            '{"tx_id": "t"}\n',
            WIRE,
            "tx.jsonl: column 'ts' for ts is not in the first record (it has: tx_id)",
        ),
        ("tx.csv.gz", "plain text, not gzip", WIRE, "tx.csv.gz: unreadable header"),
    ],
)
def test_whole_file_problems_raise_one_line_before_the_first_row(
    tmp_path: Path, name: str, content: Any, mapping: ColumnMapping, message: str
) -> None:
    path = tmp_path / name
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ReaderError) as caught:
        read_transactions(path, mapping)  # not iterated: the error comes at the call
    text = str(caught.value)
    assert message in text, text
    assert "\n" not in text


def test_a_truncated_gzip_ends_with_a_reader_error(tmp_path: Path) -> None:
    records = [RECORDS[i % 3] | {"tx_id": f"t{i}"} for i in range(5000)]
    data = gzip.compress(_csv_text(records).encode())
    path = tmp_path / "tx.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    rows = read_transactions(path, WIRE)
    with pytest.raises(ReaderError, match=r"tx\.csv\.gz: cannot read past line \d+"):
        for _ in rows:
            pass


# Property: whatever the lines hold, each non-blank line after the header (CSV) or after a first
# good record (JSONL) gives exactly one Row or BadRow, in order, and nothing raises.
_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters='\r\n"\ufeff')
_CELL = st.one_of(
    st.sampled_from(["", "t1", "0", "1", "fraud", "EUR", "eur", "2018-04-01T00:00:00Z", "-1"]),
    st.text(_CHARS, max_size=12),
)
_CSV_LINE = st.one_of(
    st.text(_CHARS, max_size=60),
    st.lists(_CELL, min_size=7, max_size=9).map(",".join),
)
_JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _CELL,
    st.lists(st.integers(0, 9), max_size=3),
)
_JSON_LINE = st.one_of(
    st.text(_CHARS, max_size=60),
    st.dictionaries(st.sampled_from([*COLUMNS, "lat", "memo"]) | _CELL, _JSON_VALUE).map(
        lambda d: orjson.dumps(d).decode()
    ),
    st.lists(_JSON_VALUE, max_size=3).map(lambda v: orjson.dumps(v).decode()),
)
_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(lines=st.lists(_CSV_LINE, max_size=25))
def test_every_csv_line_gives_exactly_one_result(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "random.csv"
    path.write_text("\n".join([",".join(COLUMNS), *lines]) + "\n", encoding="utf-8")
    expected = [n for n, line in enumerate(lines, start=2) if line != ""]
    if not expected:
        with pytest.raises(ReaderError, match="no rows"):
            read_transactions(path, WIRE)
        return
    assert [r.line for r in _read(path)] == expected


@_SETTINGS
@given(lines=st.lists(_JSON_LINE, max_size=25))
def test_every_jsonl_line_gives_exactly_one_result(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "random.jsonl"
    first = _jsonl_bytes(RECORDS[:1]).decode().rstrip("\n")
    path.write_text("\n".join([first, *lines]) + "\n", encoding="utf-8")
    expected = [1] + [n for n, line in enumerate(lines, start=2) if line.strip(" \t")]
    out = _read(path)
    assert [r.line for r in out] == expected
    assert isinstance(out[0], Row)
