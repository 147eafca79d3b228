"""The SSE streams as a console sees them: filters, exact resume, slow clients, narratives."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

import httpx

from tests.integration.api.conftest import LiveApi
from tests.integration.api.helpers import (
    Event,
    Producer,
    decision,
    produce,
    produce_sentinels,
    sse,
    unique,
)

STREAM = "/v1/decisions/stream"


async def test_each_client_gets_what_its_filters_ask_for(api: LiveApi) -> None:
    merchant, other = unique("m"), unique("m")
    pan = "4111111111111111"
    rows = []
    for n in range(24):
        action = ("approve", "review", "decline")[n % 3]
        rows.append(
            decision(
                unique("tx"),
                card=pan if n % 4 == 0 else f"card-{n % 5}",
                merchant=merchant if n % 2 else other,
                action=action,
                score=round(n / 24, 3),
            )
        )
    wanted = {
        "risky": (
            {"action": ["review", "decline"], "min_score": 0.5, "merchant": merchant},
            lambda r: (
                r["action"] != "approve" and r["score"] >= 0.5 and r["merchant_id"] == merchant
            ),
        ),
        "pan": ({"card": pan}, lambda r: r["card_id"] == pan),
        "merchant": ({"merchant": other}, lambda r: r["merchant_id"] == other),
    }
    async with (
        httpx.AsyncClient(base_url=api.base_url, timeout=30) as client,
        sse(client, STREAM, api.headers(), wanted["risky"][0]) as risky,
        sse(client, STREAM, api.headers(), wanted["pan"][0]) as by_card,
        sse(client, STREAM, api.headers(), wanted["merchant"][0]) as by_merchant,
    ):
        await produce(api.settings.kafka_bootstrap, api.decisions, rows)
        for name, stream in (("risky", risky), ("pan", by_card), ("merchant", by_merchant)):
            expected = [r["tx_id"] for r in rows if wanted[name][1](r)]
            events = await stream.take(len(expected))
            assert all(e.event == "decision" and e.id for e in events)
            assert sorted(e.json()["tx_id"] for e in events) == sorted(expected), name
            if name == "pan":
                assert {e.json()["card_id"] for e in events} == {"411111******1111"}
                assert all(pan not in e.data for e in events)
        assert risky.retry == 3000


async def test_resume_with_last_event_id_gives_every_event_exactly_once(api: LiveApi) -> None:
    merchant = unique("m")
    first = [decision(unique("tx"), card=f"c{n % 7}", merchant=merchant) for n in range(30)]
    second = [decision(unique("tx"), card=f"c{n % 7}", merchant=merchant) for n in range(30)]
    bootstrap = api.settings.kafka_bootstrap
    params = {"merchant": merchant}
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        async with sse(client, STREAM, api.headers(), params) as stream:
            await produce(bootstrap, api.decisions, first)
            seen = await stream.take(12)
            resume_from = stream.last_id
            early_cursor = seen[4].id
        # Disconnected: these arrive while the client is away.
        await produce(bootstrap, api.decisions, second)
        ends = await produce_sentinels(bootstrap, api.decisions, 3, merchant=merchant)
        assert resume_from is not None and early_cursor is not None
        headers = api.headers(**{"Last-Event-ID": resume_from})
        async with sse(client, STREAM, headers, params) as resumed:
            rest = await resumed.until(ends)
        # A fetch-less client passes the cursor as a query parameter instead.
        query = {**params, "last_event_id": early_cursor}
        async with sse(client, STREAM, api.headers(), query) as again:
            replayed = await again.until(ends)
    everyone = [r["tx_id"] for r in [*first, *second]]
    got = [e.json()["tx_id"] for e in [*seen, *rest]]
    assert Counter(got) == Counter(everyone), "every event exactly once across the reconnect"
    assert all(e.event == "decision" for e in rest), "no gap: nothing was evicted"
    assert [e.json()["tx_id"] for e in replayed] == got[5:]


async def test_an_evicted_cursor_gets_a_retention_gap_first(
    start_api: Callable[..., LiveApi],
) -> None:
    small = start_api(api_retention_events=20, partitions=2)
    rows = [decision(unique("tx"), card=f"c{n % 5}") for n in range(50)]
    async with httpx.AsyncClient(base_url=small.base_url, timeout=30) as client:
        async with sse(client, STREAM, small.headers()) as live:  # to know all 50 are in
            await produce(small.settings.kafka_bootstrap, small.decisions, rows)
            assert len(await live.take(50)) == 50
        headers = small.headers(**{"Last-Event-ID": "0-0.1-0"})
        async with sse(client, STREAM, headers) as stream:
            gap = await stream.next()
            assert gap is not None and gap.event == "gap" and gap.id is None
            assert gap.json() == {"missed": 30, "reason": "retention"}
            replay = await stream.take(20)
    assert {e.json()["tx_id"] for e in replay} <= {r["tx_id"] for r in rows}
    assert len({e.json()["tx_id"] for e in replay}) == 20
    async with httpx.AsyncClient(base_url=small.base_url, timeout=30) as client:
        bad = await client.get(STREAM, headers=small.headers(**{"Last-Event-ID": "nonsense"}))
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]


async def test_a_client_that_stops_reading_gets_a_gap_while_others_get_everything(
    start_api: Callable[..., LiveApi],
) -> None:
    # Dropped events are counted when the stalled client is next served; a send timeout longer
    # than the run keeps it from being cut off instead (a slower broker makes the run longer).
    live = start_api(api_client_buffer=300, partitions=2, api_send_timeout_s=600.0)
    bootstrap = live.settings.kafka_bootstrap
    burst, most = 100, 20_000
    rows: list[dict[str, object]] = []
    async with (
        httpx.AsyncClient(base_url=live.base_url, timeout=60) as client,
        httpx.AsyncClient(base_url=live.base_url, timeout=60) as slow,
        sse(slow, STREAM, live.headers()) as stalled,
        sse(client, STREAM, live.headers()) as reader,
    ):
        got: list[Event] = []

        async def read_on() -> None:
            while event := await reader.next(timeout=60):
                got.append(event)

        reading = asyncio.create_task(read_on())
        # A steady stream a live reader keeps up with, until the stalled client's socket
        # buffers and its queue are full and the server starts dropping (~1,000 events here).
        async with Producer(bootstrap, live.decisions) as producer:
            while len(rows) < most:
                new = [decision(f"bulk-{len(rows) + n}", pad=4_000) for n in range(burst)]
                await producer.send(new)
                rows += new
                async with asyncio.timeout(30):  # the reader has it all before the next burst
                    while len(got) < len(rows):
                        await asyncio.sleep(0.01)
                if "dropped_total 0.0" not in await metrics(client):
                    break
        ends = await produce_sentinels(bootstrap, live.decisions, 2)
        async with asyncio.timeout(30):
            while not ends <= {e.json()["tx_id"] for e in got}:
                await asyncio.sleep(0.05)
        reading.cancel()
        got = [e for e in got if e.json()["tx_id"] not in ends]
        # The stalled client reads again only now: what was in flight, then the gap, then on.
        events = await stalled.until(ends, timeout=60)
        text = await metrics(client)
    total = len(rows)
    assert all(e.event == "decision" for e in got), "the reading client lost nothing"
    assert Counter(e.json()["tx_id"] for e in got) == Counter(r["tx_id"] for r in rows)
    gaps = [e.json() for e in events if e.event == "gap"]
    received = [e for e in events if e.event == "decision"]
    assert gaps and all(g["reason"] == "slow" for g in gaps)
    assert len(received) + sum(g["missed"] for g in gaps) == total, "every event: sent or counted"
    dropped = sum(g["missed"] for g in gaps)
    assert f"fraudstream_api_events_dropped_total {float(dropped)}" in text
    assert f'fraudstream_api_gaps_total{{reason="slow"}} {float(len(gaps))}' in text


async def metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


async def test_a_narrative_streams_in_order_and_ends(api: LiveApi) -> None:
    tx = unique("tx")
    bootstrap = api.settings.kafka_bootstrap

    def chunk(seq: int, delta: str, done: bool = False) -> dict[str, object]:
        record: dict[str, object] = {
            "tx_id": tx,
            "seq": seq,
            "delta": delta,
            "done": done,
            "source": "llm",
            "model": "test-model",
            "card_id": "c1",
        }
        if done:
            record |= {"text": "The card was used at night. Twice.", "usage": {"total_tokens": 9}}
        return record

    await produce(
        bootstrap, api.narratives, [chunk(0, "The card "), chunk(1, "was used "), chunk(2, "at ")]
    )
    url = f"/v1/narratives/{tx}/stream"
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        async with sse(client, url, api.headers()) as stream:
            early = await stream.take(3)
            later = [
                chunk(3, "night."),
                chunk(1, "was used "),
                chunk(4, " Twice."),
                chunk(5, "", True),
            ]
            other = {**chunk(3, "not this one"), "tx_id": unique("tx")}
            await produce(bootstrap, api.narratives, [other, *later])
            rest = await stream.take(10)
            assert stream.ended, "the stream ends after the chunk marked done"
        headers = api.headers(**{"Last-Event-ID": "3"})
        async with sse(client, url, headers) as resumed:
            tail = await resumed.take(10)
            assert resumed.ended
    events = [*early, *rest]
    assert [e.event for e in events] == ["chunk"] * 6
    assert [e.id for e in events] == ["0", "1", "2", "3", "4", "5"]
    assert "".join(e.json()["delta"] for e in events) == "The card was used at night. Twice."
    assert events[-1].json()["done"] is True and events[-1].json()["usage"] == {"total_tokens": 9}
    assert [e.id for e in tail] == ["4", "5"]


async def test_heartbeats_keep_an_idle_stream_alive(api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        url = f"/v1/narratives/{unique('quiet')}/stream"
        async with sse(client, url, api.headers()) as stream:
            with contextlib.suppress(TimeoutError):
                await stream.next(timeout=1.5)
            assert stream.comments >= 1, "a comment line every api_heartbeat_s (1 s here)"
