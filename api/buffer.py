"""The recent decisions in memory: resume cursors, lookups, card history, the review queue, fan-out.

Every replica consumes the whole ``decisions`` topic and keeps the last ``retention`` records in
arrival order, each with its cursor (:mod:`api.decisions`): after a cursor ``V`` a client is owed
every record of partition ``p`` with offset ``>= V[p]``, and nothing else.

Per partition the buffer knows its ``floor``: every offset at or above it that this replica has
consumed is still in memory. A cursor below a floor means records were evicted (or were consumed
before this replica started): the client is told with a gap, then gets what is left.

Review and decline decisions are also kept in a separate, larger bound (``case_retention``), so
the review queue does not empty itself when approvals stream past at thousands a second.

Fan-out to live clients (:mod:`api.subscribers`) works in rounds. A client with no filter (the
console's usual stream) is a ``PlainSubscriber``: it holds only the number of the next record it
is owed, so taking in a record costs nothing per such client; a client with a filter has a
bounded queue of its own. A round wakes every client with news at once and each writes
everything it is owed in one send; rounds are spaced by at least 100 µs per client (25-150 ms),
so the number of writes a second depends on the clients, not on the decision rate, and clients
woken together share one joined frame.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from api.decisions import DecisionEntry, DecisionFilter, case_key, decision_entry
from api.subscribers import PlainSubscriber, Subscriber
from models.records import Action, mask_pan

__all__ = ["DecisionBuffer", "Replay"]

_CASE_ACTIONS = frozenset({Action.REVIEW.value, Action.DECLINE.value})
# Fan-out rounds are spaced by at least 100 µs per live client (25 ms to 150 ms). A round costs
# some 20 µs of CPU per client (a task wake-up and one socket write), so the rounds' share of a
# core stays about the same as clients come, up to 1,500; beyond, the spacing stays at 150 ms so
# that the lag it adds stays bounded. At 1,000 clients (100 ms) the measured p99 delivery lag is
# about 120 ms (``bench/sse.py``); 50 µs per client cost half as much CPU again for no gain.
FANOUT_SPACING_PER_CLIENT_S = 0.000_1
FANOUT_SPACING_MIN_S = 0.025
FANOUT_SPACING_MAX_S = 0.15


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resuming client gets first: how much it missed, and the buffered records owed."""

    missed: int | None
    gap: bool
    entries: list[DecisionEntry]


