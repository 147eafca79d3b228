"""The in-memory feature store as it was before it was tuned for speed, kept as an oracle.

``InMemoryFeatureStore`` has since changed how it keeps its timelines (arrays of doubles, lighter
terminal timelines, fewer lookups), never what it computes: on any stream, late arrivals,
redeliveries, labels and expiry included, both must give the same values, bit for bit, with the
keys in the same order (models iterate features in that order, so it changes their sums). Only
``test_features.py`` uses this; a deliberate change of a definition changes both files.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass

from models.features import DAY, FeatureConfig
from models.records import FeatureVector, Transaction


@dataclass(slots=True)
class _Entry:
    ts: float
    card: str
    terminal: str
    fraud: bool = False


class _Timeline:
    """One entity's transactions as parallel lists sorted by event time.

    ``cum`` holds running sums of amounts (``cum[i]`` is the sum before position ``i``), so a
    window's count and sum are two bisections and a subtraction. ``frauds`` holds the event
    times of the transactions known to be fraudulent, sorted likewise.
    """

    __slots__ = ("amounts", "cum", "frauds", "terminals", "ts", "tx_ids")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.tx_ids: list[str] = []
        self.amounts: list[float] = []
        self.terminals: list[str] = []
        self.cum: list[float] = [0.0]
        self.frauds: list[float] = []

    def add(self, ts: float, tx_id: str, amount: float, terminal: str) -> None:
        if not self.ts or self.ts[-1] <= ts:
            self.ts.append(ts)
            self.tx_ids.append(tx_id)
            self.amounts.append(amount)
            self.terminals.append(terminal)
            self.cum.append(self.cum[-1] + amount)
            return
        # A late arrival (from another partition): insert in order and rebuild the sums.
        at = bisect_right(self.ts, ts)
        self.ts.insert(at, ts)
        self.tx_ids.insert(at, tx_id)
        self.amounts.insert(at, amount)
        self.terminals.insert(at, terminal)
        base = self.cum[0]
        self.cum = [base]
        for value in self.amounts:
            self.cum.append(self.cum[-1] + value)

    def position(self, ts: float, tx_id: str) -> int:
        """Index of ``tx_id``, which sits among the entries with its event time."""
        at = bisect_right(self.ts, ts) - 1
        while at >= 0 and self.tx_ids[at] != tx_id:
            at -= 1
        return at

    def mark(self, ts: float, is_fraud: bool) -> None:
        at = bisect_left(self.frauds, ts)
        present = at < len(self.frauds) and self.frauds[at] == ts
        if is_fraud:
            self.frauds.insert(at, ts)
        elif present:
            del self.frauds[at]

    def trim(self, horizon: float) -> None:
        cut = bisect_left(self.ts, horizon)
        if cut:
            del self.ts[:cut], self.tx_ids[:cut], self.amounts[:cut], self.terminals[:cut]
            del self.cum[:cut]
        cut = bisect_left(self.frauds, horizon)
        if cut:
            del self.frauds[:cut]


class ListFeatureStore:
    """The store as first written: parallel lists, one timeline class for cards and terminals."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.names = self.config.names
        self._cards: dict[str, _Timeline] = {}
        self._terminals: dict[str, _Timeline] = {}
        self._entries: dict[str, _Entry] = {}
        self._arrivals: deque[tuple[float, str]] = deque()
        self._cache: dict[str, FeatureVector] = {}
        self._cache_order: deque[tuple[float, str]] = deque()
        self._watermark = -math.inf
        cfg = self.config
        longest = max(cfg.card_windows)
        self._card_windows = tuple(
            (w * DAY, f"card_count_{w}d", f"card_mean_amount_{w}d") for w in cfg.card_windows
        )
        self._term_windows = tuple(
            (w * DAY, f"terminal_count_{w}d", f"terminal_risk_{w}d") for w in cfg.terminal_windows
        )
        self._longest = longest * DAY
        self._ratio_name = f"card_amount_ratio_{longest}d"
        self._frauds_name = f"card_known_frauds_{longest}d"
        self._distinct_name = f"card_distinct_terminals_{cfg.distinct_terminals_days}d"
        self._distinct_window = cfg.distinct_terminals_days * DAY
        self._delay = cfg.label_delay_days * DAY

    def __len__(self) -> int:
        """How many transactions the store holds."""
        return len(self._entries)

    def update_one(self, tx: Transaction) -> FeatureVector:
        cached = self._cache.get(tx.tx_id)
        if cached is not None:
            return cached
        entry = self._entries.get(tx.tx_id)
        if entry is None:
            entry = _Entry(tx.ts, tx.card_id, tx.merchant_id)
            self._entries[tx.tx_id] = entry
            self._arrivals.append((tx.ts, tx.tx_id))
            self._timeline(self._cards, entry.card).add(tx.ts, tx.tx_id, tx.amount, entry.terminal)
            self._timeline(self._terminals, entry.terminal).add(tx.ts, tx.tx_id, 0.0, "")
        vector = FeatureVector(tx.tx_id, self._compute(tx.tx_id, entry, tx.amount))
        self._cache[tx.tx_id] = vector
        self._cache_order.append((tx.ts, tx.tx_id))
        if tx.ts > self._watermark:
            self._watermark = tx.ts
            self._expire()
        return vector

    def record_label(self, tx_id: str, is_fraud: bool) -> bool:
        entry = self._entries.get(tx_id)
        if entry is None:
            return False
        if entry.fraud != is_fraud:
            entry.fraud = is_fraud
            # Either timeline may already have trimmed the entry: its windows are shorter.
            for timeline in (self._cards.get(entry.card), self._terminals.get(entry.terminal)):
                if timeline is not None:
                    timeline.mark(entry.ts, is_fraud)
        return True

    @staticmethod
    def _timeline(index: dict[str, _Timeline], key: str) -> _Timeline:
        timeline = index.get(key)
        if timeline is None:
            timeline = index[key] = _Timeline()
        return timeline

    def _compute(self, tx_id: str, entry: _Entry, amount: float) -> dict[str, float]:
        t = entry.ts
        seconds = int(t)
        weekday = (seconds // 86_400 + 3) % 7  # 1970-01-01 was a Thursday
        hour = (seconds % 86_400) // 3_600
        values: dict[str, float] = {
            "amount": amount,
            "is_weekend": 1.0 if weekday >= 5 else 0.0,
            "is_night": 1.0 if hour <= self.config.night_last_hour else 0.0,
        }
        self._card_features(self._cards[entry.card], tx_id, t, amount, values)
        self._terminal_features(self._terminals[entry.terminal], t, values)
        values["log_amount"] = math.log1p(amount)
        return values

    def _card_features(
        self, card: _Timeline, tx_id: str, t: float, amount: float, values: dict[str, float]
    ) -> None:
        ts, cum = card.ts, card.cum
        end = len(ts) if ts[-1] <= t else bisect_right(ts, t)
        for window, count_name, mean_name in self._card_windows:
            lo = bisect_right(ts, t - window, 0, end)
            count = end - lo
            values[count_name] = float(count)
            values[mean_name] = (cum[end] - cum[lo]) / count if count else 0.0
        lo = bisect_right(ts, t - self._longest, 0, end)
        previous = end - lo - 1  # the card's other payments in the longest window
        spent = cum[end] - cum[lo] - amount
        values[self._ratio_name] = amount / (spent / previous) if previous and spent > 0 else 1.0
        at = end - 1 if card.tx_ids[end - 1] == tx_id else card.position(t, tx_id)
        before = at - 1
        gap = t - ts[before] if before >= lo else self._longest
        values["card_hours_since_last"] = min(gap, self._longest) / 3_600.0
        lo = bisect_right(ts, t - self._distinct_window, 0, end)
        values[self._distinct_name] = float(len(set(card.terminals[lo:end])))
        frauds = card.frauds
        values[self._frauds_name] = float(
            bisect_right(frauds, t) - bisect_right(frauds, t - self._longest)
        )

    def _terminal_features(self, terminal: _Timeline, t: float, values: dict[str, float]) -> None:
        ts, frauds = terminal.ts, terminal.frauds
        upper = t - self._delay
        end = bisect_right(ts, upper)
        fraud_end = bisect_right(frauds, upper)
        for window, count_name, risk_name in self._term_windows:
            count = end - bisect_right(ts, upper - window, 0, end)
            values[count_name] = float(count)
            if count and fraud_end:
                values[risk_name] = (fraud_end - bisect_right(frauds, upper - window)) / count
            else:
                values[risk_name] = 0.0

    def _expire(self) -> None:
        """Drop what no window can reach any more, judged by the newest event time seen."""
        now = self._watermark
        cache_horizon = now - self.config.dedup_seconds
        order = self._cache_order
        while order and order[0][0] < cache_horizon:
            self._cache.pop(order.popleft()[1], None)
        horizon = now - max(self.config.card_retention, self.config.terminal_retention)
        arrivals = self._arrivals
        if not arrivals or arrivals[0][0] >= horizon:
            return
        card_horizon = now - self.config.card_retention
        term_horizon = now - self.config.terminal_retention
        while arrivals and arrivals[0][0] < horizon:
            entry = self._entries.pop(arrivals.popleft()[1], None)
            if entry is None:
                continue
            self._trim(self._cards, entry.card, card_horizon)
            self._trim(self._terminals, entry.terminal, term_horizon)

    @staticmethod
    def _trim(index: dict[str, _Timeline], key: str, horizon: float) -> None:
        timeline = index.get(key)
        if timeline is None:
            return
        timeline.trim(horizon)
        if not timeline.ts:
            del index[key]
