"""Feature definitions and their reference, in-memory, event-time computation.

This module is the definition of every feature: any other store (Redis, later) must give the
same values on the same stream. Windows are in event time and half-open on the left:

* per card, over ``(t - w, t]`` — the current transaction counts;
* per terminal, over ``(t - d - w, t - d]`` where ``d`` is the label delay, so only transactions
  whose labels are known at scoring time enter the fraud risk.

A fraud label counts once it has been recorded with :meth:`record_label`; a transaction with no
fraud label is legitimate for the risk features. The store is idempotent on ``tx_id``: a
redelivered transaction is never counted twice and gets the features it got the first time (within
the ``dedup_seconds`` cache; after that they are recomputed without counting it again). Memory is
bounded by the longest retention: ``label_delay + longest terminal window`` of event time.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from models.records import FeatureVector, Transaction

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Windows (days), the label delay (days) and the night hours of the feature set."""

    card_windows: tuple[int, ...] = (1, 7, 30)
    terminal_windows: tuple[int, ...] = (1, 7, 30)
    label_delay_days: float = 7.0
    night_last_hour: int = 6
    distinct_terminals_days: int = 7
    dedup_seconds: float = DAY

    def __post_init__(self) -> None:
        if not self.card_windows or not self.terminal_windows:
            raise ValueError("feature windows must not be empty")
        if min(self.card_windows + self.terminal_windows) <= 0:
            raise ValueError("feature windows must be positive")
        if self.label_delay_days < 0:
            raise ValueError("label delay must not be negative")

    @property
    def card_retention(self) -> float:
        return max(*self.card_windows, self.distinct_terminals_days) * DAY

    @property
    def terminal_retention(self) -> float:
        return (self.label_delay_days + max(self.terminal_windows)) * DAY

    @property
    def names(self) -> tuple[str, ...]:
        """Every feature name, in the order models see them."""
        card = [f"card_count_{w}d" for w in self.card_windows]
        card += [f"card_mean_amount_{w}d" for w in self.card_windows]
        term = [f"terminal_count_{w}d" for w in self.terminal_windows]
        term += [f"terminal_risk_{w}d" for w in self.terminal_windows]
        longest = max(self.card_windows)
        extra = [
            f"card_amount_ratio_{longest}d",
            "card_hours_since_last",
            f"card_distinct_terminals_{self.distinct_terminals_days}d",
            f"card_known_frauds_{longest}d",
            "log_amount",
        ]
        return ("amount", "is_weekend", "is_night", *card, *term, *extra)


HANDBOOK_FEATURES: tuple[str, ...] = FeatureConfig().names[:15]


class FeatureStore(Protocol):
    """Where features are computed and their state kept (in memory, Redis, ...)."""

    config: FeatureConfig

    def update_one(self, tx: Transaction) -> FeatureVector:
        """Count ``tx`` (once) and return its features as of its event time."""
        ...

    def record_label(self, tx_id: str, is_fraud: bool) -> bool:
        """Record what became known about ``tx_id``; False if the store no longer holds it."""
        ...


@dataclass(slots=True)
class _Entry:
    ts: float
    card: str
    terminal: str
    fraud: bool = False


class _Timeline:
    """One entity's event times, and those of its known frauds, sorted.

    A terminal's features only count transactions and frauds, so a terminal keeps nothing else.
    Times sit in a ``array("d")``: one block of doubles, where a list would scatter a float object
    per payment over the heap, each bisection step a cache miss on entities not seen lately.
    ``key`` is the entity's id; cards list their terminals by this one string object, so counting
    a card's distinct terminals touches a few hot objects instead of one string per payment.
    """

    __slots__ = ("frauds", "key", "ts")

    def __init__(self, key: str) -> None:
        self.key = key
        self.ts: array[float] = array("d")
        self.frauds: list[float] = []

    def add(self, ts: float) -> None:
        times = self.ts
        if not times or times[-1] <= ts:
            times.append(ts)
        else:  # a late arrival (from another partition): insert in order
            times.insert(bisect_right(times, ts), ts)

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
            del self.ts[:cut]
        if self.frauds:
            cut = bisect_left(self.frauds, horizon)
            if cut:
                del self.frauds[:cut]


