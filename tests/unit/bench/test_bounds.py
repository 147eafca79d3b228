"""The card precision bounds: which frauds are knowable under the delay, and the two rankings."""

from __future__ import annotations

import csv
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from bench.bounds import card_precision_bounds, knowable, main, read_frauds

ORIGIN = datetime(2018, 4, 1)
COLUMNS = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
           "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO"]  # fmt: skip


def write(path: Path, rows: list[tuple[float, str, str, int]]) -> Path:
    """Rows of (day as a float, card, terminal, scenario) in the handbook's layout."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for i, (day, card, terminal, scenario) in enumerate(rows):
            seconds = int(day * 86_400)
            when = ORIGIN + timedelta(seconds=seconds)
            amount = 250.0 if scenario == 1 else 40.0
            fraud = int(scenario > 0)
            row = [i, when.isoformat(sep=" "), card, terminal, amount, seconds, seconds // 86_400]
            out.writerow([*row, fraud, scenario])
    return path


# Test day 14 (2018-04-15); training days 0-6, delay days 7-13.
ROWS = [
    (0.1, "H", "T6", 0),
    (2.5, "A", "T1", 2),  # T1 compromised on day 2; A is known to be compromised by day 14
    (12.5, "C", "T2", 2),  # T2 compromised on day 12; C is not yet known on day 14
    (14.1, "F", "T9", 0),
    (14.2, "D", "T2", 2),  # two days into T2's compromise: nothing knows it yet
    (14.3, "B", "T1", 2),  # twelve days into T1's: the label of A's fraud is known
    (14.4, "E", "T8", 1),  # an amount over 220
    (14.5, "C", "T7", 0),
    (14.6, "G", "T9", 0),
    (14.7, "A", "T5", 0),
]


def test_a_fraud_at_a_compromised_terminal_is_knowable_once_the_first_is_past_the_delay(
    tmp_path: Path,
) -> None:
    frauds = read_frauds(write(tmp_path / "f.csv", ROWS))
    assert frauds.origin == date(2018, 4, 1)
    assert knowable(frauds).tolist() == [False] * 5 + [True, True] + [False] * 3
    # Exactly the delay after the terminal's first fraud is knowable; a moment before is not.
    rows = [(1.0, "A", "T1", 2), (8.0, "B", "T1", 2), (7.999, "C", "T1", 2), (3.0, "D", "T4", 3)]
    frauds = read_frauds(write(tmp_path / "g.csv", rows))
    assert knowable(frauds, delay_days=7).tolist() == [False, True, False, True]
    assert knowable(frauds, delay_days=1).tolist() == [False, True, True, True]


def test_the_knowable_ranking_misses_what_no_evidence_points_to(tmp_path: Path) -> None:
    frauds = read_frauds(write(tmp_path / "f.csv", ROWS))
    bounds = card_precision_bounds(frauds, date(2018, 4, 15), date(2018, 4, 15), k=3)
    # Card A is removed (known compromised); D, B and E are the day's fraudulent cards.
    assert bounds["fraud_cards"] == 3 and bounds["knowable_fraud_cards"] == 2
    assert bounds["perfect"]["card_precision_at_k"] == 1.0
    # B and E first, then the first card to appear among the rest: F, legitimate.
    assert bounds["knowable"]["card_precision_at_k"] == pytest.approx(2 / 3, abs=1e-4)
    assert bounds["knowable"]["per_day"] == {"2018-04-15": pytest.approx(2 / 3)}
    wider = card_precision_bounds(frauds, date(2018, 4, 15), date(2018, 4, 15), k=10)
    assert wider["perfect"]["card_precision_at_k"] == pytest.approx(0.3)
    assert wider["knowable"]["card_precision_at_k"] == pytest.approx(0.3)


def test_bad_files_and_windows_get_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frauds = read_frauds(write(tmp_path / "f.csv", ROWS))
    with pytest.raises(ValueError, match="no payments in the test window"):
        card_precision_bounds(frauds, date(2019, 1, 1), date(2019, 1, 7))
    with pytest.raises(ValueError, match="before it starts"):
        card_precision_bounds(frauds, date(2018, 4, 15), date(2018, 4, 14))
    other = tmp_path / "other.csv"
    other.write_text("tx_id,amount\n1,2.0\n")
    assert main(["--data", str(other)]) == 2
    assert "missing CUSTOMER_ID" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "absent.csv.gz")]) == 2
    assert "cannot open" in capsys.readouterr().err
    broken = write(tmp_path / "broken.csv", ROWS)
    broken.write_text(broken.read_text().replace("2018-04-15 02:24:00", "yesterday", 1))
    window = ["--test-from", "2018-04-15", "--test-to", "2018-04-15"]
    assert main(["--data", str(broken), *window]) == 2
    assert "line 5" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "f.csv"), *window, "-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "perfect ranking 1.000, knowable with a 7-day label delay 0.667" in printed


def test_days_count_from_the_first_payment(tmp_path: Path) -> None:
    frauds = read_frauds(write(tmp_path / "f.csv", [(3.2, "A", "T1", 0), (5.9, "B", "T1", 0)]))
    assert frauds.origin == date(2018, 4, 4)
    assert np.array_equal(frauds.days, [0, 2])
