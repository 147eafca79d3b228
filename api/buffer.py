"""The recent decisions in memory: resume cursors, lookups, card history, the review queue, fan-out.

Every replica consumes the whole ``decisions`` topic and keeps the last ``retention`` records in
arrival order. A record's **cursor** is the vector of per-partition *next offsets* at that record
— what this replica had consumed of every partition once the record was in — written
``<partition>-<offset>`` in hex, joined by dots (``0-1a.1-f.2-20``). Offsets are the broker's, not
the replica's, so a cursor minted by one replica resumes exactly on any other: after a cursor ``V``
a client is owed every record of partition ``p`` with offset ``>= V[p]``, and nothing else.

Per partition the buffer knows its ``floor``: every offset at or above it that this replica has
consumed is still in memory. A cursor below a floor means records were evicted (or were consumed
before this replica started): the client is told with a gap, then gets what is left.

Review and decline decisions are also kept in a separate, larger bound (``case_retention``), so
the review queue does not empty itself when approvals stream past at thousands a second.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from models.errors import InvalidRecord
from models.records import Action, mask_pan

__all__ = [
    "DecisionBuffer",
    "DecisionEntry",
    "DecisionFilter",
    "Subscriber",
    "decode_cursor",
    "encode_cursor",
    "parse_decision",
]

_ACTIONS = frozenset(a.value for a in Action)
_CASE_ACTIONS = frozenset({Action.REVIEW.value, Action.DECLINE.value})
_CURSOR = re.compile(r"^[0-9a-f]{1,8}-[0-9a-f]{1,16}(?:\.[0-9a-f]{1,8}-[0-9a-f]{1,16}){0,4095}$")


def encode_cursor(positions: Mapping[int, int]) -> str:
    """``{0: 26, 1: 15}`` -> ``"0-1a.1-f"``."""
    return ".".join(f"{p:x}-{o:x}" for p, o in sorted(positions.items()))


def decode_cursor(text: str) -> dict[int, int]:
    """The positions a cursor stands for; ValueError when it is not one this API writes."""
    text = text.strip()
    if len(text) > 100_000 or not _CURSOR.match(text):
        raise ValueError("not a cursor this API issued")
    positions: dict[int, int] = {}
    for part in text.split("."):
        p, o = part.split("-")
        positions[int(p, 16)] = int(o, 16)
    return positions


def parse_decision(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """The decision record and its one-line JSON, card number masked; InvalidRecord if unusable."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRecord("not JSON") from None
    if not isinstance(record, dict):
        raise InvalidRecord("not a JSON object")
    for name in ("tx_id", "card_id", "merchant_id"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise InvalidRecord(f"{name}: missing or not text", field=name)
    if record.get("action") not in _ACTIONS:
        raise InvalidRecord("action: expected approve, review or decline", field="action")
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidRecord("score: not a finite number", field="score")
    rewrite = b"\n" in raw or b"\r" in raw
    for name in ("tx_id", "card_id", "merchant_id"):
        if not isinstance(record[name], str):
            record[name] = str(record[name])
            rewrite = True
    masked = mask_pan(record["card_id"])
    if masked != record["card_id"]:
        record["card_id"] = masked
        rewrite = True
    if rewrite:
        raw = orjson.dumps(record)
    return record, raw


@dataclass(slots=True, eq=False)
class DecisionEntry:
    """One decision as held in memory: the SSE frame, and what filters and indexes need."""

    partition: int
    offset: int
    cursor: str
    tx_id: str
    card_id: str
    merchant_id: str
    action: str
    score: float
    frame: bytes = field(repr=False)
    _data_start: int = field(repr=False, default=0)
    verdict_seen: bool = False

    @property
    def data(self) -> bytes:
        """The decision's JSON, as on the topic (card number masked)."""
        return self.frame[self._data_start : -2]

    def to_dict(self) -> dict[str, Any]:
        return orjson.loads(self.data)  # type: ignore[no-any-return]


def _entry(
    partition: int, offset: int, cursor: str, record: dict[str, Any], data: bytes
) -> DecisionEntry:
    head = b"id: " + cursor.encode() + b"\nevent: decision\ndata: "
    return DecisionEntry(
        partition=partition,
        offset=offset,
        cursor=cursor,
        tx_id=str(record["tx_id"]),
        card_id=str(record["card_id"]),
        merchant_id=str(record["merchant_id"]),
        action=record["action"],
        score=float(record["score"]),
        frame=head + data + b"\n\n",
        _data_start=len(head),
    )


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """What one client wants to see; None means anything."""

    actions: frozenset[str] | None = None
    min_score: float | None = None
    merchant: str | None = None
    card: str | None = None

    def matches(self, entry: DecisionEntry) -> bool:
        return (
            (self.actions is None or entry.action in self.actions)
            and (self.min_score is None or entry.score >= self.min_score)
            and (self.merchant is None or entry.merchant_id == self.merchant)
            and (self.card is None or entry.card_id == self.card)
        )

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.actions, self.min_score, self.merchant, self.card))


