"""Readers that turn a transactions file (CSV, Parquet, JSONL) into validated transactions.

Each row becomes a wire dictionary (file columns renamed by a :class:`ColumnMapping`) and goes
through :func:`models.records.transaction_from_wire`, the one conversion point from wire to core.
Reading yields a :class:`Row` per good row and a :class:`BadRow` per malformed one and goes on;
only whole-file problems (missing file, unknown format, a mapping that does not fit the header, no
rows at all) raise :class:`ReaderError`, and they do so when :func:`read_transactions` is called,
before the first row. Blank lines are not rows and are skipped.

Columns that are neither mapped nor the label keep their own names, so they survive in
``Transaction.extra``. The label column never reaches the transaction: labels are for learning and
evaluation only, never a model input.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import FraudstreamError, InvalidRecord
from models.records import Transaction, transaction_from_wire

__all__ = [
    "GROUND_TRUTH",
    "PRESETS",
    "BadRow",
    "ColumnMapping",
    "ColumnsMissing",
    "ReaderError",
    "Row",
    "detect_format",
    "open_file",
    "read_transactions",
]

WIRE_FIELDS = tuple(f.name for f in fields(Transaction) if f.name != "extra")
#: Columns that tell the answer. A file's label column is read as the label; these never enter a
#: transaction (its unknown fields are sent on, to the worker and to the LLM's prompt).
GROUND_TRUTH = frozenset({"TX_FRAUD", "TX_FRAUD_SCENARIO", "is_fraud", "label", "fraud"})
REQUIRED_FIELDS = ("tx_id", "ts", "card_id", "merchant_id", "amount", "currency")

_FORMATS = (
    ("csv", (".csv", ".csv.gz", ".tsv", ".tsv.gz")),
    ("parquet", (".parquet", ".pq")),
    ("jsonl", (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")),
)
_PARQUET_BATCH = 65_536
_LIST_AT_MOST = 30
_IO_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)

# Exact spellings first: one dict lookup per row. Anything else goes through _parse_label.
# False and True also match 0, 0.0, 1 and 1.0 (they hash and compare equal).
_LABEL_VALUES: dict[Any, bool | None] = {
    **dict.fromkeys(("0", "false", "legit", False), False),
    **dict.fromkeys(("1", "true", "fraud", True), True),
    **dict.fromkeys(("", None)),
}


class ReaderError(FraudstreamError):
    """The file as a whole cannot be read: missing, unknown format, wrong columns, no rows."""


class ColumnsMissing(ReaderError):
    """The file lacks a column the mapping needs: another layout (preset) may fit it."""


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Where each wire field lives in a file, which column holds the label, and fallbacks."""

    columns: Mapping[str, str]
    label: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # A file without the label column then reads with is_fraud None instead of failing; for a
    # preset whose files may or may not carry labels. A label named by --columns must be there.
    label_optional: bool = False

    def __post_init__(self) -> None:
        for name in (*self.columns, *self.defaults):
            if name not in WIRE_FIELDS:
                raise ReaderError(
                    f"unknown field {name!r} in the column mapping "
                    f"(fields: {', '.join(WIRE_FIELDS)}, label)"
                )
        if self.label is not None and self.label in self.columns.values():
            # A label mapped to a wire field would become a model input.
            raise ReaderError(f"column {self.label!r} is the label and cannot also be a field")

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """Parse ``--columns`` text: comma-separated ``field=column`` pairs, ``label`` included."""
        columns: dict[str, str] = {}
        label: str | None = None
        for item in spec.split(","):
            if not item.strip():
                continue
            name, sep, column = (part.strip() for part in item.partition("="))
            if not sep or not name or not column:
                raise ReaderError(f"--columns: {item.strip()!r} is not field=column")
            if name in columns or (name == "label" and label is not None):
                raise ReaderError(f"--columns: field {name!r} is given twice")
            if name == "label":
                label = column
            else:
                columns[name] = column
        if not columns and label is None:
            raise ReaderError("--columns is empty: expected field=column pairs, e.g. tx_id=ID")
        return cls(columns=columns, label=label)


