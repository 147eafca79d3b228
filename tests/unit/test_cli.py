"""The ``fraudstream`` command as a user meets it: help, errors in one line, files written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", [[], ["backtest"], ["simulate"]])
def test_help_explains_itself(command: list[str]) -> None:
    done = run(*command, "--help")
    assert done.returncode == 0
    assert "Usage" in done.stdout and len(done.stdout.splitlines()) > 5


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "small.csv.gz"
    done = run(
        "simulate", "--customers", "200", "--terminals", "400", "--days", "20", "--out", str(path)
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backtest", "/no/such.csv"], "no such file"),
        (["backtest", "{small}", "--columns", "tx_id=NOPE"], "'NOPE'"),
        (["backtest", "{small}", "--preset", "nope"], "unknown preset"),
        (["backtest", "{empty}"], "no rows"),
        (["backtest", "{small}", "--test-from", "July"], "not a date"),
        (["backtest", "{small}", "--model", "oracle"], "unknown model kind"),
        (["simulate", "--days", "0"], "days must be"),
    ],
)
def test_bad_input_is_one_clear_line(
    small: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n")
    done = run(*(a.format(small=small, empty=empty) for a in args))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_backtest_writes_scores_and_report(small: Path, tmp_path: Path) -> None:
    scores, report = tmp_path / "scores.csv", tmp_path / "report"
    done = run(
        "backtest", str(small), "--preset", "handbook", "--test-from", "2018-04-12",
        "--scores-out", str(scores), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ROC AUC" in done.stdout and "test 2018-04-12..2018-04-20" in done.stdout
    with scores.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"tx_id", "score", "action"}
    assert {r["action"] for r in rows} <= {"approve", "review", "decline"}
    summary = json.loads((report / "summary.json").read_text())
    assert summary["rows"] == len(rows) and summary["test_window"] == "2018-04-12..2018-04-20"
    assert {"read", "features", "score", "decide", "learn", "report"} <= set(summary["timings"])
    assert "<svg" in (report / "index.html").read_text()
