"""Learning with delayed labels.

The model scores every transaction before it learns anything about it, and learns a transaction
only once its label is known: a reported fraud or an analyst's verdict when it arrives, or
"no fraud reported" once the label delay has passed in event time. The learner is driven by the
clock of the stream (:meth:`advance`), never by the wall clock, so a backtest over a file and the
live system learn the same things in the same order.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping

from models.checkpoint import Checkpoint
from models.model import FraudModel
from models.records import Label

DAY = 86_400.0


# A scored transaction waiting for its label: (event time, tx_id, features).
_Pending = tuple[float, str, Mapping[str, float]]


class DelayedLabelLearner:
    """Holds scored transactions until their labels are known, then teaches the model.

    ``publish_every`` (event-time seconds) is how often a checkpoint is cut for the scorers;
    labels that arrive before their transaction are kept until it shows up (bounded by
    ``max_early_labels``).
    """

    def __init__(
        self,
        model: FraudModel,
        *,
        label_delay: float = 7 * DAY,
        publish_every: float = 3_600.0,
        max_early_labels: int = 100_000,
        version: int = 0,
    ) -> None:
        self.model = model
        self.label_delay = label_delay
        self.publish_every = publish_every
        self.max_early_labels = max_early_labels
        self.version = version
        self.now = float("-inf")
        self.learned = 0
        self.learned_fraud = 0
        self.unmatched_labels = 0
        # Held transactions by tx_id, and the same in arrival order; a transaction learned on
        # its label leaves the dict at once and the queue when it reaches the head (the dict
        # no longer holding that very entry is what marks it gone).
        self._pending: dict[str, _Pending] = {}
        self._queue: deque[_Pending] = deque()
        self._early: OrderedDict[str, bool] = OrderedDict()
        self._last_publish: float | None = None

    @property
    def pending(self) -> int:
        """Scored transactions whose labels are not known yet."""
        return len(self._pending)

    def observe(self, tx_id: str, ts: float, features: Mapping[str, float]) -> None:
        """Remember a scored transaction; learn it at once if its label came first."""
        if tx_id in self._pending:
            return  # redelivery: learn each transaction once
        early = self._early.pop(tx_id, None) if self._early else None
        if early is not None:
            self._learn(features, early)
            return
        item = (ts, tx_id, features)
        self._pending[tx_id] = item
        self._queue.append(item)

    def on_label(self, label: Label) -> bool:
        """A label became known: learn its transaction now. False if it is not held (yet)."""
        item = self._pending.pop(label.tx_id, None)
        if item is None:
            self.unmatched_labels += 1
            self._early[label.tx_id] = label.is_fraud
            while len(self._early) > self.max_early_labels:
                self._early.popitem(last=False)
            return False
        self._learn(item[2], label.is_fraud)
        return True

    def advance(self, now: float) -> int:
        """Move the event clock to ``now``: learn as legitimate what waited out the delay."""
        if now <= self.now:
            return 0
        self.now = now
        due = now - self.label_delay
        pending, queue = self._pending, self._queue
        count = 0
        while queue:
            item = queue[0]
            tx_id = item[1]
            if pending.get(tx_id) is not item:
                queue.popleft()  # learned on its label already
                continue
            if item[0] > due:
                break
            queue.popleft()
            del pending[tx_id]
            self._learn(item[2], False)
            count += 1
        return count

    def _learn(self, features: Mapping[str, float], is_fraud: bool) -> None:
        self.model.learn_one(features, is_fraud)
        self.learned += 1
        if is_fraud:
            self.learned_fraud += 1

    def checkpoint_due(self, now: float) -> bool:
        """Whether a checkpoint should be cut at event time ``now``."""
        if self._last_publish is None:
            return self.learned > 0
        return now - self._last_publish >= self.publish_every

    def checkpoint(self, now: float) -> Checkpoint:
        """Cut the next checkpoint version of the model (the caller serialises and ships it)."""
        self.version += 1
        self._last_publish = now
        return Checkpoint(
            version=self.version, created_at=now, trained_on=self.learned, model=self.model
        )
