"""The ``backtest`` and ``simulate`` subcommands of the ``fraudstream`` command line."""

from __future__ import annotations

import csv
import logging
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from models.errors import FraudstreamError
from models.features import FeatureConfig
from models.model import MODEL_KINDS, OPTIMIZERS, ModelConfig
from models.policy import Policy
from processor import logs
from replay.backtest import BacktestAborted, BacktestConfig, BacktestResult, iter_scores
from replay.readers import (
    PRESETS,
    BadRow,
    ColumnMapping,
    ColumnsMissing,
    ReaderError,
    Row,
    read_transactions,
)
from replay.summary import Evaluation, evaluate

log = logging.getLogger("fraudstream.backtest")
_METRICS = (
    ("roc_auc", "ROC AUC"),
    ("average_precision", "Average precision"),
    ("card_precision_at_k", "Card precision@k"),
    ("alert_rate", "Alert rate"),
    ("fraud_amount_caught", "Fraud amount caught"),
)


def _date(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FraudstreamError(f"{option}: {text!r} is not a date (YYYY-MM-DD)") from None


def open_rows(file: Path, preset: str | None, columns: str | None) -> Iterator[Row | BadRow]:
    """Rows of ``file`` by ``--columns``, ``--preset``, or the first preset that fits."""
    if columns:
        return read_transactions(file, ColumnMapping.parse(columns))
    if preset is not None:
        if preset not in PRESETS:
            choices = ", ".join(PRESETS)
            raise FraudstreamError(f"--preset: unknown preset {preset!r}; choose {choices}")
        return read_transactions(file, PRESETS[preset])
    first: ReaderError | None = None
    for mapping in PRESETS.values():
        try:
            return read_transactions(file, mapping)
        except ColumnsMissing as exc:  # JSONL says "the first record" where CSV says "the file"
            first = first or exc
    assert first is not None
    raise ReaderError(f"{first} — name the layout with --preset or --columns")


def backtest(
    file: Annotated[Path, typer.Argument(help="CSV, CSV.gz, Parquet or JSONL of transactions.")],
    preset: Annotated[
        str | None,
        typer.Option(
            help="Column layout: 'handbook' or 'fraudstream' (the wire names); "
            "by default the first that fits the file."
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Any other layout: 'tx_id=ID,ts=TIME,card_id=..,label=FRAUD'."),
    ] = None,
    test_from: Annotated[str | None, typer.Option(help="First test day (YYYY-MM-DD).")] = None,
    test_to: Annotated[str | None, typer.Option(help="Last test day, inclusive.")] = None,
    label_delay: Annotated[
        float, typer.Option(help="Days until a label is known (frauds reported, others cleared).")
    ] = 7.0,
    model: Annotated[str, typer.Option(help=f"Model: {', '.join(MODEL_KINDS)}.")] = "logreg",
    optimizer: Annotated[
        str, typer.Option(help=f"Optimizer: {', '.join(OPTIMIZERS)}.")
    ] = "adagrad",
    learning_rate: Annotated[float, typer.Option(help="Optimizer learning rate.")] = 0.1,
    fraud_weight: Annotated[float, typer.Option(help="Loss weight of a fraud example.")] = 5.0,
    policy: Annotated[
        Path | None, typer.Option(help="Decision policy YAML (default: the packaged one).")
    ] = None,
    top_k: Annotated[int, typer.Option("--k", help="k of card precision@k.")] = 100,
    scores_out: Annotated[
        Path | None, typer.Option(help="Write tx_id,score,action per transaction here.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write an HTML report (and summary.json) in this folder.")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first malformed row.")] = False,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Score a file with the live core in event time, learning from delayed labels, and report
    detection quality: overall, on a test window (the handbook's protocol), and per day."""
    logs.configure(log_level)
    start_day, end_day = _date(test_from, "--test-from"), _date(test_to, "--test-to")
    if top_k < 1:
        raise FraudstreamError("--k must be at least 1")
    try:
        features = FeatureConfig(label_delay_days=label_delay)
        model_config = ModelConfig(
            model, optimizer=optimizer, learning_rate=learning_rate, fraud_weight=fraud_weight
        )
    except ValueError as exc:
        raise FraudstreamError(str(exc)) from None
    source = open_rows(file, preset, columns)
    config = BacktestConfig(
        model=model_config,
        features=features,
        policy=Policy.load(policy, features.names),
        strict=strict,
    )
    begun = time.perf_counter()
    try:
        result = _run(source, config)
    except BacktestAborted as exc:
        raise FraudstreamError(f"{file}: {exc} (--strict)") from None
    if not result.rows:
        bad = f" ({len(result.bad_rows)} malformed)" if result.bad_rows else ""
        raise FraudstreamError(f"{file}: no valid transactions{bad}")
    t = time.perf_counter()
    try:
        evaluation = evaluate(
            result, test_from=start_day, test_to=end_day, delay_days=int(label_delay), k=top_k
        )
    except ValueError as exc:
        raise FraudstreamError(str(exc)) from None
    result.timings["metrics"] = time.perf_counter() - t
    if scores_out is not None:
        t = time.perf_counter()
        _write_scores(scores_out, result)
        result.timings["write_scores"] = time.perf_counter() - t
    summary = _summary(file, result, evaluation, begun)
    if report is not None:
        from replay.report import write_report

        t = time.perf_counter()
        index = write_report(
            report,
            summary=summary,
            y_true=result.labels,
            scores=result.scores,
            test_mask=evaluation.test_mask,
            daily=evaluation.daily,
        )
        result.timings["report"] = time.perf_counter() - t
        result.timings["total"] = time.perf_counter() - begun
        summary["timings"] = dict(result.timings)
        (report / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        summary["report"] = str(index)
    _print_summary(summary, top_k)


def _run(source: Any, config: BacktestConfig) -> BacktestResult:
    from replay.backtest import run_backtest

    if not sys.stderr.isatty():
        state = {"t": time.perf_counter()}

        def read(n: int) -> None:
            if n % 200_000 == 0:
                rate = n / (time.perf_counter() - state["t"])
                log.info("read %d rows (%.0f rows/s)", n, rate)

        def scored(i: int, n: int) -> None:
            if i and (i % 200_000 == 0 or i == n):
                log.info("scored %d of %d", i, n)

        return run_backtest(source, config, on_read=read, on_scored=scored)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        reading = progress.add_task("reading", total=None, rate="")
        scoring = progress.add_task("scoring", total=None, rate="", visible=False)
        t0 = time.perf_counter()

        def read(n: int) -> None:
            rate = n / max(time.perf_counter() - t0, 1e-9)
            progress.update(reading, completed=n, rate=f"{rate:,.0f} rows/s")

        t1 = [0.0]

        def scored(i: int, n: int) -> None:
            if not t1[0]:
                t1[0] = time.perf_counter()
                progress.update(reading, total=n, completed=n)
                progress.update(scoring, visible=True, total=n)
            rate = i / max(time.perf_counter() - t1[0], 1e-9)
            progress.update(scoring, completed=i, rate=f"{rate:,.0f} tx/s")

        return run_backtest(source, config, on_read=read, on_scored=scored)


def _write_scores(path: Path, result: BacktestResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("tx_id", "score", "action"))
        writer.writerows(
            (tx_id, f"{score:.6f}", action) for tx_id, score, action in iter_scores(result)
        )


def _summary(file: Path, result: BacktestResult, ev: Evaluation, begun: float) -> dict[str, Any]:
    total = time.perf_counter() - begun
    result.timings["total"] = total
    scoring = sum(
        v for k, v in result.timings.items() if k in ("features", "score", "decide", "learn")
    )
    return {
        "input": str(file),
        "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "rows": result.rows,
        "bad_rows": len(result.bad_rows),
        "bad_row_lines": [b.line for b in result.bad_rows[:100]],
        "reordered": result.reordered,
        "overall": ev.overall,
        "test": ev.test,
        "test_window": ev.test_window,
        "model": result.model,
        "policy_version": result.policy_version,
        "checkpoints": result.checkpoints,
        "timings": dict(result.timings),
        "throughput": result.rows / total if total else None,
        "scoring_throughput": result.rows / scoring if scoring else None,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_summary(summary: dict[str, Any], k: int) -> None:
    console = Console()
    table = Table(title=f"fraudstream backtest — {summary['input']}")
    table.add_column("metric")
    table.add_column("overall", justify="right")
    if summary["test"] is not None:
        table.add_column(f"test {summary['test_window']}", justify="right")
    overall, test = summary["overall"] or {}, summary["test"]
    rows = [("transactions", "n"), ("frauds", "frauds"), *((key, key) for key, _ in _METRICS)]
    for label, key in rows:
        name = dict(_METRICS).get(key, label).replace("@k", f"@{k}")
        cells = [name, _fmt(overall.get(key))]
        if test is not None:
            cells.append(_fmt(test.get(key)))
        table.add_row(*cells)
    console.print(table)
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings"].items())
    console.print(
        f"{summary['rows']:,} transactions, {summary['bad_rows']} malformed rows skipped; "
        f"{summary['throughput']:,.0f} tx/s end to end "
        f"({summary['scoring_throughput']:,.0f} tx/s scoring and learning)"
    )
    console.print(f"stages: {timings}")
    if "report" in summary:
        console.print(f"report: {summary['report']}")


def simulate(
    out: Annotated[Path, typer.Option(help="Output CSV (.csv or .csv.gz).")] = Path(
        "simulated.csv.gz"
    ),
    customers: Annotated[int, typer.Option(help="Number of cards.")] = 5000,
    terminals: Annotated[int, typer.Option(help="Number of merchant terminals.")] = 10000,
    days: Annotated[int, typer.Option(help="Days of payments.")] = 183,
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2018-04-01",
    radius: Annotated[float, typer.Option(help="Distance a card travels to terminals.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same file.")] = 0,
    compromised_terminals_per_day: Annotated[
        int, typer.Option(help="Scenario 2: terminals compromised each day.")
    ] = 2,
    terminal_compromise_days: Annotated[
        int, typer.Option(help="Scenario 2: days a compromised terminal stays so.")
    ] = 28,
    compromised_cards_per_day: Annotated[
        int, typer.Option(help="Scenario 3: cards compromised each day.")
    ] = 3,
    card_compromise_days: Annotated[
        int, typer.Option(help="Scenario 3: days a compromised card stays so.")
    ] = 14,
    large_amount_threshold: Annotated[
        float, typer.Option(help="Scenario 1: amounts above this are fraud.")
    ] = 220.0,
) -> None:
    """Write simulated card payments with the handbook's generator (its columns and labels)."""
    from replay.simulate import SimulationConfig, simulate_to_file

    first = _date(start, "--start")
    assert first is not None
    try:
        config = SimulationConfig(
            customers=customers,
            terminals=terminals,
            days=days,
            start=first,
            radius=radius,
            seed=seed,
            compromised_terminals_per_day=compromised_terminals_per_day,
            terminal_compromise_days=terminal_compromise_days,
            compromised_cards_per_day=compromised_cards_per_day,
            card_compromise_days=card_compromise_days,
            large_amount_threshold=large_amount_threshold,
        )
    except ValueError as exc:
        raise FraudstreamError(str(exc)) from None
    summary = simulate_to_file(config, out)
    scenarios = ", ".join(f"scenario {k}: {v:,}" for k, v in sorted(summary.by_scenario.items()))
    typer.echo(
        f"wrote {summary.transactions:,} transactions ({summary.frauds:,} frauds; {scenarios}) "
        f"to {summary.path}"
    )
