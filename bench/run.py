"""The benchmark harness: measures, writes ``bench/results.json`` and ``bench/results.md``.

Run with ``make bench`` (or ``python -m bench.run --data FILE``). Each figure is stored with the
machine's core count, the Python version and the commit, so a regression shows against history.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.bounds import card_precision_bounds, read_frauds
from replay.backtest import BacktestConfig, run_backtest
from replay.readers import PRESETS, read_transactions
from replay.summary import evaluate


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bench_backtest(data: Path, test_from: date, test_to: date) -> dict[str, Any]:
    """The backtest over the whole file on one core: rows/s, stage timings, detection quality."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as promised
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_backtest(read_transactions(data, PRESETS["handbook"]), BacktestConfig())
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    t = time.perf_counter()
    ev = evaluate(result, test_from=test_from, test_to=test_to)
    metrics_s = time.perf_counter() - t
    scoring = sum(result.timings[k] for k in ("features", "score", "decide", "learn"))
    return {
        "rows": result.rows,
        "bad_rows": len(result.bad_rows),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(result.rows / elapsed),
        # On a shared machine wall time also counts other processes: the CPU time this one got,
        # and the load around it, tell a slower run from a busier machine.
        "cpu_seconds": round(cpu, 2),
        "cpu_rows_per_s": round(result.rows / cpu),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "scoring_rows_per_s": round(result.rows / scoring),
        "stages_s": {k: round(v, 2) for k, v in {**result.timings, "metrics": metrics_s}.items()},
        "checkpoints": result.checkpoints,
        "target_rows_per_s": 20_000,
        "test_window": ev.test_window,
        "test": ev.test,
        "overall": ev.overall,
    }


def bench_bounds(data: Path, test_from: date, test_to: date) -> dict[str, Any]:
    """How high card precision@100 can go on the test window: perfect, and with what is knowable."""
    return card_precision_bounds(read_frauds(data), test_from, test_to)


def _markdown(results: dict[str, Any]) -> str:
    b = results["backtest"]
    test = b["test"] or {}
    bounds = results["bounds"]
    lines = [
        f"# Benchmarks — {results['commit']} on {results['cores']} cores, {results['python']}",
        "",
        f"Measured {results['measured_at']}.",
        "",
        "| benchmark | figure | target |",
        "|---|---|---|",
        f"| backtest, {b['rows']:,} rows, one core | {b['rows_per_s']:,} rows/s end to end "
        f"({b['scoring_rows_per_s']:,} rows/s scoring and learning) | >= 20,000 rows/s |",
        f"| detection, test {b['test_window']} | ROC AUC {test.get('roc_auc', 0):.3f}, "
        f"AP {test.get('average_precision', 0):.3f}, "
        f"CP@100 {test.get('card_precision_at_k', 0):.3f} | >= 0.87 / 0.61 / 0.29 |",
        f"| CP@100 any model can reach, test {bounds['test_window']} | "
        f"{bounds['knowable']['card_precision_at_k']:.3f} with the "
        f"{bounds['delay_days']}-day label delay ({bounds['knowable_fraud_cards']} of "
        f"{bounds['fraud_cards']} fraudulent cards knowable); perfect ranking "
        f"{bounds['perfect']['card_precision_at_k']:.3f} | |",
        "",
        "Backtest stages (seconds): " + ", ".join(f"{k} {v}" for k, v in b["stages_s"].items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--test-from", type=date.fromisoformat, default=date(2018, 7, 25))
    parser.add_argument("--test-to", type=date.fromisoformat, default=date(2018, 7, 31))
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"bench: no data file at {args.data}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "commit": _commit(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "backtest": bench_backtest(args.data, args.test_from, args.test_to),
        "bounds": bench_bounds(args.data, args.test_from, args.test_to),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    args.out.with_suffix(".md").write_text(_markdown(results))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
