"""Detection metrics against small examples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    CardPrecisionAtK,
    alert_rate,
    average_precision,
    card_precision_at_k,
    detection_report,
    fraud_amount_caught,
    handbook_test_mask,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)
from models.records import Action

# Six transactions with ties across the classes, shared by the AUC, AP and curve tests.
#   frauds scored 0.4, 0.8, 0.9; legitimate ones 0.1, 0.4, 0.8
TIED_Y = [0, 0, 1, 1, 0, 1]
TIED_S = [0.1, 0.4, 0.4, 0.8, 0.8, 0.9]


@pytest.mark.parametrize(
    ("y", "s", "expected"),
    [
        # Fraud-vs-legitimate pairs, a win counting 1 and a tie 1/2:
        #   0.4 beats 0.1, ties 0.4, loses to 0.8  -> 1.5
        #   0.8 beats 0.1 and 0.4, ties 0.8        -> 2.5
        #   0.9 beats all three                    -> 3
        # U = 7 of 3 x 3 = 9 pairs.
        (TIED_Y, TIED_S, 7 / 9),
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),  # perfect ranking
        ([1, 1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5], 0.0),  # reversed ranking
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # one big tie: every pair half
        # 0.7 ties 0.7 (1/2) and beats 0.2 (1); 0.9 beats both (2): 3.5 of 4
        ([0, 1, 0, 1], [0.2, 0.7, 0.7, 0.9], 3.5 / 4),
    ],
)
def test_roc_auc(y: list[int], s: list[float], expected: float) -> None:
    assert roc_auc(np.array(y), np.array(s)) == expected


@pytest.mark.parametrize(
    ("y", "s", "expected"),
    [
        # Thresholds from high to low (tp, fp -> precision, recall):
        #   0.9: 1, 0 -> 1,   1/3
        #   0.8: 2, 1 -> 2/3, 2/3   (the tied 0.8s are one step)
        #   0.4: 3, 2 -> 3/5, 1
        #   0.1: recall does not move
        # AP = 1/3 x 1 + 1/3 x 2/3 + 1/3 x 3/5 = 15/45 + 10/45 + 9/45 = 34/45
        (TIED_Y, TIED_S, 34 / 45),
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),  # perfect ranking
        # Reversed: recall first moves at 0.2 (tp 1, fp 3: P 1/4, R 1/2), then at 0.1
        # (tp 2, fp 3: P 2/5, R 1). AP = 1/2 x 1/4 + 1/2 x 2/5 = 13/40.
        ([1, 1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5], 13 / 40),
        # One tie of everything: a single step to recall 1 at the prevalence, 2/5.
        ([0, 1, 0, 1, 0], [0.3] * 5, 2 / 5),
        ([1, 1], [0.2, 0.9], 1.0),  # only frauds: every threshold is perfectly precise
    ],
)
def test_average_precision(y: list[int], s: list[float], expected: float) -> None:
    assert average_precision(np.array(y), np.array(s)) == pytest.approx(expected, rel=1e-12)


def test_average_precision_does_not_interpolate() -> None:
    # Interpolated AP would lift the 2/3 step to 3/4 (the best precision at a higher recall):
    # frauds at ranks 1, 3, 4 -> P 1, 2/3, 3/4 at R 1/3, 2/3, 1: AP = (1 + 2/3 + 3/4) / 3.
    y, s = [1, 0, 1, 1], [0.9, 0.8, 0.7, 0.6]
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, rel=1e-12)


def test_roc_curve_steps_through_distinct_thresholds() -> None:
    # (tp, fp) at 0.9, 0.8, 0.4, 0.1: (1, 0), (2, 1), (3, 2), (3, 3); 3 frauds, 3 legitimate.
    fpr, tpr = roc_curve(TIED_Y, TIED_S)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])


def test_precision_recall_curve_in_scikit_learn_order() -> None:
    # From the lowest threshold to the highest, then the (precision 1, recall 0) end point.
    precision, recall = precision_recall_curve(TIED_Y, TIED_S)
    np.testing.assert_allclose(precision, [3 / 6, 3 / 5, 2 / 3, 1, 1])
    np.testing.assert_allclose(recall, [1, 1, 2 / 3, 1 / 3, 0])


@pytest.mark.parametrize(
    ("func", "y", "message"),
    [
        (roc_auc, [0, 0, 0], "no frauds"),
        (roc_auc, [1, 1, 1], "only frauds"),
        (roc_curve, [0, 0, 0], "no frauds"),
        (average_precision, [0, 0, 0], "at least one fraud"),
        (precision_recall_curve, [0, 0, 0], "at least one fraud"),
    ],
)
def test_single_class_is_an_error(func: object, y: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        func(y, [0.1, 0.2, 0.3])  # type: ignore[operator]


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 1], [0.1], "differ in length"),
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_malformed_inputs_are_errors(y: list[int], s: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(y, s)


# Three days, k = 2. Rows: (day, card, label, score).
CP_ROWS = [
    # Day 0: A .9 F, B .8 L, C .7 F -> top 2 A, B: 1 fraud / 2. A is detected.
    (0, "A", 1, 0.9),
    (0, "B", 0, 0.8),
    (0, "C", 1, 0.7),
    # Day 1: A is dropped. C max(.6, .2) = .6 with label max(1, 0) = 1; E .5 F, D .4 L
    # -> top 2 C, E: 2 / 2. C and E are detected.
    (1, "A", 1, 0.95),
    (1, "C", 1, 0.6),
    (1, "C", 0, 0.2),
    (1, "E", 1, 0.5),
    (1, "D", 0, 0.4),
    # Day 2: A and E are dropped, though scored highest; F is the only card left, fewer than k,
    # and still divided by k: 1 / 2.
    (2, "A", 1, 0.99),
    (2, "E", 1, 0.97),
    (2, "F", 1, 0.1),
]


def _columns(rows: list[tuple[int, str, int, float]]) -> tuple[np.ndarray, ...]:
    days, cards, y, s = zip(*rows, strict=True)
    return np.array(days), np.array(cards, dtype=object), np.array(y), np.array(s)


def test_card_precision_at_k_across_days() -> None:
    result = card_precision_at_k(*_columns(CP_ROWS), k=2)
    assert result == CardPrecisionAtK(
        per_day=(0.5, 1.0, 0.5),
        days=(0, 1, 2),
        # distinct fraudulent cards left after removal: {A, C}, {C, E}, {F}
        compromised_per_day=(2, 2, 1),
        mean=(0.5 + 1.0 + 0.5) / 3,
    )


def test_card_precision_at_k_ignores_row_order() -> None:
    shuffled = [CP_ROWS[i] for i in (10, 3, 0, 7, 5, 9, 1, 4, 8, 2, 6)]
    assert card_precision_at_k(*_columns(shuffled), k=2).per_day == (0.5, 1.0, 0.5)


@pytest.mark.parametrize("card_dtype", [object, str, np.int64])
def test_card_precision_at_k_accepts_any_card_ids(card_dtype: type) -> None:
    days, _, y, s = _columns(CP_ROWS)
    ids = np.array([10, 20, 30, 10, 30, 30, 50, 40, 10, 50, 60]).astype(card_dtype)
    assert card_precision_at_k(days, ids, y, s, k=2).per_day == (0.5, 1.0, 0.5)


@pytest.mark.parametrize(
    ("cards", "labels", "expected"),
    [
        (["x", "y"], [0, 1], 0.0),  # x appears first and wins the tie
        (["y", "x"], [1, 0], 1.0),  # y appears first and wins the tie
        ([7, 3], [1, 0], 1.0),  # by first appearance, not by id
    ],
)
def test_card_precision_at_k_breaks_ties_by_first_appearance(
    cards: list[object], labels: list[int], expected: float
) -> None:
    result = card_precision_at_k([0, 0], np.array(cards), labels, [0.5, 0.5], k=1)
    assert result.mean == expected


def test_card_precision_at_k_rejects_bad_k_and_empty_input() -> None:
    with pytest.raises(ValueError, match="k must be"):
        card_precision_at_k([0], ["a"], [1], [0.5], k=0)
    with pytest.raises(ValueError, match="at least one"):
        card_precision_at_k(np.array([], dtype=int), np.array([]), [], [], k=1)


# Test days 20 and 21, delay 7: a fraud on day D - 8 or earlier removes the card on day D.
MASK_ROWS = [
    # (day, card, label, kept)
    (12, "a", 1, False),  # not a test day
    (13, "b", 1, False),  # not a test day
    (20, "a", 0, False),  # a's fraud on 12 = 20 - 7 - 1: known by day 20
    (20, "b", 0, True),  # b's fraud on 13 = 20 - 7: not known yet on day 20...
    (21, "b", 0, False),  # ...but known on day 21 (13 = 21 - 7 - 1)
    (20, "c", 0, True),  # never defrauded
    (20, "d", 1, True),  # a fraud on the test day itself is what we test on
    (21, "d", 0, True),  # and is not known the day after either
    (5, "c", 0, False),  # not a test day
]


def test_handbook_test_mask_delay_boundary() -> None:
    days, cards, y, kept = zip(*MASK_ROWS, strict=True)
    mask = handbook_test_mask(np.array(days), np.array(cards), np.array(y), [20, 21], delay_days=7)
    assert mask.tolist() == list(kept)


@pytest.mark.parametrize(
    ("fraud_day", "delay", "kept"),
    [(12, 7, False), (13, 7, True), (19, 0, False), (20, 0, True), (14, 5, False), (15, 5, True)],
)
def test_handbook_test_mask_known_from_day_after_delay(
    fraud_day: int, delay: int, kept: bool
) -> None:
    mask = handbook_test_mask([fraud_day, 20], ["a", "a"], [1, 0], [20], delay_days=delay)
    assert bool(mask[-1]) is kept


@pytest.mark.parametrize(
    ("fraud_day", "train_days", "kept"),
    # test from day 20, delay 7, training 7 days: the training period starts on day 6
    [
        (6, 7, False),
        (5, 7, True),
        (5, None, False),
        (1, 10, True),
        (3, 10, False),
        (0, None, False),
    ],
)
def test_handbook_test_mask_counts_frauds_from_the_training_period(
    fraud_day: int, train_days: int | None, kept: bool
) -> None:
    mask = handbook_test_mask(
        [fraud_day, 20], ["a", "a"], [1, 0], [20], delay_days=7, train_days=train_days
    )
    assert bool(mask[-1]) is kept


def test_handbook_test_mask_treats_unknown_labels_as_not_fraud() -> None:
    mask = handbook_test_mask([1, 20], ["a", "a"], [-1, 0], [20], delay_days=7)
    assert mask.tolist() == [False, True]


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (["approve", "review", "decline", "approve"], 0.5),
        ([Action.APPROVE, Action.DECLINE, Action.APPROVE, Action.APPROVE], 0.25),
        (np.array([True, False, False]), 1 / 3),
        (["approve"], 0.0),
    ],
)
def test_alert_rate(actions: list[object], expected: float) -> None:
    assert alert_rate(np.array(actions)) == expected


def test_alert_rate_of_nothing_is_nan() -> None:
    assert math.isnan(alert_rate([]))


def test_fraud_amount_caught() -> None:
    # Fraud amounts 100 (alerted), 50 (missed), 50 (alerted): 150 of 200. The legitimate 999
    # that was alerted does not count.
    got = fraud_amount_caught([1, 1, 0, 1], [100.0, 50.0, 999.0, 50.0], [True, False, True, True])
    assert got == 0.75


def test_fraud_amount_caught_without_fraud_is_nan() -> None:
    assert math.isnan(fraud_amount_caught([0, 0], [10.0, 20.0], [True, False]))


def test_detection_report() -> None:
    days, cards, y, s = _columns(CP_ROWS)
    amounts = np.array([10.0, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110])
    alerted = s >= 0.9  # rows 0, 3, 8, 9: all frauds, amounts 10 + 40 + 90 + 100 = 240
    report = detection_report(days, cards, y, s, amounts, alerted, k=2)
    assert report["n"] == 11
    assert report["frauds"] == 8
    assert report["card_precision_at_k"] == pytest.approx(2 / 3)
    assert report["k"] == 2
    assert report["alert_rate"] == 4 / 11
    # all fraud: 10 + 30 + 40 + 50 + 70 + 90 + 100 + 110 = 500
    assert report["fraud_amount_caught"] == pytest.approx(240 / 500)
    assert report["roc_auc"] == roc_auc(y, s)
    assert report["average_precision"] == average_precision(y, s)


def test_detection_report_single_class_gives_none() -> None:
    report = detection_report([0, 0], ["a", "b"], [0, 0], [0.1, 0.2], [5.0, 5.0], [False, True])
    assert report["roc_auc"] is None
    assert report["average_precision"] is None
    assert report["fraud_amount_caught"] is None
    assert report["card_precision_at_k"] == 0.0
    assert report["alert_rate"] == 0.5


def test_detection_report_only_frauds_has_ap_but_no_auc() -> None:
    report = detection_report([0, 0], ["a", "b"], [1, 1], [0.1, 0.2], [5.0, 5.0], [True, True])
    assert report["roc_auc"] is None
    assert report["average_precision"] == 1.0


def test_detection_report_of_nothing() -> None:
    empty = np.array([], dtype=np.int64)
    report = detection_report(empty, empty, empty, empty.astype(float), empty, empty.astype(bool))
    assert report["n"] == 0
    assert all(report[key] is None for key in ("roc_auc", "average_precision", "alert_rate"))
