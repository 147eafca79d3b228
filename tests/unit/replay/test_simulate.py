from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from replay.simulate import (
    SimulatedTransactions,
    SimulationConfig,
    simulate,
    simulate_to_file,
    write_csv,
)

HEADER = (
    "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,"
    "TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"
)
SMALL = SimulationConfig(customers=200, terminals=400, days=30)
# Few terminals that everyone reaches: each terminal sees payments every day, so a compromise
# window is visible day by day. Scenario 3 is off; a low threshold makes scenario 1 common.
CROWDED = SimulationConfig(
    customers=300,
    terminals=40,
    days=20,
    radius=200.0,
    compromised_terminals_per_day=1,
    compromised_cards_per_day=0,
    large_amount_threshold=100.0,
)


@pytest.fixture(scope="module")
def small() -> SimulatedTransactions:
    return simulate(SMALL)


def _read_rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        return list(csv.reader(handle))


def _runs(days: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive days, as (first, last)."""
    breaks = np.flatnonzero(np.diff(days) > 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(days) - 1]))
    return [(int(days[s]), int(days[e])) for s, e in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, suffix: str) -> None:
    first, second = tmp_path / f"one{suffix}", tmp_path / "other" / f"two{suffix}"
    write_csv(simulate(SMALL), first)
    write_csv(simulate(SMALL), second)
    assert first.read_bytes() == second.read_bytes()


def test_different_seed_gives_different_file(tmp_path: Path) -> None:
    write_csv(simulate(SMALL), tmp_path / "a.csv")
    write_csv(simulate(dataclasses.replace(SMALL, seed=1)), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()


def test_csv_has_handbook_header_and_formats(tmp_path: Path, small: SimulatedTransactions) -> None:
    path = tmp_path / "out.csv"
    write_csv(small, path)
    rows = _read_rows(path)
    assert ",".join(rows[0]) == HEADER
    assert len(rows) == len(small) + 1
    start = datetime.datetime(2018, 4, 1)
    for row in rows[1:200]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[1])
        stamp = datetime.datetime.strptime(row[1], "%Y-%m-%d %H:%M:%S")
        assert stamp == start + datetime.timedelta(seconds=int(row[5]))
        assert int(row[6]) == int(row[5]) // 86_400
        assert row[7] in {"0", "1"} and row[8] in {"0", "1", "2", "3"}
    assert [float(row[4]) for row in rows[1:]] == small.tx_amount.tolist()


def test_ids_follow_time_order(small: SimulatedTransactions) -> None:
    assert len(small) > 5_000
    np.testing.assert_array_equal(small.transaction_id, np.arange(len(small)))
    assert np.all(np.diff(small.tx_time_seconds) >= 0)
    np.testing.assert_array_equal(small.tx_time_days, small.tx_time_seconds // 86_400)
    # Times of day are strictly inside the day, as the handbook keeps only 0 < t < 86400.
    assert np.all(small.tx_time_seconds % 86_400 > 0)
    assert small.tx_time_days.max() == SMALL.days - 1


def test_labels_agree(small: SimulatedTransactions) -> None:
    np.testing.assert_array_equal(small.tx_fraud, (small.tx_fraud_scenario > 0).astype(np.int8))
    genuine = small.tx_fraud_scenario == 0
    assert np.all(small.tx_amount[genuine] >= 0)
    # Amounts are drawn to the cent; only scenario 3 scales them afterwards.
    unscaled = small.tx_amount[small.tx_fraud_scenario != 3]
    np.testing.assert_array_equal(unscaled, np.round(unscaled, 2))


@pytest.mark.parametrize("threshold", [100.0, 220.0])
def test_large_amounts_are_fraud(threshold: float) -> None:
    data = simulate(dataclasses.replace(SMALL, large_amount_threshold=threshold))
    large = data.tx_amount > threshold
    scenario = data.tx_fraud_scenario
    assert np.any(scenario == 1)
    assert np.all(data.tx_fraud[large] == 1)
    assert np.all(data.tx_amount[scenario == 1] > threshold)
    # Later scenarios may take over the code, but never leave a large amount unlabelled.
    assert set(np.unique(scenario[large]).tolist()) <= {1, 2, 3}


@pytest.mark.parametrize("window", [3, 7])
def test_compromised_terminal_is_fraud_for_its_whole_window(window: int) -> None:
    config = dataclasses.replace(CROWDED, terminal_compromise_days=window)
    data = simulate(config)
    scenario, large = data.tx_fraud_scenario, data.tx_amount > config.large_amount_threshold
    assert set(np.unique(scenario).tolist()) == {0, 1, 2}
    compromised = np.unique(data.terminal_id[scenario == 2])
    assert len(compromised) >= 2
    large_overridden = 0
    for terminal in compromised.tolist():
        on_terminal = data.terminal_id == terminal
        fraud_days = np.unique(data.tx_time_days[on_terminal & (scenario == 2)])
        # Every payment at the terminal on a compromised day is scenario 2, large amounts
        # included; on other days only large amounts are fraud.
        in_window = on_terminal & np.isin(data.tx_time_days, fraud_days)
        assert np.all(scenario[in_window] == 2)
        np.testing.assert_array_equal(
            scenario[on_terminal & ~in_window], large[on_terminal & ~in_window]
        )
        large_overridden += int(np.sum(large[in_window]))
        for first, last in _runs(fraud_days):
            assert last - first + 1 >= min(window, config.days - first)
    assert large_overridden > 0


@pytest.mark.parametrize(("multiplier", "share"), [(5.0, 1 / 3), (2.0, 1.0)])
def test_compromised_cards_get_scaled_amounts(multiplier: float, share: float) -> None:
    config = dataclasses.replace(
        SMALL, card_fraud_multiplier=multiplier, card_fraud_share=share, card_compromise_days=30
    )
    data = simulate(config)
    # The card stream is separate, so without compromised cards the payments are the same.
    base = simulate(dataclasses.replace(config, compromised_cards_per_day=0))
    np.testing.assert_array_equal(data.tx_time_seconds, base.tx_time_seconds)
    np.testing.assert_array_equal(data.customer_id, base.customer_id)

    card_fraud = data.tx_fraud_scenario == 3
    assert card_fraud.sum() > 20
    np.testing.assert_array_equal(data.tx_amount[~card_fraud], base.tx_amount[~card_fraud])
    np.testing.assert_array_equal(
        data.tx_fraud_scenario[~card_fraud], base.tx_fraud_scenario[~card_fraud]
    )
    # A payment picked on two days' draws is scaled twice.
    ratio = data.tx_amount[card_fraud] / base.tx_amount[card_fraud]
    powers = np.log(ratio) / np.log(multiplier)
    np.testing.assert_allclose(powers, np.round(powers), atol=1e-9)
    assert np.all(np.round(powers) >= 1)
    if share == 1.0:
        # The window outlasts the simulation: from its first card fraud on, all is card fraud.
        for card in np.unique(data.customer_id[card_fraud]).tolist():
            labels = data.tx_fraud_scenario[data.customer_id == card]
            assert np.all(labels[int(np.argmax(labels == 3)) :] == 3)


def test_fraud_rate_is_plausible_for_medium_population() -> None:
    data = simulate(SimulationConfig(customers=1000, terminals=2000, days=60))
    # The handbook's 0.8% comes from 2 of 10,000 terminals and 3 of 5,000 cards a day; the same
    # absolute counts on a fifth of the terminals and cards give about 2% + 1.3% + 0.06%.
    assert 0.02 < data.tx_fraud.mean() < 0.06
    assert all(np.any(data.tx_fraud_scenario == s) for s in (1, 2, 3))


def test_one_day_has_no_compromises() -> None:
    # As in the handbook, compromises start on every day but the last.
    data = simulate(dataclasses.replace(SMALL, days=1, large_amount_threshold=1e9))
    assert len(data) > 0
    assert not np.any(data.tx_fraud)


def test_gzip_output_matches_plain_csv(tmp_path: Path, small: SimulatedTransactions) -> None:
    write_csv(small, tmp_path / "plain.csv")
    write_csv(small, tmp_path / "packed.csv.gz")
    with gzip.open(tmp_path / "packed.csv.gz", "rb") as handle:
        assert handle.read() == (tmp_path / "plain.csv").read_bytes()
        # A zero timestamp in the header keeps files written at different times identical.
        assert handle.mtime == 0


def test_simulate_to_file_summarises_what_it_wrote(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "sim.csv"
    summary = simulate_to_file(SMALL, path)
    rows = _read_rows(path)[1:]
    scenarios = [int(row[8]) for row in rows]
    assert summary.path == path
    assert summary.transactions == len(rows)
    assert summary.frauds == sum(int(row[7]) for row in rows) > 0
    assert summary.by_scenario == {s: scenarios.count(s) for s in (1, 2, 3)}
    assert (summary.customers, summary.terminals, summary.days) == (200, 400, 30)


def test_nobody_in_reach_writes_only_the_header(tmp_path: Path) -> None:
    config = SimulationConfig(customers=5, terminals=5, days=3, radius=1e-6)
    summary = simulate_to_file(config, tmp_path / "empty.csv")
    assert summary.transactions == summary.frauds == 0
    assert (tmp_path / "empty.csv").read_text() == HEADER + "\n"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("customers", 0, "customers must be >= 1"),
        ("terminals", -1, "terminals must be >= 1"),
        ("days", 0, "days must be >= 1"),
        ("start", datetime.datetime(2018, 4, 1, 12), "start must be a datetime.date"),
        ("radius", 0.0, "radius must be > 0"),
        ("radius", float("nan"), "radius must be > 0"),
        ("seed", -1, "seed must be >= 0"),
        ("compromised_terminals_per_day", 401, "compromised_terminals_per_day must be in"),
        ("terminal_compromise_days", 0, "terminal_compromise_days must be >= 1"),
        ("compromised_cards_per_day", -1, "compromised_cards_per_day must be in"),
        ("card_compromise_days", 0, "card_compromise_days must be >= 1"),
        ("large_amount_threshold", 0.0, "large_amount_threshold must be > 0"),
        ("card_fraud_share", 0.0, "card_fraud_share must be in"),
        ("card_fraud_share", 1.5, "card_fraud_share must be in"),
        ("card_fraud_multiplier", 0.5, "card_fraud_multiplier must be >= 1"),
    ],
)
def test_invalid_config_is_rejected(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(SMALL, **{field: value})
