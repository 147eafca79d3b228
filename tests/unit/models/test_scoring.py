"""The scorer: a decision records exactly what the policy judged, with the model's version."""

from __future__ import annotations

import random

import pytest

from models.checkpoint import Checkpoint
from models.features import FeatureConfig, InMemoryFeatureStore
from models.model import FraudModel
from models.policy import Policy
from models.records import Action, Transaction
from models.scoring import Scorer

POLICY = """
version: "3"
thresholds: {review: 0.3, decline: 0.6}
lists:
  block_cards: [card-bad]
rules:
  - name: burst
    when: {feature: card_count_1d, op: ">=", value: 3}
    action: review
"""
T0 = 1_522_540_800.0


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    model = FraudModel()
    rng = random.Random(4)
    names = FeatureConfig().names
    for _ in range(3_000):
        fraud = rng.random() < 0.1
        x = {name: rng.uniform(0, 1) for name in names}
        x["amount"] = rng.uniform(200, 900) if fraud else rng.uniform(1, 80)
        model.learn_one(x, fraud)
    store = InMemoryFeatureStore()
    policy = Policy.from_yaml(POLICY, store.names)
    return Scorer(store, Checkpoint(4, 0.0, 3_000, model), policy, clock=lambda: T0 + 1.0)


@pytest.mark.parametrize(
    ("card", "amount", "burst", "action"),
    [
        ("card-ok", 20.0, 1, Action.APPROVE),  # a plain approve: no reasons at all
        ("card-ok", 20.0, 4, Action.REVIEW),  # a rule, explained by the model too
        ("card-ok", 850.0, 1, Action.DECLINE),  # the model's score
        ("card-bad", 20.0, 1, Action.DECLINE),  # the block list
    ],
)
def test_a_decision_records_what_the_policy_judged(
    scorer: Scorer, card: str, amount: float, burst: int, action: Action
) -> None:
    tx = Transaction("t1", T0, card, "term-1", amount, "EUR")
    features = {name: 0.5 for name in scorer.store.names} | {
        "amount": amount,
        "card_count_1d": float(burst),
    }
    score = scorer.score(features)
    judged = scorer.judge(tx, features, score)
    decision = scorer.decide(tx, features, score, started=T0)
    assert judged[0] is action
    assert (decision.action, decision.reasons) == judged
    assert (decision.score, decision.model_version) == (score, "logreg-v4")
    assert decision.latency_ms == pytest.approx(1_000.0)
    if action is Action.APPROVE:
        assert judged[1] == ()
    elif card == "card-ok":
        assert any(r.code.startswith("MODEL_") for r in judged[1])
