"""The static backtest report: its files and figures, self-contained and small."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from replay.charts import downsample
from replay.report import write_report

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"}
SVG_EMPTY = {"line", "path", "polyline", "circle", "rect"}  # may close themselves: <rect/>


class TagChecker(HTMLParser):
    """Fails on a closing tag that does not match the open one, and collects table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: set[str] = set()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in VOID | SVG_EMPTY:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(html)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    return checker


def metric_row(checker: TagChecker, name: str) -> list[str]:
    return next(row for row in checker.rows if row and row[0] == name)


def detection(**overrides: Any) -> dict[str, Any]:
    report = {
        "n": 1_234_567,
        "frauds": 9_876,
        "roc_auc": 0.871234,
        "average_precision": 0.612345,
        "card_precision_at_k": 0.29,
        "k": 100,
        "alert_rate": 0.0255,
        "fraud_amount_caught": 0.4321,
    }
    return {**report, **overrides}


def make_summary(**overrides: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "input": "data/handbook.csv.gz",
        "rows": 1_234_567,
        "bad_rows": 3,
        "overall": detection(),
        "test": detection(n=54_321, roc_auc=0.80125, average_precision=None),
        "test_window": "2018-07-25..2018-07-31",
        "model": {"kind": "logreg", "learning_rate": 0.01, "features": ["amount", "is_night"]},
        "policy_version": "2024-06-01.1",
        "timings": {"read": 12.3, "features": 40.0, "score": 9.5, "total": 80.0},
        "throughput": 15_432.1,
    }
    return {**summary, **overrides}


def make_daily(days: int = 10) -> list[dict[str, Any]]:
    return [
        {
            "day": f"2018-07-{22 + i:02d}",
            "n": 9_000 + i,
            "frauds": 70 + i,
            "alerts": 200,
            "roc_auc": 0.85,
            "average_precision": None if i == 3 else 0.5 + i / 100,
            "card_precision_at_k": 0.25,
        }
        for i in range(days)
    ]


def random_labels(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.01).astype(np.int8)
    scores = np.clip(rng.normal(0.3 + 0.3 * y, 0.15), 0.0, 1.0)
    return y, scores


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, str]:
    y, scores = random_labels(5_000)
    mask = np.zeros(len(y), dtype=bool)
    mask[-2_000:] = True
    index = write_report(
        tmp_path / "report",
        summary=make_summary(),
        y_true=y,
        scores=scores,
        test_mask=mask,
        daily=make_daily(),
    )
    return index, index.read_text(encoding="utf-8")