class Subscriber:
    """One live client: a bounded queue; when it overflows the pending events are dropped."""

    def __init__(
        self,
        wanted: DecisionFilter,
        capacity: int,
        skip_below: Mapping[int, int] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.wanted = wanted
        self.on_drop = on_drop
        self.capacity = capacity
        # Partitions where the client's cursor is ahead of this replica (it came from a faster
        # one): live records below these offsets were already delivered.
        self.skip_below = dict(skip_below or {})
        self.pending: deque[DecisionEntry] = deque()
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def offer(self, entry: DecisionEntry) -> None:
        if not self.wanted.matches(entry):
            return
        if self.skip_below and entry.offset < self.skip_below.get(entry.partition, -1):
            return
        if len(self.pending) >= self.capacity:
            self.dropped += len(self.pending)
            if self.on_drop is not None:
                self.on_drop(len(self.pending))
            self.pending.clear()
        self.pending.append(entry)
        self.wakeup.set()

    async def take(self) -> tuple[int, list[DecisionEntry]]:
        """Wait for news: (events dropped since the last call, events pending now)."""
        while not self.pending and not self.dropped:
            self.wakeup.clear()
            await self.wakeup.wait()
        dropped, self.dropped = self.dropped, 0
        events = list(self.pending)
        self.pending.clear()
        return dropped, events


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
        self._subscribers: set[Subscriber] = set()

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def positions(self) -> dict[int, int]:
        """The next offset this replica will read, per partition."""
        return dict(self._positions)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

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
        entry = _entry(partition, offset, cursor, record, data)
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
        for subscriber in self._subscribers:
            subscriber.offer(entry)
        return entry

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
    ) -> tuple[Subscriber, Replay]:
        """A live subscription and, for a cursor, the records owed from memory — atomically."""
        if cursor is None:
            subscriber = Subscriber(wanted, capacity, on_drop=on_drop)
            self._subscribers.add(subscriber)
            return subscriber, Replay(None, False, [])
        missed = 0
        for p, wanted_from in cursor.items():
            floor = self._floor.get(p)
            if floor is not None and wanted_from < floor:
                missed += floor - wanted_from
        entries = [
            e for e in self._ring if e.offset >= cursor.get(e.partition, -1) and wanted.matches(e)
        ]
        ahead = {p: o for p, o in cursor.items() if o > self._positions.get(p, o)}
        subscriber = Subscriber(wanted, capacity, ahead, on_drop)
        self._subscribers.add(subscriber)
        gap = missed > 0
        return subscriber, Replay(missed if gap and not wanted.active else None, gap, entries)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

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


def case_key(entry: DecisionEntry) -> tuple[float, str]:
    """The review queue's order: highest score first, then by payment id."""
    return (-entry.score, entry.tx_id)