PRESETS: dict[str, ColumnMapping] = {
    "handbook": ColumnMapping(
        columns={
            "tx_id": "TRANSACTION_ID",
            "ts": "TX_DATETIME",
            "card_id": "CUSTOMER_ID",
            "merchant_id": "TERMINAL_ID",
            "amount": "TX_AMOUNT",
        },
        label="TX_FRAUD",
        defaults={"currency": "EUR"},
    ),
    "fraudstream": ColumnMapping(
        columns={name: name for name in REQUIRED_FIELDS}, label="label", label_optional=True
    ),
}


@dataclass(frozen=True, slots=True)
class Row:
    """A valid transaction, where it was in the file, and its label if the file has one."""

    line: int
    tx: Transaction
    is_fraud: bool | None


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be read, and why (one line)."""

    line: int
    reason: str


def detect_format(path: Path) -> str:
    """The reader for ``path`` by its name: ``"csv"``, ``"parquet"`` or ``"jsonl"``."""
    name = Path(path).name.lower()
    for fmt, suffixes in _FORMATS:
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(suffix for _, suffixes in _FORMATS for suffix in suffixes)
    raise ReaderError(f"{path}: unknown file format (expected one of {known})")


def read_transactions(path: Path, mapping: ColumnMapping) -> Iterator[Row | BadRow]:
    """Rows of ``path`` in file order; raises :class:`ReaderError` now for whole-file problems."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"no such file: {path}")
    rows = _READERS[detect_format(path)](path, mapping)
    # Run the generator up to its first row so a bad header or an empty file fails here, before
    # the caller has started producing or scoring anything.
    try:
        first = next(rows)
    except StopIteration:
        raise ReaderError(f"{path}: the file has no rows") from None
    return itertools.chain((first,), rows)


def _read_csv(path: Path, mapping: ColumnMapping) -> Iterator[Row | BadRow]:
    delimiter = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    with open_file(path, text=True) as file:
        reader = csv.reader(file, delimiter=delimiter)
        try:
            header = next(reader, None)
        except (csv.Error, *_IO_ERRORS) as exc:
            raise ReaderError(f"{path}: unreadable header: {_one_line(exc)}") from None
        if header is None:
            raise ReaderError(f"{path}: the file is empty")
        build, label_index, width = _table_plan(header, mapping, path)
        record = _record
        end = reader.line_num
        while True:
            try:
                for row in reader:
                    # A quoted field may span lines: a row starts right after the last one.
                    line = end + 1
                    end = reader.line_num
                    if len(row) != width:
                        if row:
                            yield _wrong_width(line, end, width, len(row))
                        continue
                    label = None if label_index is None else row[label_index]
                    yield record(line, build(row), label)
                break
            except csv.Error as exc:
                # csv.reader resumes on the next line after an error, so reading goes on.
                line, end = end + 1, reader.line_num
                yield BadRow(line, f"unreadable CSV: {_one_line(exc)}")
            except _IO_ERRORS as exc:
                raise _cut_short(path, end, exc) from None


def _read_jsonl(path: Path, mapping: ColumnMapping) -> Iterator[Row | BadRow]:
    build: Callable[[dict[str, Any]], tuple[dict[str, Any], Any]] | None = None
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    record = _record
    line = 0
    with open_file(path, text=False) as file:
        try:
            for line, text in enumerate(file, 1):
                if line == 1 and text.startswith(b"\xef\xbb\xbf"):
                    text = text[3:]  # a UTF-8 byte order mark, as some editors write
                try:
                    obj = loads(text)
                except decode_error as exc:
                    if text.strip(b" \t\r\n"):
                        yield BadRow(line, f"invalid JSON: {_one_line(exc)}")
                    continue
                if type(obj) is not dict:
                    yield BadRow(line, f"not a JSON object but {_json_kind(obj)}")
                    continue
                if build is None:
                    # JSONL has no header: the first object's keys stand in for it.
                    build = _object_plan(list(obj), mapping, path)
                wire, label = build(obj)
                yield record(line, wire, label)
        except _IO_ERRORS as exc:
            raise _cut_short(path, line, exc) from None


