"""The backtest report: one static ``index.html`` with ``summary.json`` and ``daily.csv`` beside it.

The page needs nothing but a browser: no script, no external asset, the charts inline SVG drawn by
:mod:`replay.charts`. It shows the run's totals, the detection metrics overall and on the test
window next to the handbook's published baselines, the ROC and precision-recall curves, the daily
detection quality and the time spent in each stage.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.metrics import precision_recall_curve, roc_curve
from replay.charts import Line, curve_chart, daily_chart, downsample, legend

__all__ = ["HANDBOOK_BASELINES", "write_report"]

DASH = "—"
MAX_CURVE_POINTS = 1000

# (model, ROC AUC, AP, CP@100) on the handbook's protocol: batch training on 2018-07-25..31,
# a 7-day delay, tests on 2018-08-08..14 with known-compromised cards removed.
HANDBOOK_BASELINES: tuple[tuple[str, float, float, float], ...] = (
    ("Logistic regression", 0.871, 0.606, 0.291),
    ("Random forest", 0.867, 0.658, 0.287),
    ("XGBoost", 0.862, 0.639, 0.273),
    ("XGBoost, model selection", 0.869, 0.687, 0.303),
)

_BASELINE_NOTE = (
    '<p class="note">The handbook trains in batch on 2018-07-25..31 and tests on '
    "2018-08-08..14 after a 7-day label delay, known-compromised cards removed from the "
    "test days. Compare with the test column when the window and protocol match.</p>"
)

_METRICS = (
    ("Transactions", "n", "count"),
    ("Frauds", "frauds", "count"),
    ("ROC AUC", "roc_auc", "score"),
    ("Average precision", "average_precision", "score"),
    ("Card precision@{k}", "card_precision_at_k", "score"),
    ("Alert rate", "alert_rate", "share"),
    ("Fraud amount caught", "fraud_amount_caught", "share"),
)

_DAILY_COLUMNS = (
    "day",
    "n",
    "frauds",
    "alerts",
    "roc_auc",
    "average_precision",
    "card_precision_at_k",
)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;color:#1d2430;margin:24px auto;max-width:960px;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555}.note{color:#666;font-size:12px}.row{display:flex;flex-wrap:wrap;gap:24px}
table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #e3e6ea}
th{text-align:left;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:0}figcaption{font-size:13px;color:#444;margin-bottom:4px}
.chart{font-size:11px;fill:#333}.chart .mid{text-anchor:middle}.chart .end{text-anchor:end}
.chart .label{font-size:12px}.grid{stroke:#eceef1}.axis{stroke:#555;fill:none}.tick{stroke:#555}
.series{fill:none;stroke-width:1.8}.bar{fill:#f1c9c5}.window{fill:#eef4fb}
.s1{stroke:#1f6fb2}.s2{stroke:#d0632b}.s3{stroke:#999;stroke-dasharray:4 3}
.dot.s1{fill:#1f6fb2}.dot.s2{fill:#d0632b}
.legend{font-size:12px;margin:2px 0 6px}.key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:18px;height:0;border-top:2px solid;margin-right:5px;
vertical-align:middle}.swatch.s1{border-color:#1f6fb2}.swatch.s2{border-color:#d0632b}
.swatch.s3{border-color:#999;border-top-style:dashed}.swatch.bar{border-top:8px solid #f1c9c5}
.unavailable{padding:40px 12px;color:#777;border:1px dashed #ccc;width:380px}
"""


