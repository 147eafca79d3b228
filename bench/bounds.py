"""How high card precision@k can go on the handbook's data, for any model.

The handbook's simulator makes frauds three ways (``TX_FRAUD_SCENARIO``, see the data's README):

1. a payment over 220 — the amount shows it;
2. every payment at a compromised terminal for 28 days — the card's ordinary payment, of an
   ordinary amount, at a terminal that looked like any other until it was compromised;
3. a third of a compromised card's payments for 14 days, at five times the amount — the card's
   own history shows it.

A fraud of kind 2 carries no sign of its own: the only evidence is earlier frauds at the same
terminal, and a fraud becomes known only ``delay`` after it happened (the handbook's protocol,
and the backtest's). So a kind-2 fraud is *knowable* at scoring time only once a kind-2 fraud at
its terminal happened at least ``delay`` before it; frauds of kinds 1 and 3 always are.

:func:`card_precision_bounds` measures card precision@k on the handbook's test protocol for two
rankings: the perfect one (every fraud first) and the best a model can do with what is knowable
(knowable frauds first, everything else after, in first-appearance order as the metric breaks
ties). A model that learns from labels after the delay can beat the second only by luck among the
frauds no evidence points to. ``python -m bench.bounds --data FILE`` prints both.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.errors import FraudstreamError
from models.metrics import card_precision_at_k, handbook_test_mask
from replay.readers import open_file

DAY = 86_400.0
COMPROMISED_TERMINAL = 2  # TX_FRAUD_SCENARIO of a fraud at a compromised terminal
COLUMNS = (
    "TX_DATETIME",
    "TX_TIME_SECONDS",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)


@dataclass(frozen=True, slots=True)
class Frauds:
    """A handbook file's columns that the bounds need, in file order."""

    origin: date  # the first payment's date: day 0
    seconds: NDArray[np.float64]
    days: NDArray[np.int64]
    cards: NDArray[Any]
    terminals: NDArray[Any]
    labels: NDArray[np.int8]
    scenarios: NDArray[np.int8]


def read_frauds(path: Path) -> Frauds:
    """Read the handbook's columns, ground truth included, from a CSV or CSV.gz file."""
    seconds: list[float] = []
    dates: list[date] = []
    cards: list[str] = []
    terminals: list[str] = []
    labels: list[int] = []
    scenarios: list[int] = []
    with open_file(path, text=True) as f:
        reader = csv.DictReader(f)
        missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f"{path}: not the handbook's layout, missing {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                seconds.append(float(row["TX_TIME_SECONDS"]))
                dates.append(date.fromisoformat(row["TX_DATETIME"][:10]))
                labels.append(int(row["TX_FRAUD"]))
                scenarios.append(int(row["TX_FRAUD_SCENARIO"]))
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
            cards.append(row["CUSTOMER_ID"])
            terminals.append(row["TERMINAL_ID"])
    if not dates:
        raise ValueError(f"{path}: no payments")
    origin = min(dates)
    return Frauds(
        origin=origin,
        seconds=np.asarray(seconds, dtype=np.float64),
        days=np.asarray([(d - origin).days for d in dates], dtype=np.int64),
        cards=np.asarray(cards),
        terminals=np.asarray(terminals),
        labels=np.asarray(labels, dtype=np.int8),
        scenarios=np.asarray(scenarios, dtype=np.int8),
    )


def knowable(frauds: Frauds, delay_days: float = 7.0) -> NDArray[np.bool_]:
    """Frauds that some evidence at scoring time points to (see the module's docstring)."""
    fraud = frauds.labels == 1
    result = fraud & (frauds.scenarios != COMPROMISED_TERMINAL)
    at_terminal = np.flatnonzero(fraud & (frauds.scenarios == COMPROMISED_TERMINAL))
    # Each compromised terminal's kind-2 frauds in time order: a fraud is knowable if the
    # terminal's earliest one happened at least the delay before it.
    order = at_terminal[np.lexsort((frauds.seconds[at_terminal], frauds.terminals[at_terminal]))]
    delay = delay_days * DAY
    first: dict[str, float] = {}
    for i in order.tolist():
        start = first.setdefault(frauds.terminals[i], float(frauds.seconds[i]))
        result[i] = frauds.seconds[i] - start >= delay
    return result


def card_precision_bounds(
    frauds: Frauds, test_from: date, test_to: date, *, delay_days: int = 7, k: int = 100
) -> dict[str, Any]:
    """Card precision@k of the perfect ranking and of the knowable one on a test window."""
    if test_to < test_from:
        raise ValueError(f"test window ends ({test_to}) before it starts ({test_from})")
    first, last = (test_from - frauds.origin).days, (test_to - frauds.origin).days
    mask = handbook_test_mask(
        frauds.days, frauds.cards, frauds.labels, np.arange(first, last + 1), delay_days
    )
    if not mask.any():
        raise ValueError(f"no payments in the test window {test_from}..{test_to}")
    days, cards, labels = frauds.days[mask], frauds.cards[mask], frauds.labels[mask]
    known = knowable(frauds, delay_days)[mask]

    def measure(scores: NDArray[np.float64]) -> dict[str, Any]:
        cp = card_precision_at_k(days, cards, labels, scores, k=k)
        return {
            "card_precision_at_k": round(cp.mean, 4),
            "per_day": {
                (frauds.origin + timedelta(days=d)).isoformat(): p
                for d, p in zip(cp.days, cp.per_day, strict=True)
            },
        }

    fraud_cards = set(cards[labels == 1].tolist())
    knowable_cards = set(cards[known].tolist())
    return {
        "test_window": f"{test_from.isoformat()}..{test_to.isoformat()}",
        "k": k,
        "delay_days": delay_days,
        "fraud_cards": len(fraud_cards),
        "knowable_fraud_cards": len(knowable_cards),
        "perfect": measure(labels.astype(np.float64)),
        "knowable": measure(known.astype(np.float64)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the handbook's CSV or CSV.gz")
    parser.add_argument("--test-from", type=date.fromisoformat, default=date(2018, 7, 25))
    parser.add_argument("--test-to", type=date.fromisoformat, default=date(2018, 7, 31))
    parser.add_argument("--delay-days", type=int, default=7)
    parser.add_argument("-k", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        frauds = read_frauds(args.data)
        bounds = card_precision_bounds(
            frauds, args.test_from, args.test_to, delay_days=args.delay_days, k=args.k
        )
    except (FraudstreamError, OSError, ValueError) as exc:
        print(f"bench.bounds: {exc}", file=sys.stderr)
        return 2
    print(
        f"card precision@{args.k}, test {bounds['test_window']}: "
        f"perfect ranking {bounds['perfect']['card_precision_at_k']:.3f}, "
        f"knowable with a {args.delay_days}-day label delay "
        f"{bounds['knowable']['card_precision_at_k']:.3f} "
        f"({bounds['knowable_fraud_cards']} of {bounds['fraud_cards']} fraudulent cards)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
