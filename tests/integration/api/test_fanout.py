"""Fan-out to many clients at once: rounds coalesce events into one write, and lose none."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

import httpx

from tests.integration.api.conftest import LiveApi
from tests.integration.api.helpers import Producer, SseStream, decision, produce_sentinels, sse

STREAM = "/v1/decisions/stream"
PARTITIONS = 2
PLAIN, FILTERED, LATE = 30, 4, 4
BATCHES, BATCH = 30, 10
RISKY = ("review", "decline")


async def read_until_sentinels(stream: SseStream) -> list[str]:
    """The tx_ids of the decisions the stream brings until one sentinel from each partition."""
    got: list[str] = []
    sentinels = 0
    async with asyncio.timeout(60):
        while sentinels < PARTITIONS:
            event = await stream.next(timeout=60)
            assert event is not None, "the stream ended"
            assert event.event == "decision", f"no gap expected: {event}"
            tx_id = event.json()["tx_id"]
            if tx_id.startswith("end"):
                sentinels += 1
            else:
                got.append(tx_id)
    return got


async def test_every_client_gets_every_event_in_order(start_api: Callable[..., LiveApi]) -> None:
    live = start_api(partitions=PARTITIONS)
    bootstrap = live.settings.kafka_bootstrap
    assert bootstrap is not None
    sent: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    actions = ("approve", "review", "decline")
    limits = httpx.Limits(max_connections=PLAIN + FILTERED + LATE)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=live.base_url, timeout=60, limits=limits)
        )

        async def subscribe(params: dict[str, list[str]] | None = None) -> asyncio.Task[list[str]]:
            stream = await stack.enter_async_context(sse(client, STREAM, live.headers(), params))
            return asyncio.create_task(read_until_sentinels(stream))

        plain = [await subscribe() for _ in range(PLAIN)]
        picky = [await subscribe({"action": list(RISKY)}) for _ in range(FILTERED)]
        late: list[asyncio.Task[list[str]]] = []
        async with Producer(bootstrap, live.decisions) as producer:
            for n in range(BATCHES):
                rows = [decision(f"fan-{n}-{i}", action=actions[(n + i) % 3]) for i in range(BATCH)]
                await producer.send(rows, partition=n % PARTITIONS)
                sent[n % PARTITIONS] += [r["tx_id"] for r in rows]
                if n == BATCHES // 2:  # clients that join mid-stream
                    late += [await subscribe() for _ in range(LATE)]
                await asyncio.sleep(0.1)
        await produce_sentinels(bootstrap, live.decisions, PARTITIONS, action="review")
        everyone = await asyncio.gather(*plain)
        risky = await asyncio.gather(*picky)
        joined = await asyncio.gather(*late)
    wanted = {f"fan-{n}-{i}" for n in range(BATCHES) for i in range(BATCH) if (n + i) % 3}
    reference = everyone[0]
    for got in everyone:
        assert Counter(got) == Counter(sent[0] + sent[1]), "every event exactly once"
        for partition, order in sent.items():
            mine = set(order)
            assert [t for t in got if t in mine] == order, f"partition {partition} in order"
        assert got == reference, "every client sees the same order"
    for got in risky:
        assert got == [t for t in reference if t in wanted], "a filtered client: its own, in order"
    for got in joined:
        assert got and got == reference[len(reference) - len(got) :], "a late client: a tail"
