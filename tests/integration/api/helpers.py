"""A small SSE client over httpx streaming, and producers of decisions and narrative chunks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

_serial = itertools.count()


def decision(
    tx_id: str,
    *,
    card: str = "card-1",
    merchant: str = "merchant-1",
    action: str = "approve",
    score: float = 0.1,
    pad: int = 0,
) -> dict[str, Any]:
    """A decision record as the worker publishes it (``pad`` adds bulk, for volume tests)."""
    record: dict[str, Any] = {
        "tx_id": tx_id,
        "ts": "2026-01-01T00:00:00.000Z",
        "card_id": card,
        "merchant_id": merchant,
        "amount": 12.5,
        "currency": "EUR",
        "score": score,
        "action": action,
        "reasons": [{"code": "model_score", "text": "the model's score", "weight": score}],
        "features": {"amount": 12.5, "card_count_1d": 1.0},
        "model_version": "m1",
        "policy_version": "p1",
        "decided_at": "2026-01-01T00:00:00.010Z",
        "latency_ms": 3.0,
    }
    if pad:
        record["pad"] = "x" * pad
    return record


class Producer:
    """JSON records to a topic, keyed by a field; ``send`` returns once the broker has them."""

    def __init__(self, bootstrap: str, topic: str, key: str = "card_id") -> None:
        self.topic = topic
        self.key = key
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")

    async def __aenter__(self) -> Producer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, records: Iterable[dict[str, Any]], partition: int | None = None) -> None:
        futures = [
            await self.producer.send(
                self.topic, orjson.dumps(r), key=str(r[self.key]).encode(), partition=partition
            )
            for r in records
        ]
        await self.producer.flush()
        await asyncio.gather(*futures)


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[dict[str, Any]],
    key: str = "card_id",
    partition: int | None = None,
) -> None:
    """Send the records (JSON) keyed by ``record[key]``, and wait until the broker has them all."""
    async with Producer(bootstrap, topic, key) as producer:
        await producer.send(records, partition)


async def produce_sentinels(bootstrap: str, topic: str, partitions: int, **fields: Any) -> set[str]:
    """One decision on every partition; once a reader has them all, it has all sent before."""
    ids = set()
    async with Producer(bootstrap, topic) as producer:
        for p in range(partitions):
            record = decision(unique(f"end{p}"), **fields)
            await producer.send([record], partition=p)
            ids.add(record["tx_id"])
    return ids


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return orjson.loads(self.data)


class SseStream:
    """One open SSE response, read event by event; ``retry`` and comments are noted."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.retry: int | None = None
        self.comments = 0
        self.last_id: str | None = None
        self._lines = response.aiter_lines()
        self.ended = False

    async def opened(self, timeout: float = 10.0) -> SseStream:
        """Wait for the ``retry:`` line the server sends once the subscription is in place."""
        async with asyncio.timeout(timeout):
            while self.retry is None:
                line = await anext(self._lines)
                self._field(line, {})
        return self

    def _field(self, line: str, pending: dict[str, list[str]]) -> None:
        if line.startswith(":"):
            self.comments += 1
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "retry":
            self.retry = int(value)
        elif name in ("event", "data", "id"):
            pending.setdefault(name, []).append(value)

    async def next(self, timeout: float = 15.0) -> Event | None:
        """The next event, or None once the server ended the stream."""
        pending: dict[str, list[str]] = {}
        async with asyncio.timeout(timeout):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    self.ended = True
                    return None
                if line == "":
                    if "data" in pending or "event" in pending:
                        event_id = pending["id"][-1] if "id" in pending else None
                        if event_id is not None:
                            self.last_id = event_id
                        return Event(
                            pending.get("event", ["message"])[-1],
                            "\n".join(pending.get("data", [])),
                            event_id,
                        )
                    continue
                self._field(line, pending)

    async def take(self, count: int, timeout: float = 20.0) -> list[Event]:
        events: list[Event] = []
        deadline = time.monotonic() + timeout
        while len(events) < count:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if event is None:
                break
            events.append(event)
        return events

    async def until(self, sentinels: set[str], timeout: float = 20.0) -> list[Event]:
        """Events until every decision in ``sentinels`` came (those are left out)."""
        events: list[Event] = []
        waiting = set(sentinels)
        deadline = time.monotonic() + timeout
        while waiting:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            assert event is not None, "the stream ended"
            tx_id = event.json().get("tx_id") if event.event == "decision" else None
            if tx_id in sentinels:
                waiting.discard(tx_id)
            else:
                events.append(event)
        return events


@asynccontextmanager
async def sse(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    params: Any = None,
) -> AsyncIterator[SseStream]:
    """Open an SSE stream (status checked), ready to read once the server has subscribed."""
    async with client.stream("GET", url, headers=headers, params=params) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SseStream(response)
        await stream.opened()
        yield stream


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_serial)}-{time.monotonic_ns() % 10**9}"
