"""Thresholds, lists, rules and reason codes of the decision policy."""

from __future__ import annotations

import pytest

from models.errors import PolicyError
from models.features import FeatureConfig
from models.policy import Policy
from models.records import Action, Transaction

TX = Transaction("t1", 0.0, "card-1", "term-1", 50.0, "EUR")
FEATURES = {"card_count_1d": 3.0, "terminal_risk_7d": 0.5, "amount": 50.0}

DOC = """
version: "7"
thresholds: {review: 0.4, decline: 0.8}
lists:
  block_cards: [card-bad]
  allow_cards: [card-vip, card-bad]
  block_merchants: [term-bad]
  allow_merchants: [term-vip]
rules:
  - name: burst
    when: {feature: card_count_1d, op: ">=", value: 3}
    action: review
    priority: 20
    text: Many payments today
  - name: risky_terminal
    when: {feature: terminal_risk_7d, op: ">", value: 0.6}
    action: decline
    priority: 10
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.from_yaml(DOC, FeatureConfig().names)


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.0, Action.APPROVE), (0.399, Action.APPROVE), (0.4, Action.REVIEW), (0.8, Action.DECLINE)],
)
def test_thresholds(policy: Policy, score: float, expected: Action) -> None:
    assert policy.action_for(score) is expected


def test_rules_raise_the_action_and_say_why(policy: Policy) -> None:
    action, reasons = policy.decide(TX, 0.1, FEATURES, [("terminal_risk_7d", 1.5)])
    assert action is Action.REVIEW
    assert [r.code for r in reasons] == ["RULE_BURST", "MODEL_TERMINAL_RISK_7D"]
    assert reasons[0].text == "Many payments today"
    assert "50%" in reasons[1].text and reasons[1].weight == 1.5


def test_a_rule_never_lowers_the_model(policy: Policy) -> None:
    action, _ = policy.decide(TX, 0.95, FEATURES)
    assert action is Action.DECLINE


def test_rules_run_in_priority_order(policy: Policy) -> None:
    features = {**FEATURES, "terminal_risk_7d": 0.9}
    action, reasons = policy.decide(TX, 0.0, features)
    assert action is Action.DECLINE
    assert [r.code for r in reasons] == ["RULE_RISKY_TERMINAL", "RULE_BURST"]


@pytest.mark.parametrize(
    ("card", "merchant", "action", "code"),
    [
        ("card-bad", "term-1", Action.DECLINE, "LIST_BLOCKED_CARD"),  # block beats allow
        ("card-vip", "term-1", Action.APPROVE, "LIST_ALLOWED_CARD"),
        ("card-1", "term-bad", Action.DECLINE, "LIST_BLOCKED_MERCHANT"),
        ("card-1", "term-vip", Action.APPROVE, "LIST_ALLOWED_MERCHANT"),
    ],
)
def test_lists_decide_outright(
    policy: Policy, card: str, merchant: str, action: Action, code: str
) -> None:
    tx = Transaction("t", 0.0, card, merchant, 1.0, "EUR")
    got, reasons = policy.decide(tx, 0.99 if action is Action.APPROVE else 0.0, FEATURES)
    assert got is action and [r.code for r in reasons] == [code]


def test_version_names_the_document_and_its_content() -> None:
    a = Policy.from_yaml(DOC)
    b = Policy.from_yaml(DOC.replace("0.4", "0.45"))
    assert a.version.startswith("7+") and b.version.startswith("7+") and a.version != b.version


def test_the_packaged_default_loads_with_the_feature_names() -> None:
    policy = Policy.load(known_features=FeatureConfig().names)
    assert 0 < policy.review_at <= policy.decline_at <= 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("- a list", "must be a mapping"),
        ("thresholds: {review: 0.9, decline: 0.5}", "review <= decline"),
        ("thresholds: {review: high}", "must be numbers"),
        ("lists: {block_everyone: [1]}", "lists may only hold"),
        ("rules: [{when: {feature: nope, op: '>', value: 1}}]", "unknown feature 'nope'"),
        ("rules: [{when: {feature: amount, op: '~', value: 1}}]", "op must be one of"),
        ("rules: [{when: {feature: amount, op: '>'}}]", "value must be a number"),
        ("rules: [{when: {feature: amount, op: '>', value: 1}, action: maybe}]", "action"),
        ("rules: [1]", "must be a mapping"),
        ("{unbalanced", "not valid YAML"),
    ],
)
def test_malformed_policies_are_refused_with_the_reason(doc: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_yaml(doc, FeatureConfig().names)
