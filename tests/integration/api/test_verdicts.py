"""Verdicts: stored once in Redis, audited, and sent on to the real `labels` topic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from tests.integration.api.conftest import LiveApi
from tests.integration.api.helpers import decision, produce, sse, unique
from tests.integration.harness import read_topic


async def known(api: LiveApi, client: httpx.AsyncClient, *rows: dict[str, object]) -> None:
    """Produce decisions and return once the API holds them (their SSE events came)."""
    merchant = str(rows[0]["merchant_id"])
    async with sse(client, "/v1/decisions/stream", api.headers(), {"merchant": merchant}) as s:
        await produce(api.settings.kafka_bootstrap, api.decisions, rows)
        assert len(await s.take(len(rows))) == len(rows)


async def test_a_verdict_becomes_a_label_once_and_a_change_is_audited(
    api: LiveApi, redis_client: aioredis.Redis
) -> None:
    row = decision(unique("tx"), merchant=unique("m"), action="review", score=0.8)
    tx = row["tx_id"]
    url = f"/v1/decisions/{tx}/verdict"
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        await known(api, client, row)
        first = await client.post(
            url, headers=api.headers("analyst"), json={"verdict": "fraud", "note": "card tested"}
        )
        assert first.status_code == 201, first.text
        stored = first.json()
        assert stored["verdict"] == "fraud" and stored["by"] == "analyst-user"
        assert stored["role"] == "analyst" and stored["previous"] is None

        again = await client.post(url, headers=api.headers("admin"), json={"verdict": "legit"})
        assert again.status_code == 409
        assert "change: true" in again.json()["detail"] and "fraud" in again.json()["detail"]

        changed = await client.post(
            url,
            headers=api.headers("admin"),
            json={"verdict": "legit", "note": "customer confirmed", "change": True},
        )
        assert changed.status_code == 201, changed.text
        assert changed.json()["previous"]["verdict"] == "fraud"
        assert changed.json()["by"] == "admin-user"

        detail = (await client.get(f"/v1/decisions/{tx}", headers=api.headers())).json()
        assert detail["decision"]["tx_id"] == tx and detail["verdict"]["verdict"] == "legit"

    def mine(records: list[dict[str, str]]) -> list[dict[str, str]]:
        return [r for r in records if r["tx_id"] == tx]

    everything = await read_topic(
        api.settings.kafka_bootstrap, api.labels, lambda r: len(mine(r)) >= 2, timeout=30
    )
    labels = mine(everything)
    assert [(r["tx_id"], r["label"], r["source"]) for r in labels] == [
        (tx, "fraud", "analyst"),
        (tx, "legit", "analyst"),
    ]
    assert all(r["known_at"].endswith("Z") for r in labels)

    audit = await redis_client.xrange(f"{api.settings.redis_prefix}:{{audit}}:verdicts")
    entries = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in audit]
    assert [(e["tx_id"], e["verdict"], e["who"], e["change"]) for e in entries] == [
        (tx, "fraud", "analyst-user", "0"),
        (tx, "legit", "admin-user", "1"),
    ]
    assert entries[0]["previous"] == "" and '"fraud"' in entries[1]["previous"]
    for token in api.tokens.values():
        assert all(token not in value for e in entries for value in e.values())


async def test_two_analysts_racing_get_one_201_and_one_409(api: LiveApi) -> None:
    row = decision(unique("tx"), merchant=unique("m"), action="decline", score=0.99)
    url = f"/v1/decisions/{row['tx_id']}/verdict"
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        await known(api, client, row)
        answers = await asyncio.gather(
            *(
                client.post(url, headers=api.headers("analyst"), json={"verdict": v})
                for v in ("fraud", "legit", "fraud", "legit")
            )
        )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"verdict": "maybe"}, "verdict"),
        ({"verdict": "fraud", "note": "x" * 1001}, "note"),
        ({"verdict": "fraud", "extra": 1}, "extra"),
        ({"note": "no verdict"}, "verdict"),
    ],
)
async def test_invalid_bodies_are_422_with_a_message(
    api: LiveApi, body: dict[str, object], fragment: str
) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        answer = await client.post(
            "/v1/decisions/whatever/verdict", headers=api.headers("analyst"), json=body
        )
    assert answer.status_code == 422
    assert fragment in answer.json()["message"]


async def test_a_verdict_on_an_unknown_payment_is_404(api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        answer = await client.post(
            f"/v1/decisions/{unique('nope')}/verdict",
            headers=api.headers("analyst"),
            json={"verdict": "fraud"},
        )
    assert answer.status_code == 404 and "no decision" in answer.json()["detail"]


async def test_writes_beyond_the_rate_limit_get_429_with_retry_after(
    start_api: Callable[..., LiveApi],
) -> None:
    live = start_api(api_write_rate_per_min=3)
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        codes = []
        for _ in range(4):
            answer = await client.post(
                f"/v1/decisions/{unique('tx')}/verdict",
                headers=live.headers("analyst"),
                json={"verdict": "fraud"},
            )
            codes.append(answer.status_code)
        assert codes == [404, 404, 404, 429]
        assert 1 <= int(answer.headers["Retry-After"]) <= 61
        other = await client.post(
            f"/v1/decisions/{unique('tx')}/verdict",
            headers=live.headers("admin"),
            json={"verdict": "fraud"},
        )
        assert other.status_code == 404, "the limit is per token"