def write_report(
    out_dir: Path,
    *,
    summary: Mapping[str, Any],
    y_true: NDArray[Any],
    scores: NDArray[Any],
    test_mask: NDArray[np.bool_] | None,
    daily: Sequence[Mapping[str, Any]],
) -> Path:
    """Write ``index.html``, ``summary.json`` and ``daily.csv`` in ``out_dir``; return the page.

    ``y_true`` holds 1 for fraud, 0 for legitimate and any negative value for a label not known;
    the curves use the labelled transactions of the test window when ``test_mask`` is given, all
    labelled transactions otherwise.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(
        json.dumps(_jsonable(summary), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    _write_daily_csv(out_dir / "daily.csv", daily)
    index = out_dir / "index.html"
    index.write_text(_page(summary, y_true, scores, test_mask, daily), encoding="utf-8")
    return index


def _page(
    summary: Mapping[str, Any],
    y_true: NDArray[Any],
    scores: NDArray[Any],
    test_mask: NDArray[np.bool_] | None,
    daily: Sequence[Mapping[str, Any]],
) -> str:
    title = f"fraudstream backtest — {summary.get('input', '')}"
    body = [
        _header(summary),
        "<h2>Detection quality</h2>",
        f'<div class="row">{_metrics_table(summary)}{_baselines_table()}</div>{_BASELINE_NOTE}',
        _curves(summary, y_true, scores, test_mask),
        _daily_section(daily, summary.get("test_window")),
        _settings(summary),
        _timings(summary),
        '<p class="note">Files beside this page: <a href="summary.json">summary.json</a>, '
        '<a href="daily.csv">daily.csv</a>.</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _header(summary: Mapping[str, Any]) -> str:
    overall = summary.get("overall") or {}
    facts = [
        ("transactions", _count(summary.get("rows"))),
        ("malformed rows skipped", _count(summary.get("bad_rows"))),
        ("labelled frauds", _count(overall.get("frauds"))),
        ("test window", _text(summary.get("test_window"))),
        ("throughput", _rate(summary.get("throughput"))),
    ]
    if summary.get("generated_at"):
        facts.append(("generated", _text(summary["generated_at"])))
    items = " · ".join(f"{escape(name)} <b>{value}</b>" for name, value in facts)
    return (
        f"<header><h1>fraudstream backtest</h1>"
        f'<p class="meta">input <code>{_text(summary.get("input"))}</code></p>'
        f'<p class="meta">{items}</p></header>'
    )


def _metrics_table(summary: Mapping[str, Any]) -> str:
    overall = summary.get("overall") or {}
    test = summary.get("test")
    window = summary.get("test_window")
    k = overall.get("k") or (test or {}).get("k") or 100
    head = "<th>metric</th><th>overall</th>"
    if window is not None:
        head += f"<th>test {escape(str(window))}</th>"
    rows = []
    for label, key, kind in _METRICS:
        cells = (
            f"<td>{escape(label.format(k=k))}</td><td class=n>{_value(overall.get(key), kind)}</td>"
        )
        if window is not None:
            cells += f"<td class=n>{_value((test or {}).get(key), kind)}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return (
        '<table class="metrics"><caption>this backtest (online learning, delayed labels)</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _baselines_table() -> str:
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class=n>{auc:.3f}</td><td class=n>{ap:.3f}</td>"
        f"<td class=n>{cp:.3f}</td></tr>"
        for name, auc, ap, cp in HANDBOOK_BASELINES
    )
    return (
        '<table class="baselines"><caption>handbook baselines, on its own protocol</caption>'
        "<thead><tr><th>model</th><th>ROC AUC</th><th>AP</th><th>CP@100</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _curves(
    summary: Mapping[str, Any],
    y_true: NDArray[Any],
    scores: NDArray[Any],
    test_mask: NDArray[np.bool_] | None,
) -> str:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    keep = y >= 0
    if test_mask is not None:
        keep &= np.asarray(test_mask, dtype=np.bool_)
        scope, metrics = f"test window {summary.get('test_window') or ''}", summary.get("test")
    else:
        scope, metrics = "all labelled transactions", summary.get("overall")
    y, s = y[keep].astype(np.int64), s[keep]
    metrics = metrics or {}
    frauds = int(y.sum())
    head = (
        f"<h2>Curves</h2><p class=meta>{escape(scope)}: {_count(len(y))} transactions, "
        f"{_count(frauds)} frauds</p>"
    )
    auc, ap = (
        _value(metrics.get("roc_auc"), "score"),
        _value(metrics.get("average_precision"), "score"),
    )
    try:
        fpr, tpr = roc_curve(y, s)
        roc = _curve_figure(
            "ROC curve",
            Line(f"model (AUC {auc})", *downsample(fpr, tpr, MAX_CURVE_POINTS), "s1"),
            Line("chance", [0.0, 1.0], [0.0, 1.0], "s3"),
            ("false positive rate", "true positive rate"),
        )
    except ValueError as exc:
        roc = _unavailable("ROC curve", exc)
    try:
        precision, recall = precision_recall_curve(y, s)
        prevalence = frauds / len(y)
        pr = _curve_figure(
            "Precision-recall curve",
            Line(f"model (AP {ap})", *downsample(recall, precision, MAX_CURVE_POINTS), "s1"),
            Line(f"chance (prevalence {prevalence:.4f})", [0.0, 1.0], [prevalence] * 2, "s3"),
            ("recall", "precision"),
        )
    except ValueError as exc:
        pr = _unavailable("Precision-recall curve", exc)
    return f'{head}<div class="row">{roc}{pr}</div>'


def _daily_section(daily: Sequence[Mapping[str, Any]], window: Any) -> str:
    days = [str(d.get("day", "")) for d in daily]
    index = list(range(len(days)))
    lines = [
        Line("average precision", index, [_num(d.get("average_precision")) for d in daily], "s1"),
        Line("card precision@k", index, [_num(d.get("card_precision_at_k")) for d in daily], "s2"),
    ]
    tips = [
        f"{d.get('day')}: {_plain(d.get('n'))} transactions, {_plain(d.get('frauds'))} frauds, "
        f"{_plain(d.get('alerts'))} alerts; AP {_plain(d.get('average_precision'))}, "
        f"CP@k {_plain(d.get('card_precision_at_k'))}"
        for d in daily
    ]
    highlight = None
    if isinstance(window, str) and ".." in window:
        start, end = window.split("..", 1)
        inside = [i for i, day in enumerate(days) if start <= day <= end]
        highlight = (inside[0], inside[-1]) if inside else None
    svg = daily_chart(
        days,
        lines,
        [float(d.get("frauds") or 0) for d in daily],
        title="Daily detection quality",
        y_label="AP, CP@k",
        bar_label="frauds",
        tips=tips,
        highlight=highlight,
    )
    keys = legend([*lines, Line("frauds (right axis)", [], [], "bar")])
    note = " The shaded days are the test window." if highlight else ""
    table = "".join(
        "<tr>" + "".join(f"<td class=n>{_daily_cell(d.get(c))}</td>" for c in _DAILY_COLUMNS)
        + "</tr>"
        for d in daily
    )  # fmt: skip
    head = "".join(f"<th>{escape(c)}</th>" for c in _DAILY_COLUMNS)
    return (
        f"<h2>Per day</h2>{keys}{svg}"
        f'<p class="note">Days without both classes have no AP.{note} '
        "Hover a bar for the day's figures.</p>"
        f"<details><summary>daily table</summary><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{table}</tbody></table></details>"
    )


def _settings(summary: Mapping[str, Any]) -> str:
    model = summary.get("model") or {}
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th><td>{_text(value)}</td></tr>"
        for key, value in model.items()
    )
    return (
        f"<h2>Model and policy</h2><p class=meta>policy version "
        f"<b>{_text(summary.get('policy_version'))}</b></p><table>{rows}</table>"
    )


def _timings(summary: Mapping[str, Any]) -> str:
    timings = summary.get("timings") or {}
    total = _num(timings.get("total"))
    rows = []
    for stage, seconds in timings.items():
        value = _num(seconds)
        share = f"{value / total:.1%}" if value is not None and total and stage != "total" else ""
        seconds_text = DASH if value is None else f"{value:,.2f} s"
        rows.append(
            f"<tr><td>{escape(str(stage))}</td><td class=n>{seconds_text}</td>"
            f"<td class=n>{share}</td></tr>"
        )
    return (
        "<h2>Stage timings</h2><table><thead><tr><th>stage</th><th>wall time</th>"
        f"<th>of total</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="meta">throughput <b>{_rate(summary.get("throughput"))}</b></p>'
    )


def _curve_figure(title: str, model: Line, chance: Line, labels: tuple[str, str]) -> str:
    lines = [model, chance]
    svg = curve_chart(title, lines, x_label=labels[0], y_label=labels[1])
    return f"<figure><figcaption>{escape(title)}</figcaption>{legend(lines)}{svg}</figure>"


def _unavailable(title: str, reason: Exception) -> str:
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<div class="unavailable">not available: {escape(str(reason))}</div></figure>'
    )


def _num(value: Any) -> float | None:
    """A finite float, or None for a missing or undefined value."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _value(value: Any, kind: str) -> str:
    number = _num(value)
    if number is None:
        return DASH
    if kind == "count":
        return f"{number:,.0f}"
    if kind == "share":
        return f"{number:.2%}"
    return f"{number:.4f}"


def _count(value: Any) -> str:
    return _value(value, "count")


def _rate(value: Any) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:,.0f} tx/s"


def _text(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, str):
        return escape(value)
    return escape(json.dumps(_jsonable(value), ensure_ascii=False))


def _plain(value: Any) -> str:
    number = _num(value)
    if number is None:
        return DASH
    return f"{number:.4f}" if isinstance(value, float) else f"{number:,.0f}"


def _daily_cell(value: Any) -> str:
    return escape(value) if isinstance(value, str) else _plain(value)


def _write_daily_csv(path: Path, daily: Sequence[Mapping[str, Any]]) -> None:
    extra = sorted({key for d in daily for key in d} - set(_DAILY_COLUMNS))
    columns = [*_DAILY_COLUMNS, *extra]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for d in daily:
            writer.writerow(["" if _jsonable(d.get(c)) is None else d.get(c) for c in columns])


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain, and NaN or infinity made None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
