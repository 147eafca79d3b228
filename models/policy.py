"""The decision policy: thresholds on the model's score, declarative rules, reason codes.

A policy is a YAML document (see ``default_policy.yaml``)::

    version: "1"
    thresholds: {review: 0.5, decline: 0.9}
    lists:
      block_cards: ["c-123"]        # decline outright
      allow_merchants: ["m-9"]      # approve outright (a block list wins over an allow list)
    rules:
      - name: card_burst
        when: {feature: card_count_1d, op: ">=", value: 12}
        action: review              # a floor: the decision is at least this severe
        priority: 10                # lower runs first; the order of reasons follows it
        text: "Many payments on this card today"

Lists decide first (block, then allow); otherwise the model's thresholds give an action, and each
rule that matches raises it to at least the rule's action. Every list or rule hit is a reason, and
so are the features that pushed the score up the most. ``policy_version`` is the document's
``version`` and a digest of its content, so two different files never share a version.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from models.errors import PolicyError
from models.records import Action, Reason, Transaction

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_LISTS = ("block_cards", "block_merchants", "allow_cards", "allow_merchants")

# What each feature means to an analyst; the suffix ``_{n}d`` is filled in per window.
_FEATURE_TEXT = {
    "amount": "Amount {value:.2f}",
    "log_amount": "Amount is large (log {value:.2f})",
    "is_weekend": "Made on a weekend",
    "is_night": "Made at night",
    "card_count": "{value:.0f} payments on the card in {days} days",
    "card_mean_amount": "Card's mean amount over {days} days: {value:.2f}",
    "terminal_count": "{value:.0f} payments at the terminal in the {days} days before the delay",
    "terminal_risk": "Terminal's known fraud rate over {days} days: {value:.0%}",
    "card_amount_ratio": "Amount is {value:.1f}x the card's {days}-day mean",
    "card_hours_since_last": "{value:.1f} hours since the card's previous payment",
    "card_distinct_terminals": "{value:.0f} distinct terminals on the card in {days} days",
    "card_known_frauds": "{value:.0f} known frauds on the card in {days} days",
    "amount_band": "Amount in a range where fraud has been frequent",
    "terminal_risk_band": "Terminal with a history of confirmed fraud",
    "card_amount_ratio_band": "Amount far from the card's usual spending",
}


def feature_reason(name: str, value: float, weight: float) -> Reason:
    """A reason for a feature that raised the score: code ``MODEL_<FEATURE>``."""
    base, days = name, ""
    if "_band_" in name:  # a one-hot band: say what it means, not its edge
        head = name.split("_band_")[0]
        base = "card_amount_ratio_band" if head.startswith("card_amount_ratio") else f"{head}_band"
        if head.startswith("terminal_risk"):
            base = "terminal_risk_band"
    else:
        head, _, tail = name.rpartition("_")
        if tail.endswith("d") and tail[:-1].isdigit():
            base, days = head, tail[:-1]
    template = _FEATURE_TEXT.get(base, name.replace("_", " ") + ": {value:.3g}")
    return Reason(f"MODEL_{name.upper()}", template.format(value=value, days=days), weight)


@dataclass(frozen=True, slots=True)
class Rule:
    """A condition over one feature and the action it forces at least."""

    name: str
    feature: str
    op: str
    value: float
    action: Action
    priority: int
    text: str

    def matches(self, features: Mapping[str, float]) -> bool:
        got = features.get(self.feature)
        return got is not None and _OPS[self.op](got, self.value)


@dataclass(frozen=True, slots=True)
class Policy:
    """Thresholds, lists and rules; :meth:`decide` turns a score into an action and reasons."""

    version: str
    review_at: float
    decline_at: float
    rules: tuple[Rule, ...] = ()
    block_cards: frozenset[str] = frozenset()
    block_merchants: frozenset[str] = frozenset()
    allow_cards: frozenset[str] = frozenset()
    allow_merchants: frozenset[str] = frozenset()
    explain_top: int = 3

    def action_for(self, score: float) -> Action:
        if score >= self.decline_at:
            return Action.DECLINE
        if score >= self.review_at:
            return Action.REVIEW
        return Action.APPROVE

    def decide(
        self,
        tx: Transaction,
        score: float,
        features: Mapping[str, float],
        contributions: Sequence[tuple[str, float]] = (),
    ) -> tuple[Action, tuple[Reason, ...]]:
        """The action for a scored transaction and the reasons for it, strongest first."""
        if tx.card_id in self.block_cards:
            return Action.DECLINE, (Reason("LIST_BLOCKED_CARD", "Card is on the block list", 1.0),)
        if tx.merchant_id in self.block_merchants:
            reason = Reason("LIST_BLOCKED_MERCHANT", "Merchant is on the block list", 1.0)
            return Action.DECLINE, (reason,)
        if tx.card_id in self.allow_cards:
            return Action.APPROVE, (Reason("LIST_ALLOWED_CARD", "Card is on the allow list", 1.0),)
        if tx.merchant_id in self.allow_merchants:
            reason = Reason("LIST_ALLOWED_MERCHANT", "Merchant is on the allow list", 1.0)
            return Action.APPROVE, (reason,)
        action = self.action_for(score)
        reasons: list[Reason] = []
        for rule in self.rules:
            if rule.matches(features):
                reasons.append(Reason(f"RULE_{rule.name.upper()}", rule.text, 1.0))
                if rule.action.severity > action.severity:
                    action = rule.action
        for name, weight in contributions[: self.explain_top]:
            reasons.append(feature_reason(name, features.get(name, 0.0), weight))
        return action, tuple(reasons)

    @classmethod
    def from_yaml(cls, text: str, known_features: Iterable[str] | None = None) -> Policy:
        """Parse and check a policy document; :class:`PolicyError` names what is wrong."""
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise PolicyError("policy must be a mapping with 'version' and 'thresholds'")
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        version = f"{doc.get('version', '0')}+{digest}"
        thresholds = doc.get("thresholds") or {}
        try:
            review_at = float(thresholds.get("review", 0.5))
            decline_at = float(thresholds.get("decline", 0.9))
        except (TypeError, ValueError, AttributeError):
            raise PolicyError("thresholds.review and thresholds.decline must be numbers") from None
        if not 0.0 <= review_at <= decline_at <= 1.0:
            raise PolicyError("thresholds must satisfy 0 <= review <= decline <= 1")
        lists = doc.get("lists") or {}
        if not isinstance(lists, dict) or set(lists) - set(_LISTS):
            raise PolicyError(f"lists may only hold {', '.join(_LISTS)}")
        known = set(known_features) if known_features is not None else None
        rules = [_parse_rule(i, raw, known) for i, raw in enumerate(doc.get("rules") or [])]
        rules.sort(key=lambda r: r.priority)
        return cls(
            version=version,
            review_at=review_at,
            decline_at=decline_at,
            rules=tuple(rules),
            explain_top=int(doc.get("explain_top", 3)),
            **{name: frozenset(str(v) for v in lists.get(name) or []) for name in _LISTS},
        )

    @classmethod
    def load(cls, path: Path | None = None, known_features: Iterable[str] | None = None) -> Policy:
        """A policy from a file, or the packaged default when ``path`` is None."""
        if path is None:
            text = resources.files("models").joinpath("default_policy.yaml").read_text()
        else:
            try:
                text = path.read_text()
            except OSError as exc:
                raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
        return cls.from_yaml(text, known_features)


def _parse_rule(index: int, raw: Any, known: set[str] | None) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping")
    name = str(raw.get("name") or f"rule_{index}")
    when = raw.get("when")
    if not isinstance(when, dict):
        raise PolicyError(f"{where} ({name}): 'when' must be {{feature, op, value}}")
    feature = when.get("feature")
    if not isinstance(feature, str) or (known is not None and feature not in known):
        raise PolicyError(f"{where} ({name}): unknown feature {feature!r}")
    op = when.get("op")
    if op not in _OPS:
        raise PolicyError(f"{where} ({name}): op must be one of {' '.join(_OPS)}")
    try:
        value = float(when["value"])
        action = Action(raw.get("action", "review"))
        priority = int(raw.get("priority", 100))
    except (KeyError, TypeError, ValueError):
        raise PolicyError(
            f"{where} ({name}): value must be a number, action approve|review|decline, "
            "priority an integer"
        ) from None
    text = str(raw.get("text") or f"{feature} {op} {value:g}")
    return Rule(name, feature, op, value, action, priority, text)