def test_writes_the_page_the_summary_and_the_daily_csv(written: tuple[Path, str]) -> None:
    index, _ = written
    assert index.name == "index.html"
    assert json.loads((index.parent / "summary.json").read_text()) == make_summary()
    with (index.parent / "daily.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert rows[0]["day"] == "2018-07-22"
    assert rows[3]["average_precision"] == ""  # None stays empty, not "None"
    assert float(rows[4]["average_precision"]) == 0.54


def test_page_is_well_formed_with_inline_svg(written: tuple[Path, str]) -> None:
    _, html = written
    checker = parse(html)
    assert {"svg", "polyline", "table"} <= checker.tags
    assert html.count("<svg") == 3  # ROC, precision-recall, daily


def test_page_has_no_external_reference_and_no_script(written: tuple[Path, str]) -> None:
    _, html = written
    assert "http://" not in html
    assert "https://" not in html
    assert "<script" not in html
    assert " src=" not in html


@pytest.mark.parametrize(
    ("metric", "overall", "test"),
    [
        ("Transactions", "1,234,567", "54,321"),
        ("Frauds", "9,876", "9,876"),
        ("ROC AUC", "0.8712", "0.8013"),
        ("Average precision", "0.6123", "—"),
        ("Card precision@100", "0.2900", "0.2900"),
        ("Alert rate", "2.55%", "2.55%"),
        ("Fraud amount caught", "43.21%", "43.21%"),
    ],
)
def test_metrics_table_shows_summary_figures(
    written: tuple[Path, str], metric: str, overall: str, test: str
) -> None:
    assert metric_row(parse(written[1]), metric) == [metric, overall, test]


def test_page_shows_totals_baselines_and_timings(written: tuple[Path, str]) -> None:
    _, html = written
    checker = parse(html)
    for text in ("data/handbook.csv.gz", "2018-07-25..2018-07-31", "15,432 tx/s", "2024-06-01.1"):
        assert text in html
    assert metric_row(checker, "Logistic regression") == [
        "Logistic regression", "0.871", "0.606", "0.291",
    ]  # fmt: skip
    assert metric_row(checker, "XGBoost, model selection")[1:] == ["0.869", "0.687", "0.303"]
    assert metric_row(checker, "read") == ["read", "12.30 s", "15.4%"]  # 12.3 of 80 s
    assert metric_row(checker, "total") == ["total", "80.00 s", ""]
    assert metric_row(checker, "features") == ["features", '["amount", "is_night"]']


def test_missing_metrics_render_as_a_dash(tmp_path: Path) -> None:
    y, scores = random_labels(500)
    summary = make_summary(
        overall=detection(roc_auc=None, fraud_amount_caught=None),
        test=None,
        throughput=None,
    )
    index = write_report(
        tmp_path, summary=summary, y_true=y, scores=scores, test_mask=None, daily=[]
    )
    checker = parse(index.read_text())
    assert metric_row(checker, "ROC AUC") == ["ROC AUC", "—", "—"]
    assert metric_row(checker, "Fraud amount caught") == ["Fraud amount caught", "—", "—"]
    assert metric_row(checker, "Alert rate") == ["Alert rate", "2.55%", "—"]
    assert "throughput <b>—</b>" in index.read_text()


def test_without_test_window_there_is_no_test_column(tmp_path: Path) -> None:
    y, scores = random_labels(500)
    summary = make_summary(test=None, test_window=None)
    index = write_report(
        tmp_path, summary=summary, y_true=y, scores=scores, test_mask=None, daily=make_daily()
    )
    checker = parse(index.read_text())
    assert metric_row(checker, "ROC AUC") == ["ROC AUC", "0.8712"]
    assert "all labelled transactions: 500 transactions" in index.read_text()


def test_text_from_the_summary_is_escaped(tmp_path: Path) -> None:
    y, scores = random_labels(200)
    summary = make_summary(input="<script>alert('x')</script>&.csv", model={"<b>": "<i>"})
    daily = make_daily(2)
    daily[0]["day"] = "<img>"
    index = write_report(
        tmp_path, summary=summary, y_true=y, scores=scores, test_mask=None, daily=daily
    )
    html = index.read_text()
    parse(html)
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;.csv" in html
    assert "<img" not in html and "<i>" not in html
    assert "<th>&lt;b&gt;</th><td>&lt;i&gt;</td>" in html
    assert "&lt;img&gt;" in html


def test_curves_use_labelled_rows_of_the_test_window(tmp_path: Path) -> None:
    y = np.array([-1, 0, 1, 0, 1, -1, 0, 1], dtype=np.int8)
    scores = np.linspace(0.1, 0.8, 8)
    mask = np.array([True, True, True, True, True, True, False, False])
    index = write_report(
        tmp_path, summary=make_summary(), y_true=y, scores=scores, test_mask=mask, daily=[]
    )
    # rows 1-4 are labelled and in the window: 4 transactions, 2 frauds
    assert "test window 2018-07-25..2018-07-31: 4 transactions, 2 frauds" in index.read_text()


def test_single_class_window_says_the_curves_are_not_available(tmp_path: Path) -> None:
    y = np.zeros(50, dtype=np.int8)
    index = write_report(
        tmp_path,
        summary=make_summary(),
        y_true=y,
        scores=np.linspace(0, 1, 50),
        test_mask=np.ones(50, dtype=bool),
        daily=make_daily(3),
    )
    html = index.read_text()
    parse(html)
    assert html.count("not available:") == 2
    assert html.count("<svg") == 1  # the daily chart only


@pytest.mark.parametrize("with_test_window", [False, True])
def test_report_of_a_million_rows_stays_small(tmp_path: Path, with_test_window: bool) -> None:
    y, scores = random_labels(1_000_000, seed=1)
    mask = np.arange(len(y)) >= 800_000 if with_test_window else None
    index = write_report(
        tmp_path, summary=make_summary(), y_true=y, scores=scores, test_mask=mask,
        daily=make_daily(28) * 5,
    )  # fmt: skip
    sizes = {path.name: path.stat().st_size for path in tmp_path.iterdir()}
    assert set(sizes) == {"index.html", "summary.json", "daily.csv"}
    assert sum(sizes.values()) < 300_000
    polylines = index.read_text().split("<polyline")[1:]
    assert max(p.count(",") for p in polylines) <= 1_001


def test_downsample_keeps_ends_and_the_shape_of_a_steep_start() -> None:
    # A ROC-like curve: a steep rise over the first 1 % of a million points, then flat.
    n = 1_000_000
    x = np.linspace(0.0, 1.0, n)
    y = np.minimum(1.0, x * 100)
    xs, ys = downsample(x, y, max_points=1_000)
    assert len(xs) <= 1_001
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (0.0, 0.0, 1.0, 1.0)
    # Half of the curve's length is the rise, so about half of the points land on it; index
    # sampling would leave it about ten.
    assert np.sum(ys < 1.0) > 300


def test_downsample_leaves_short_curves_alone() -> None:
    xs, ys = downsample([0.0, 0.5, 1.0], [0.0, 0.7, 1.0])
    assert xs.tolist() == [0.0, 0.5, 1.0]
    assert ys.tolist() == [0.0, 0.7, 1.0]
