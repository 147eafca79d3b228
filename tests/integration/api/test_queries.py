"""Reading the held decisions: one by tx_id, the review queue page by page, a card's history."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.integration.api.conftest import LiveApi
from tests.integration.api.helpers import decision, produce, produce_sentinels, sse, unique


async def test_queue_history_and_lookup(start_api: Callable[..., LiveApi]) -> None:
    live = start_api()
    card = unique("card")
    scores = [0.55, 0.91, 0.72, 0.99, 0.63, 0.80, 0.77]
    cases = [
        decision(unique("case"), card=card, action="review" if s < 0.9 else "decline", score=s)
        for s in scores
    ]
    approved = [decision(unique("ok"), card=card, score=0.01) for _ in range(3)]
    bootstrap = live.settings.kafka_bootstrap
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
        async with sse(client, "/v1/decisions/stream", live.headers()) as stream:
            await produce(bootstrap, live.decisions, [*cases, *approved])
            await stream.until(await produce_sentinels(bootstrap, live.decisions, 3))

        by_score = [c["tx_id"] for c in sorted(cases, key=lambda c: -c["score"])]
        pages, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/cases", headers=live.headers(), params=params)).json()
            pages.append([item["tx_id"] for item in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == [by_score[0:3], by_score[3:6], by_score[6:]]

        judged = by_score[1]
        answer = await client.post(
            f"/v1/decisions/{judged}/verdict",
            headers=live.headers("analyst"),
            json={"verdict": "legit"},
        )
        assert answer.status_code == 201
        first = (await client.get("/v1/cases", headers=live.headers())).json()
        assert [i["tx_id"] for i in first["items"]] == [t for t in by_score if t != judged]
        assert first["next_cursor"] is None

        bad = await client.get("/v1/cases", headers=live.headers(), params={"cursor": "%%%"})
        assert bad.status_code == 422

        history = await client.get(
            f"/v1/cards/{card}/history", headers=live.headers(), params={"limit": 4}
        )
        assert history.status_code == 200
        newest_first = [r["tx_id"] for r in reversed([*cases, *approved])]
        body = history.json()
        assert body["card_id"] == card
        # Within one partition (one card) the order is the order of production.
        assert [i["tx_id"] for i in body["items"]] == newest_first[:4]

        one = await client.get(f"/v1/decisions/{cases[0]['tx_id']}", headers=live.headers())
        assert one.status_code == 200
        assert one.json()["decision"]["score"] == 0.55 and one.json()["verdict"] is None
        missing = await client.get(f"/v1/decisions/{unique('nope')}", headers=live.headers())
        assert missing.status_code == 404 and "no decision" in missing.json()["detail"]