class _CardTimeline(_Timeline):
    """One card's transactions as parallel sequences sorted by event time.

    ``cum`` holds running sums of amounts (``cum[i]`` is the sum before position ``i``), so a
    window's count and sum are two bisections and a subtraction. ``frauds`` holds the event
    times of the transactions known to be fraudulent, sorted likewise.
    """

    __slots__ = ("amounts", "cum", "terminals", "tx_ids")

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.tx_ids: list[str] = []
        self.amounts: list[float] = []
        self.terminals: list[str] = []
        self.cum: array[float] = array("d", [0.0])

    def add_payment(self, ts: float, tx_id: str, amount: float, terminal: str) -> None:
        times = self.ts
        if not times or times[-1] <= ts:
            times.append(ts)
            self.tx_ids.append(tx_id)
            self.amounts.append(amount)
            self.terminals.append(terminal)
            cum = self.cum
            cum.append(cum[-1] + amount)
            return
        # A late arrival (from another partition): insert in order and rebuild the sums.
        at = bisect_right(times, ts)
        times.insert(at, ts)
        self.tx_ids.insert(at, tx_id)
        self.amounts.insert(at, amount)
        self.terminals.insert(at, terminal)
        base = self.cum[0]
        self.cum = array("d", [base])
        for value in self.amounts:
            self.cum.append(self.cum[-1] + value)

    def position(self, ts: float, tx_id: str) -> int:
        """Index of ``tx_id``, which sits among the entries with its event time."""
        at = bisect_right(self.ts, ts) - 1
        while at >= 0 and self.tx_ids[at] != tx_id:
            at -= 1
        return at

    def trim(self, horizon: float) -> None:
        cut = bisect_left(self.ts, horizon)
        if cut:
            del self.ts[:cut], self.tx_ids[:cut], self.amounts[:cut], self.terminals[:cut]
            del self.cum[:cut]
        if self.frauds:
            cut = bisect_left(self.frauds, horizon)
            if cut:
                del self.frauds[:cut]