def _read_parquet(path: Path, mapping: ColumnMapping) -> Iterator[Row | BadRow]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ReaderError(f"{path}: not a readable Parquet file: {_one_line(exc)}") from None
    record = _record
    line = 0
    with parquet:
        build, label_index, _ = _table_plan(parquet.schema_arrow.names, mapping, path)
        try:
            # Batches keep memory flat; whole-column conversion is far cheaper than a dict per
            # row built by Arrow.
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH):
                columns = [_python_values(column) for column in batch.columns]
                for row in zip(*columns, strict=True):
                    line += 1
                    label = None if label_index is None else row[label_index]
                    yield record(line, build(row), label)
        except _IO_ERRORS as exc:
            raise _cut_short(path, line, exc) from None


_READERS: dict[str, Callable[[Path, ColumnMapping], Iterator[Row | BadRow]]] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
}


def _record(line: int, wire: dict[str, Any], label: Any) -> Row | BadRow:
    try:
        tx = transaction_from_wire(wire)
    except InvalidRecord as exc:
        return BadRow(line, _one_line(exc))
    try:
        is_fraud = _LABEL_VALUES[label]
    except (KeyError, TypeError):
        try:
            is_fraud = _parse_label(label)
        except ValueError as exc:
            return BadRow(line, str(exc))
    return Row(line, tx, is_fraud)


def _parse_label(value: Any) -> bool | None:
    number = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _LABEL_VALUES:
            return _LABEL_VALUES[text]
        with contextlib.suppress(ValueError):
            number = float(text)  # "1.0" from a float column written by pandas
    if isinstance(number, float):
        if math.isnan(number):
            return None  # pandas' missing value
        if number in (0.0, 1.0):
            return number == 1.0
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    raise ValueError(f"label: {shown} is not 0/1, true/false or fraud/legit")


def _table_plan(
    header: Sequence[str], mapping: ColumnMapping, path: Path
) -> tuple[Callable[[Sequence[Any]], dict[str, Any]], int | None, int]:
    """Check ``mapping`` against a header; return a row-to-wire builder, label index, width."""
    index: dict[str, int] = {}
    for position, name in enumerate(header):
        if name in index:
            raise ReaderError(f"{path}: column {name!r} appears twice in the header")
        index[name] = position
    _check_columns(index, mapping, path)
    label_index = index.get(mapping.label) if mapping.label is not None else None
    hidden = {*mapping.columns.values(), *mapping.columns, mapping.label, *GROUND_TRUTH}
    # Unmapped columns keep their names (they end in Transaction.extra); a mapped field wins
    # over an unmapped column that happens to carry the same name.
    sources: dict[str, Any] = {name: i for name, i in index.items() if name not in hidden}
    sources.update((name, index[column]) for name, column in mapping.columns.items())
    defaults = {name: value for name, value in mapping.defaults.items() if name not in sources}
    return _compile_builder(sources, defaults), label_index, len(header)


