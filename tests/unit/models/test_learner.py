"""The delayed-label learner never learns a label before it is known."""

from __future__ import annotations

import random

import pytest

from models.learner import DAY, DelayedLabelLearner
from models.model import FraudModel
from models.records import Label


class RecordingModel(FraudModel):
    """A real model that also records what it learned and when the learner's clock said."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool]] = []

    def learn_one(self, features, is_fraud):  # type: ignore[no-untyped-def]
        self.seen.append((features["tx"], is_fraud))
        super().learn_one({"amount": features["amount"]}, is_fraud)


def test_legit_is_learned_only_after_the_delay() -> None:
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=7 * DAY)
    learner.observe("a", 0.0, {"tx": "a", "amount": 1.0})
    learner.advance(7 * DAY - 1)
    assert model.seen == []
    learner.advance(7 * DAY)
    assert model.seen == [("a", False)]
    assert learner.pending == 0


def test_a_fraud_label_is_learned_when_it_arrives() -> None:
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=7 * DAY)
    learner.observe("a", 0.0, {"tx": "a", "amount": 1.0})
    assert learner.on_label(Label("a", True, "analyst", 60.0))
    learner.advance(30 * DAY)
    assert model.seen == [("a", True)]  # learned once, as fraud, never again as legit


def test_a_label_before_its_transaction_waits_for_it() -> None:
    model = RecordingModel()
    learner = DelayedLabelLearner(model)
    assert not learner.on_label(Label("a", True, "chargeback", 0.0))
    learner.observe("a", 0.0, {"tx": "a", "amount": 1.0})
    assert model.seen == [("a", True)]


def test_redelivered_observations_are_learned_once() -> None:
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=DAY)
    for _ in range(3):
        learner.observe("a", 0.0, {"tx": "a", "amount": 1.0})
    learner.advance(2 * DAY)
    assert model.seen == [("a", False)]


def test_what_waits_out_the_delay_is_learned_in_arrival_order() -> None:
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=DAY)
    for name, ts in (("a", 0.0), ("b", 10.0), ("c", 20.0), ("d", 30.0)):
        learner.observe(name, ts, {"tx": name, "amount": 1.0})
    assert learner.on_label(Label("c", True, "analyst", 25.0))
    assert learner.pending == 3
    assert learner.advance(DAY + 10.0) == 2
    assert model.seen == [("c", True), ("a", False), ("b", False)]
    assert learner.advance(DAY + 30.0) == 1  # "c" was learned on its label, not again
    assert model.seen[-1] == ("d", False)
    assert learner.pending == 0 and learner.learned == 4


def test_a_later_transaction_observed_first_holds_back_those_behind_it() -> None:
    """Learning follows arrival order, as the stream delivered it: a transaction stamped later
    than the ones after it keeps them waiting until its own delay has passed."""
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=DAY)
    learner.observe("late-stamp", 100.0, {"tx": "late-stamp", "amount": 1.0})
    learner.observe("early-stamp", 0.0, {"tx": "early-stamp", "amount": 1.0})
    assert learner.advance(DAY + 50.0) == 0
    assert learner.advance(DAY + 100.0) == 2
    assert [tx for tx, _ in model.seen] == ["late-stamp", "early-stamp"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_model_never_sees_the_future(seed: int) -> None:
    """Drive a random stream; at every learn, the label must already be known on the clock."""
    rng = random.Random(seed)
    delay = 3 * DAY
    model = RecordingModel()
    learner = DelayedLabelLearner(model, label_delay=delay)
    truth: dict[str, tuple[float, bool, float]] = {}  # tx -> (ts, fraud, known_at)
    clock = 0.0
    reports: list[tuple[float, str]] = []
    learned_at: dict[str, float] = {}
    original = model.learn_one

    def spy(features, is_fraud):  # type: ignore[no-untyped-def]
        learned_at[features["tx"]] = learner.now
        original(features, is_fraud)

    model.learn_one = spy  # type: ignore[method-assign]
    for i in range(2_000):
        clock += rng.expovariate(1 / 600)
        while reports and reports[0][0] <= clock:
            known_at, tx_id = reports.pop(0)
            learner.advance(known_at)
            learner.on_label(Label(tx_id, True, "chargeback", known_at))
        learner.advance(clock)
        tx_id = f"t{i}"
        fraud = rng.random() < 0.05
        known_at = clock + (rng.uniform(0, delay) if fraud else delay)
        truth[tx_id] = (clock, fraud, known_at)
        learner.observe(tx_id, clock, {"tx": tx_id, "amount": rng.random()})
        if fraud:
            reports.append((known_at, tx_id))
            reports.sort()
    assert learned_at, "the stream was long enough to learn something"
    for tx_id, at in learned_at.items():
        ts, fraud, known_at = truth[tx_id]
        assert at >= known_at - 1e-9, f"{tx_id} learned at {at} before known at {known_at}"
        assert at >= ts
    assert dict(model.seen).keys() == learned_at.keys()
    assert all(fraud == truth[t][1] for t, fraud in model.seen)


def test_checkpoints_are_cut_on_event_time() -> None:
    learner = DelayedLabelLearner(FraudModel(), label_delay=DAY, publish_every=3600)
    assert not learner.checkpoint_due(0.0)  # nothing learned yet
    learner.observe("a", 0.0, {"amount": 1.0})
    learner.advance(DAY)
    assert learner.checkpoint_due(DAY)
    first = learner.checkpoint(DAY)
    assert (first.version, first.trained_on) == (1, 1)
    assert not learner.checkpoint_due(DAY + 3599)
    assert learner.checkpoint_due(DAY + 3600)
    assert learner.checkpoint(DAY + 3600).version == 2
