"""The backtest runs the core over a file in event time and learns only what is known."""

from __future__ import annotations

import csv
import gc
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from models.features import DAY
from models.model import FraudModel
from replay.backtest import ACTIONS, BacktestConfig, run_backtest
from replay.readers import PRESETS, read_transactions
from replay.simulate import SimulationConfig, simulate_to_file
from replay.summary import evaluate


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "month.csv"
    simulate_to_file(SimulationConfig(customers=300, terminals=600, days=30, seed=7), path)
    return path


def test_every_transaction_is_scored_once_in_event_time(simulated: Path) -> None:
    result = run_backtest(read_transactions(simulated, PRESETS["handbook"]))
    with simulated.open() as fh:
        ids = [row["TRANSACTION_ID"] for row in csv.DictReader(fh)]
    assert result.tx_ids == ids
    assert np.all(np.diff(result.ts) >= 0)
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert set(np.unique(result.actions)) <= set(range(len(ACTIONS)))
    assert result.checkpoints > 0
    assert {"read", "features", "score", "decide", "learn"} <= set(result.timings)


def test_the_model_learns_nothing_before_the_label_delay(simulated: Path) -> None:
    result = run_backtest(read_transactions(simulated, PRESETS["handbook"]))
    first_week = result.ts < result.ts.min() + 7 * DAY
    # Nothing is known for a week: every score is the fresh model's prior, the same for all.
    fresh = FraudModel().score_one({"amount": 1.0})
    assert np.allclose(result.scores[first_week], fresh)
    assert not np.allclose(result.scores[~first_week], fresh)


def test_a_shuffled_file_gives_the_same_scores(simulated: Path, tmp_path: Path) -> None:
    lines = simulated.read_text().splitlines()
    body = lines[1:]
    rng = np.random.default_rng(0)
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([lines[0], *(body[i] for i in rng.permutation(len(body)))]))
    a = run_backtest(read_transactions(simulated, PRESETS["handbook"]))
    b = run_backtest(read_transactions(shuffled, PRESETS["handbook"]))
    assert b.reordered and not a.reordered
    order = {tx: i for i, tx in enumerate(b.tx_ids)}
    # same event times, ties may be ordered differently: compare where timestamps are unique
    unique = np.concatenate([[True], np.diff(a.ts) > 0]) & np.concatenate(
        [np.diff(a.ts) > 0, [True]]
    )
    idx = np.flatnonzero(unique)[:2000]
    assert np.allclose(a.scores[idx], b.scores[[order[a.tx_ids[i]] for i in idx]])


def test_detection_beats_chance_on_the_simulator(simulated: Path) -> None:
    result = run_backtest(read_transactions(simulated, PRESETS["handbook"]))
    ev = evaluate(result, test_from=date(2018, 4, 20), test_to=date(2018, 4, 30))
    assert ev.test is not None and ev.overall is not None
    assert ev.test["roc_auc"] > 0.7
    assert ev.test["n"] < ev.overall["n"]
    assert len(ev.daily) == 30


def test_malformed_rows_are_counted_and_strict_stops(tmp_path: Path, simulated: Path) -> None:
    from replay.backtest import BacktestAborted

    lines = simulated.read_text().splitlines()[:200]
    fields = lines[4].split(",")
    fields[4] = "lots"
    lines[4] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    result = run_backtest(read_transactions(bad, PRESETS["handbook"]))
    assert [b.line for b in result.bad_rows] == [5]
    assert result.rows == 198
    with pytest.raises(BacktestAborted, match="line 5: amount"):
        run_backtest(read_transactions(bad, PRESETS["handbook"]), BacktestConfig(strict=True))


@pytest.mark.parametrize("strict", [False, True])
def test_collection_is_paused_for_the_run_and_restored_after(
    tmp_path: Path, simulated: Path, strict: bool
) -> None:
    from replay.backtest import BacktestAborted

    lines = simulated.read_text().splitlines()[:50]
    lines[-1] = lines[-1].replace(",", ";")  # the last row is malformed: strict stops there
    path = tmp_path / "short.csv"
    path.write_text("\n".join(lines) + "\n")
    collecting: list[bool] = []

    def source():  # type: ignore[no-untyped-def]
        for item in read_transactions(path, PRESETS["handbook"]):
            collecting.append(gc.isenabled())
            yield item

    assert gc.isenabled()
    try:
        result = run_backtest(source(), BacktestConfig(strict=strict))
    except BacktestAborted:
        assert strict
    else:
        assert not strict
        assert list(result.timings) == ["read", "learn", "features", "score", "decide"]
    assert len(collecting) == 49 and not any(collecting)
    assert gc.isenabled()