def _object_plan(
    keys: Sequence[str], mapping: ColumnMapping, path: Path
) -> Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]:
    """Check ``mapping`` against the first object's keys; return an object-to-wire builder."""
    _check_columns({key: 0 for key in keys}, mapping, path, where="the first record")
    renames = tuple(mapping.columns.items())
    identity = all(name == column for name, column in renames)
    hidden = frozenset({*mapping.columns.values(), *mapping.columns, *GROUND_TRUTH})
    label_key = mapping.label
    defaults = tuple(mapping.defaults.items())

    def build(obj: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        label = None if label_key is None else obj.pop(label_key, None)
        if identity:
            wire = obj
            for name in GROUND_TRUTH.intersection(obj):
                del wire[name]
        else:
            wire = {key: value for key, value in obj.items() if key not in hidden}
            for name, column in renames:
                if column in obj:
                    wire[name] = obj[column]
        for name, value in defaults:
            if name not in wire:
                wire[name] = value
        return wire, label

    return build


def _check_columns(
    index: Mapping[str, int], mapping: ColumnMapping, path: Path, where: str = "the file"
) -> None:
    has = f"(it has: {_listing(list(index))})"
    for name, column in mapping.columns.items():
        if column not in index:
            raise ColumnsMissing(f"{path}: column {column!r} for {name} is not in {where} {has}")
    if mapping.label is not None and mapping.label not in index and not mapping.label_optional:
        raise ColumnsMissing(f"{path}: label column {mapping.label!r} is not in {where} {has}")
    missing = [
        name
        for name in REQUIRED_FIELDS
        if name not in mapping.columns and name not in mapping.defaults and name not in index
    ]
    if missing:
        raise ColumnsMissing(
            f"{path}: no column for required field {', '.join(missing)} in {where}; "
            f"map it with --columns {has}"
        )


def _compile_builder(
    sources: Mapping[str, Any], defaults: Mapping[str, Any]
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A function building the wire dict from a row, generated once per file.

    A dict display with constant keys is about three times faster than ``dict(zip(...))`` and
    this runs for every row of a backtest. Keys enter the source only through ``repr`` and
    default values only through the namespace, so no file content is ever executed.
    """
    namespace: dict[str, Any] = {}
    items = [f"{name!r}: r[{position}]" for name, position in sources.items()]
    for n, (name, value) in enumerate(defaults.items()):
        namespace[f"d{n}"] = value
        items.append(f"{name!r}: d{n}")
    exec(f"def build(r):\n    return {{{', '.join(items)}}}\n", namespace)
    builder: Callable[[Sequence[Any]], dict[str, Any]] = namespace["build"]
    return builder


def _python_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """Column values as Python objects the wire format accepts (text, numbers, None)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        # RFC 3339 text is unambiguous, where epoch numbers before 1973 would read as seconds.
        target = pa.timestamp("us", tz="UTC" if kind.tz else None)
        column = column.cast(target, safe=False).cast(pa.string())
    elif pa.types.is_date(kind):
        column = column.cast(pa.string())
    elif pa.types.is_decimal(kind):
        column = column.cast(pa.float64())
    elif pa.types.is_duration(kind):
        column = column.cast(pa.int64())  # a count of the column's unit
    values: list[Any] = column.to_pylist()
    if (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        # Bytes are no JSON value; as text (bad bytes replaced) they can be read and sent on.
        return [None if v is None else v.decode("utf-8", "replace") for v in values]
    return values


def _cut_short(path: Path, line: int, exc: BaseException) -> ReaderError:
    """A read failure mid-file (truncated gzip, disk error) ends the whole file."""
    return ReaderError(f"{path}: cannot read past line {line}: {_one_line(exc)}")


def open_file(path: Path, *, text: bool) -> IO[Any]:
    """``path`` opened to read, gunzipped when its name ends in ``.gz``; ReaderError if it
    cannot be. As text: UTF-8 (a byte order mark dropped, bad bytes replaced), newlines kept."""
    compressed = path.name.lower().endswith(".gz")
    # utf-8-sig drops a byte order mark; undecodable bytes must not stop a replay.
    options: dict[str, Any] = (
        {"mode": "rt", "encoding": "utf-8-sig", "errors": "replace", "newline": ""}
        if text
        else {"mode": "rb"}
    )
    opener: Callable[..., IO[Any]] = gzip.open if compressed else open
    try:
        file = opener(path, **options)  # the caller closes it with a with-statement
    except OSError as exc:
        raise ReaderError(f"cannot open {path}: {_one_line(exc)}") from None
    return file


def _wrong_width(line: int, end: int, width: int, got: int) -> BadRow:
    reason = f"expected {width} fields, got {got}"
    if end > line:
        reason += f" (the row runs to line {end}: an unbalanced quote?)"
    return BadRow(line, reason)


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(name: str) -> str:
    return name if name.isprintable() and name == name.strip() and name else repr(name)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(_show(name)[:60] for name in names[:_LIST_AT_MOST])
    more = len(names) - _LIST_AT_MOST
    return shown + (f", ... and {more} more" if more > 0 else "")


def _one_line(message: object) -> str:
    return " ".join(str(message).splitlines())