class DecisionBuffer:
    """The ring of recent decisions with its indexes and live subscribers (one event loop)."""

    def __init__(self, retention: int, case_retention: int) -> None:
        self.retention = retention
        self.case_retention = case_retention
        self._ring: deque[DecisionEntry] = deque()
        self._positions: dict[int, int] = {}
        self._parts: dict[int, str] = {}
        self._floor: dict[int, int] = {}
        self._by_tx: dict[str, DecisionEntry] = {}
        # Lists, not deques: a deque costs ~600 bytes even when it holds one entry.
        self._by_card: dict[str, list[DecisionEntry]] = {}
        self._cases: OrderedDict[str, DecisionEntry] = OrderedDict()
        self._subscribers: set[Subscriber | PlainSubscriber] = set()
        self._queued: set[Subscriber] = set()  # the clients that need each record offered
        self._round: list[asyncio.Future[None]] = []  # plain clients waiting for the next round
        self._news: list[Subscriber] = []
        self._added = 0
        self._rounds = 0
        # The newest records, as many as the largest plain client may be owed: independent of
        # ``retention``, as a queue of its own would be.
        self._recent: deque[DecisionEntry] = deque(maxlen=1)
        self._newest_key: tuple[int, int] | None = None
        self._newest: list[DecisionEntry] = []
        self._wake_handle: asyncio.Handle | None = None
        self._last_wake = -math.inf
        self._joined_key: tuple[DecisionEntry, DecisionEntry, int] | None = None
        self._joined = b""

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def positions(self) -> dict[int, int]:
        """The next offset this replica will read, per partition."""
        return dict(self._positions)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def added(self) -> int:
        """How many records were ever taken in: the number the next one will have."""
        return self._added

    def newest(self, count: int) -> list[DecisionEntry]:
        """The last ``count`` records in arrival order (the same list for the same question).

        Callers must not change the list: plain clients woken in one round all get it.
        """
        key = (self._added, count)
        if key != self._newest_key:
            ring = self._recent
            size = len(ring)
            self._newest_key = key
            self._newest = [ring[i] for i in range(size - min(count, size), size)]
        return self._newest

    @property
    def held_for_plain(self) -> int:
        """How many of the newest records are held for plain clients."""
        return len(self._recent)

    @property
    def rounds(self) -> int:
        """How many fan-out rounds have run."""
        return self._rounds

    def next_round(self, has_news: bool = False) -> asyncio.Future[None]:
        """A future resolved by the next fan-out round (one per waiting client: cancellable).

        ``has_news``: the caller is owed records already, so a round must come even if no
        record arrives.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(self._round) > 2 * len(self._subscribers) + 16:  # clients gone while no round came
            self._round = [w for w in self._round if not w.done()]
        self._round.append(waiter)
        if has_news and self._wake_handle is None:
            self._schedule_wake()
        return waiter

    def position(self, partition: int) -> int | None:
        return self._positions.get(partition)

    def mark_position(self, partition: int, offset: int) -> None:
        """Consumption of ``partition`` went past ``offset - 1`` (records skipped as invalid)."""
        if offset > self._positions.get(partition, -1):
            self._positions[partition] = offset
            self._parts[partition] = f"{partition:x}-{offset:x}"

    def start_partition(self, partition: int, offset: int) -> None:
        """Consumption of ``partition`` starts at ``offset``: nothing below it is held."""
        if partition in self._positions:
            return
        self._positions[partition] = offset
        self._parts[partition] = f"{partition:x}-{offset:x}"
        self._floor[partition] = offset

    def add(
        self, partition: int, offset: int, record: dict[str, Any], data: bytes
    ) -> DecisionEntry:
        """Take in one decision (from ``parse_decision``), index it and hand it to subscribers."""
        if partition not in self._positions:
            self.start_partition(partition, offset)
        self._positions[partition] = offset + 1
        self._parts[partition] = f"{partition:x}-{offset + 1:x}"
        cursor = ".".join(self._parts[p] for p in sorted(self._parts))
        entry = decision_entry(partition, offset, cursor, record, data)
        self._ring.append(entry)
        self._by_tx[entry.tx_id] = entry
        self._by_card.setdefault(entry.card_id, []).append(entry)
        if entry.action in _CASE_ACTIONS:
            self._cases.pop(entry.tx_id, None)
            self._cases[entry.tx_id] = entry
            while len(self._cases) > self.case_retention:
                self._cases.popitem(last=False)
        else:
            self._cases.pop(entry.tx_id, None)  # a later decision for the same payment wins
        while len(self._ring) > self.retention:
            self._evict()
        self._added += 1
        self._recent.append(entry)
        news = self._news
        for subscriber in self._queued:
            if subscriber.offer(entry) and not subscriber.noted:
                subscriber.noted = True
                news.append(subscriber)
        if (news or self._round) and self._wake_handle is None:
            self._schedule_wake()
        return entry

    @property
    def fanout_spacing_s(self) -> float:
        """The least time between two fan-out rounds, for the clients connected now."""
        spacing = len(self._subscribers) * FANOUT_SPACING_PER_CLIENT_S
        return min(FANOUT_SPACING_MAX_S, max(FANOUT_SPACING_MIN_S, spacing))

    def _schedule_wake(self) -> None:
        """Wake the clients with news soon: at once, or a round's spacing after the last round.

        Every event that arrives meanwhile joins the same round, so a client gets one write per
        round however many events came in, and the work per second is bounded by the number of
        clients, not by clients times events.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a synchronous caller): wake now
            self._wake()
            return
        delay = self._last_wake + self.fanout_spacing_s - loop.time()
        if delay > 0:
            self._wake_handle = loop.call_later(delay, self._wake, loop)
        else:
            self._wake_handle = loop.call_soon(self._wake, loop)

    def _wake(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._wake_handle = None
        self._rounds += 1
        if loop is not None:
            self._last_wake = loop.time()
        news, self._news = self._news, []
        for subscriber in news:
            subscriber.noted = False
            subscriber.wakeup.set()
        waiting, self._round = self._round, []
        for waiter in waiting:
            if not waiter.done():  # a client that went away cancelled its own
                waiter.set_result(None)

    def joined(self, events: list[DecisionEntry]) -> bytes:
        """The SSE frames of a plain subscriber's events, as one bytes object.

        Plain subscribers woken in the same round take the same run of the ring: the run is
        joined once and the same bytes are written to each of them.
        """
        key = (events[0], events[-1], len(events))
        if key != self._joined_key:
            self._joined_key, self._joined = key, b"".join(e.frame for e in events)
        return self._joined

    def _evict(self) -> None:
        old = self._ring.popleft()
        self._floor[old.partition] = old.offset + 1
        if self._by_tx.get(old.tx_id) is old:
            del self._by_tx[old.tx_id]
        history = self._by_card.get(old.card_id)
        if history and history[0] is old:
            del history[0]
            if not history:
                del self._by_card[old.card_id]

    def subscribe(
        self,
        wanted: DecisionFilter,
        capacity: int,
        cursor: Mapping[int, int] | None,
        on_drop: Callable[[int], None] | None = None,
    ) -> tuple[Subscriber | PlainSubscriber, Replay]:
        """A live subscription and, for a cursor, the records owed from memory — atomically."""
        if cursor is None:
            return self._join(wanted, capacity, None, on_drop), Replay(None, False, [])
        missed = 0
        for p, wanted_from in cursor.items():
            floor = self._floor.get(p)
            if floor is not None and wanted_from < floor:
                missed += floor - wanted_from
        entries = [
            e for e in self._ring if e.offset >= cursor.get(e.partition, -1) and wanted.matches(e)
        ]
        ahead = {p: o for p, o in cursor.items() if o > self._positions.get(p, o)}
        subscriber = self._join(wanted, capacity, ahead, on_drop)
        gap = missed > 0
        return subscriber, Replay(missed if gap and not wanted.active else None, gap, entries)

    def _join(
        self,
        wanted: DecisionFilter,
        capacity: int,
        ahead: Mapping[int, int] | None,
        on_drop: Callable[[int], None] | None,
    ) -> Subscriber | PlainSubscriber:
        subscriber: Subscriber | PlainSubscriber
        if wanted.active or ahead:
            subscriber = Subscriber(wanted, capacity, ahead, on_drop)
            self._queued.add(subscriber)
        else:
            if capacity > (self._recent.maxlen or 0):
                self._recent = deque(self._recent, maxlen=capacity)
            subscriber = PlainSubscriber(self, capacity, on_drop)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber | PlainSubscriber) -> None:
        self._subscribers.discard(subscriber)
        if isinstance(subscriber, Subscriber):
            self._queued.discard(subscriber)

    def get(self, tx_id: str) -> DecisionEntry | None:
        return self._by_tx.get(tx_id) or self._cases.get(tx_id)

    def card_history(self, card_id: str, limit: int) -> list[DecisionEntry]:
        """The card's decisions still in memory, newest first."""
        history = self._by_card.get(card_id) or self._by_card.get(mask_pan(card_id))
        if not history:
            return []
        out: list[DecisionEntry] = []
        for entry in reversed(history):
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def open_cases(self) -> list[DecisionEntry]:
        """Review and decline decisions not known to have a verdict, highest score first."""
        cases = [e for e in self._cases.values() if not e.verdict_seen]
        cases.sort(key=case_key)
        return cases

    def entries(self) -> Iterable[DecisionEntry]:
        return iter(self._ring)