class InMemoryFeatureStore:
    """The reference feature store: plain dictionaries, one process, event time."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self.names = self.config.names
        self._cards: dict[str, _CardTimeline] = {}
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
        self._night_last_hour = cfg.night_last_hour
        self._dedup_seconds = cfg.dedup_seconds
        self._card_retention = cfg.card_retention
        self._term_retention = cfg.terminal_retention
        self._retention = max(cfg.card_retention, cfg.terminal_retention)

    def __len__(self) -> int:
        """How many transactions the store holds."""
        return len(self._entries)

    def update_one(self, tx: Transaction) -> FeatureVector:
        tx_id = tx.tx_id
        cached = self._cache.get(tx_id)
        if cached is not None:
            return cached
        ts = tx.ts
        arrival = (ts, tx_id)
        entry = self._entries.get(tx_id)
        if entry is None:
            card_id, terminal_id = tx.card_id, tx.merchant_id
            entry = _Entry(ts, card_id, terminal_id)
            self._entries[tx_id] = entry
            self._arrivals.append(arrival)
            terminal = self._terminals.get(terminal_id)
            if terminal is None:
                terminal = self._terminals[terminal_id] = _Timeline(terminal_id)
            terminal.add(ts)
            card = self._cards.get(card_id)
            if card is None:
                card = self._cards[card_id] = _CardTimeline(card_id)
            card.add_payment(ts, tx_id, tx.amount, terminal.key)
        else:
            card, terminal = self._cards[entry.card], self._terminals[entry.terminal]
        vector = FeatureVector(tx_id, self._compute(tx_id, entry.ts, tx.amount, card, terminal))
        self._cache[tx_id] = vector
        self._cache_order.append(arrival)
        if ts > self._watermark:
            self._watermark = ts
            self._expire(ts)
        return vector

    def record_label(self, tx_id: str, is_fraud: bool) -> bool:
        entry = self._entries.get(tx_id)
        if entry is None:
            return False
        if entry.fraud != is_fraud:
            entry.fraud = is_fraud
            # Either timeline may already have trimmed the entry: its windows are shorter.
            card = self._cards.get(entry.card)
            if card is not None:
                card.mark(entry.ts, is_fraud)
            terminal = self._terminals.get(entry.terminal)
            if terminal is not None:
                terminal.mark(entry.ts, is_fraud)
        return True

    def _compute(
        self, tx_id: str, t: float, amount: float, card: _CardTimeline, terminal: _Timeline
    ) -> dict[str, float]:
        # The order of the keys is part of the definition: models iterate the features in it.
        seconds = int(t)
        weekday = (seconds // 86_400 + 3) % 7  # 1970-01-01 was a Thursday
        hour = (seconds % 86_400) // 3_600
        values: dict[str, float] = {
            "amount": amount,
            "is_weekend": 1.0 if weekday >= 5 else 0.0,
            "is_night": 1.0 if hour <= self._night_last_hour else 0.0,
        }

        # The card, over (t - w, t]: the current transaction counts.
        ts, cum = card.ts, card.cum
        end = len(ts) if ts[-1] <= t else bisect_right(ts, t)
        longest, distinct_window = self._longest, self._distinct_window
        lo_longest = lo_distinct = -1
        for window, count_name, mean_name in self._card_windows:
            lo = bisect_right(ts, t - window, 0, end)
            if window == longest:
                lo_longest = lo
            if window == distinct_window:
                lo_distinct = lo
            count = end - lo
            values[count_name] = float(count)
            values[mean_name] = (cum[end] - cum[lo]) / count if count else 0.0
        lo = lo_longest if lo_longest >= 0 else bisect_right(ts, t - longest, 0, end)
        previous = end - lo - 1  # the card's other payments in the longest window
        spent = cum[end] - cum[lo] - amount
        values[self._ratio_name] = amount / (spent / previous) if previous and spent > 0 else 1.0
        at = end - 1 if card.tx_ids[end - 1] == tx_id else card.position(t, tx_id)
        before = at - 1
        gap = t - ts[before] if before >= lo else longest
        values["card_hours_since_last"] = min(gap, longest) / 3_600.0
        if lo_distinct < 0:
            lo_distinct = bisect_right(ts, t - distinct_window, 0, end)
        values[self._distinct_name] = float(len(set(card.terminals[lo_distinct:end])))
        frauds = card.frauds
        values[self._frauds_name] = (
            float(bisect_right(frauds, t) - bisect_right(frauds, t - longest)) if frauds else 0.0
        )

        # The terminal, over (t - d - w, t - d]: only transactions whose labels are known.
        ts, frauds = terminal.ts, terminal.frauds
        upper = t - self._delay
        end = bisect_right(ts, upper)
        fraud_end = bisect_right(frauds, upper) if frauds else 0
        for window, count_name, risk_name in self._term_windows:
            count = end - bisect_right(ts, upper - window, 0, end) if end else 0
            values[count_name] = float(count)
            if count and fraud_end:
                values[risk_name] = (fraud_end - bisect_right(frauds, upper - window)) / count
            else:
                values[risk_name] = 0.0
        values["log_amount"] = math.log1p(amount)
        return values

    def _expire(self, now: float) -> None:
        """Drop what no window can reach any more, judged by the newest event time seen."""
        cache_horizon = now - self._dedup_seconds
        order = self._cache_order
        if order and order[0][0] < cache_horizon:
            cache = self._cache
            while order and order[0][0] < cache_horizon:
                cache.pop(order.popleft()[1], None)
        horizon = now - self._retention
        arrivals = self._arrivals
        if not arrivals or arrivals[0][0] >= horizon:
            return
        card_horizon = now - self._card_retention
        term_horizon = now - self._term_retention
        entries, cards, terminals = self._entries, self._cards, self._terminals
        while arrivals and arrivals[0][0] < horizon:
            entry = entries.pop(arrivals.popleft()[1], None)
            if entry is None:
                continue
            card = cards.get(entry.card)
            if card is not None:
                card.trim(card_horizon)
                if not card.ts:
                    del cards[entry.card]
            terminal = terminals.get(entry.terminal)
            if terminal is not None:
                terminal.trim(term_horizon)
                if not terminal.ts:
                    del terminals[entry.terminal]
