"""The scoring core shared by the live worker and the backtest: features -> score -> decision."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from models.checkpoint import Checkpoint
from models.features import FeatureStore
from models.policy import Policy
from models.records import Action, Decision, Reason, Transaction


class Scorer:
    """Scores transactions with the newest checkpoint it was given and decides with a policy.

    ``swap`` replaces the checkpoint between two transactions, so a newer model is used from the
    next decision on without a restart; every decision names the version that made it.
    """

    def __init__(
        self,
        store: FeatureStore,
        checkpoint: Checkpoint,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self._clock = clock
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.model_version = checkpoint.model_version

    def swap(self, checkpoint: Checkpoint) -> bool:
        """Use ``checkpoint`` from now on if it is newer than the current one."""
        if checkpoint.version <= self.checkpoint.version:
            return False
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.model_version = checkpoint.model_version
        return True

    def score(self, features: Mapping[str, float]) -> float:
        return self.model.score_one(features)

    def judge(
        self, tx: Transaction, features: Mapping[str, float], score: float
    ) -> tuple[Action, tuple[Reason, ...]]:
        """The policy's action on a scored transaction and its reasons, explained unless it is
        a plain approve. What :meth:`decide` records; a backtest needs only this."""
        policy = self.policy
        contributions = (
            self.model.explain_one(features, policy.explain_top)
            if score >= policy.review_at
            else []
        )
        action, reasons = policy.decide(tx, score, features, contributions)
        if action is not Action.APPROVE and not contributions:
            contributions = self.model.explain_one(features, policy.explain_top)
            action, reasons = policy.decide(tx, score, features, contributions)
        return action, reasons

    def decide(
        self, tx: Transaction, features: Mapping[str, float], score: float, started: float
    ) -> Decision:
        """Apply the policy to a scored transaction; explain it unless it is a plain approve."""
        action, reasons = self.judge(tx, features, score)
        now = self._clock()
        return Decision(
            tx_id=tx.tx_id,
            ts=tx.ts,
            card_id=tx.card_id,
            merchant_id=tx.merchant_id,
            amount=tx.amount,
            currency=tx.currency,
            score=score,
            action=action,
            reasons=reasons,
            features=features,
            model_version=self.model_version,
            policy_version=self.policy.version,
            decided_at=now,
            latency_ms=(now - started) * 1000.0,
        )

    def decide_one(self, tx: Transaction) -> Decision:
        """Features, score and decision for one transaction (counting it in the store once)."""
        started = self._clock()
        features = self.store.update_one(tx).values
        return self.decide(tx, features, self.score(features), started)
