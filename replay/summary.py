"""Detection quality of a backtest: overall, per day, and on a test window (handbook protocol)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.metrics import card_precision_at_k, detection_report, handbook_test_mask
from replay.backtest import BacktestResult


@dataclass(frozen=True, slots=True)
class Evaluation:
    overall: dict[str, Any] | None
    test: dict[str, Any] | None
    test_window: str | None
    test_mask: NDArray[np.bool_] | None
    daily: list[dict[str, Any]]


def evaluate(
    result: BacktestResult,
    *,
    test_from: date | None = None,
    test_to: date | None = None,
    delay_days: int = 7,
    k: int = 100,
) -> Evaluation:
    """Metrics over every labelled transaction, the test window and each day."""
    labelled = result.labels >= 0
    if not labelled.any():
        return Evaluation(None, None, None, None, [])
    days = result.days()
    alerted = result.actions > 0
    y = result.labels.astype(np.int64)

    def report(mask: NDArray[np.bool_]) -> dict[str, Any]:
        return detection_report(
            days[mask], result.cards[mask], y[mask], result.scores[mask],
            result.amounts[mask], alerted[mask], k=k,
        )  # fmt: skip

    overall = report(labelled)
    origin = result.origin_date()
    test = window = mask = None
    if test_from is not None or test_to is not None:
        last = origin + timedelta(days=int(days.max()))
        start, end = test_from or origin, test_to or last
        if end < start:
            raise ValueError(f"--test-to {end} is before --test-from {start}")
        test_days = np.arange((start - origin).days, (end - origin).days + 1)
        mask = handbook_test_mask(days, result.cards, y, test_days, delay_days) & labelled
        window = f"{start.isoformat()}..{end.isoformat()}"
        test = report(mask) if mask.any() else None
    daily = _daily(result, days, y, alerted, labelled, origin, k)
    return Evaluation(overall, test, window, mask, daily)


def _daily(
    result: BacktestResult,
    days: NDArray[np.int64],
    y: NDArray[np.int64],
    alerted: NDArray[np.bool_],
    labelled: NDArray[np.bool_],
    origin: date,
    k: int,
) -> list[dict[str, Any]]:
    cp = card_precision_at_k(
        days[labelled], result.cards[labelled], y[labelled], result.scores[labelled], k=k
    )
    cp_by_day = dict(zip(cp.days, cp.per_day, strict=True))
    out: list[dict[str, Any]] = []
    order = np.argsort(days, kind="stable")
    bounds = np.searchsorted(days[order], np.arange(int(days.max()) + 2))
    for day in range(int(days.max()) + 1):
        idx = order[bounds[day] : bounds[day + 1]]
        idx = idx[labelled[idx]]
        if not len(idx):
            continue
        yd = y[idx]
        frauds = int(yd.sum())
        both = 0 < frauds < len(idx)
        day_report = (
            detection_report(
                days[idx],
                result.cards[idx],
                yd,
                result.scores[idx],
                result.amounts[idx],
                alerted[idx],
                k=k,
            )
            if both
            else {}
        )
        out.append(
            {
                "day": (origin + timedelta(days=day)).isoformat(),
                "n": len(idx),
                "frauds": frauds,
                "alerts": int(alerted[idx].sum()),
                "roc_auc": day_report.get("roc_auc"),
                "average_precision": day_report.get("average_precision"),
                "card_precision_at_k": cp_by_day.get(day),
            }
        )
    return out
