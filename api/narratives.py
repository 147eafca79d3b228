"""Recent narratives in memory, chunk by chunk, for the per-case SSE stream.

Chunks of one case arrive on one partition (the topic is keyed by card), normally in ``seq``
order; at-least-once delivery can repeat one, so a repeated ``seq`` is ignored. A client gets the
chunks already here in ``seq`` order, then new ones as they come, and the stream ends once the
chunk marked ``done`` has been sent. The map holds the ``retention`` most recently updated
narratives, each capped at ``max_chunks`` chunks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from api.decisions import json_object
from models.errors import InvalidRecord
from models.records import mask_pan

__all__ = ["NarrativeStore", "parse_chunk"]


def parse_chunk(raw: bytes) -> dict[str, Any]:
    """A narrative chunk record, its text masked for card numbers; InvalidRecord if unusable."""
    record = json_object(raw)
    tx_id = record.get("tx_id")
    if isinstance(tx_id, bool) or not isinstance(tx_id, str | int) or tx_id == "":
        raise InvalidRecord("tx_id: missing or not text", field="tx_id")
    record["tx_id"] = str(tx_id)
    seq = record.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise InvalidRecord("seq: expected a whole number >= 0", field="seq")
    if not isinstance(record.get("done", False), bool):
        raise InvalidRecord("done: expected true or false", field="done")
    for name in ("delta", "text"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(f"{name}: expected text", field=name)
        if value:
            record[name] = mask_pan(value)
    return record


@dataclass(slots=True)
class Narrative:
    chunks: dict[int, bytes] = field(default_factory=dict)
    done_seq: int | None = None


class NarrativeStore:
    """Narratives by ``tx_id``, and the clients waiting on each (one event loop)."""

    def __init__(self, retention: int, max_chunks: int = 10_000) -> None:
        self.retention = retention
        self.max_chunks = max_chunks
        self._items: OrderedDict[str, Narrative] = OrderedDict()
        self._watchers: dict[str, set[asyncio.Event]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: dict[str, Any]) -> None:
        """Take in one chunk (from ``parse_chunk``) and wake the clients streaming that case."""
        tx_id, seq = record["tx_id"], record["seq"]
        narrative = self._items.get(tx_id)
        if narrative is None:
            narrative = self._items[tx_id] = Narrative()
            while len(self._items) > self.retention:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(tx_id)
        if seq in narrative.chunks or len(narrative.chunks) >= self.max_chunks:
            return
        narrative.chunks[seq] = orjson.dumps(record)
        if record.get("done"):
            narrative.done_seq = seq
        for event in self._watchers.get(tx_id, ()):
            event.set()

    def after(self, tx_id: str, seq: int) -> tuple[list[tuple[int, bytes]], bool]:
        """Chunks with a ``seq`` above ``seq`` in order, and whether the narrative is then done."""
        narrative = self._items.get(tx_id)
        if narrative is None:
            return [], False
        chunks = sorted((s, c) for s, c in narrative.chunks.items() if s > seq)
        last = chunks[-1][0] if chunks else seq
        done = narrative.done_seq is not None and last >= narrative.done_seq
        return chunks, done

    def watch(self, tx_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(tx_id, set()).add(event)
        return event

    def unwatch(self, tx_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(tx_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[tx_id]

    @property
    def watchers(self) -> int:
        return sum(len(w) for w in self._watchers.values())
