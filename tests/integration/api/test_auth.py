"""Every /v1 route (as the OpenAPI schema lists them) refuses a missing, wrong or weak token;
no token ever reaches a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from processor.logs import JsonFormatter
from tests.integration.api.conftest import ROLES, LiveApi
from tests.integration.api.helpers import decision, produce, sse, unique


def v1_routes() -> list[tuple[str, str, str]]:
    """(method, path, lowest role) of every /v1 operation, from the app's own OpenAPI schema."""
    offline = ApiSettings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9/0")
    spec = create_app(offline).openapi()
    return [
        (method.upper(), path, operation["x-required-role"])
        for path, operations in spec["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    ]


ROUTES = v1_routes()


def test_the_schema_lists_every_v1_route() -> None:
    assert {path for _, path, _ in ROUTES} == {
        "/v1/decisions/stream",
        "/v1/narratives/{tx_id}/stream",
        "/v1/decisions/{tx_id}",
        "/v1/cases",
        "/v1/cards/{card_id}/history",
        "/v1/decisions/{tx_id}/verdict",
        "/v1/settings",
    }


async def call(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    url = path.replace("{tx_id}", "some-tx").replace("{card_id}", "some-card")
    body = {"verdict": "fraud"} if method == "POST" else None
    async with client.stream(method, url, headers=headers, json=body) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aread()
        return response  # an SSE stream is closed unread: only the status matters here


@pytest.mark.parametrize(("method", "path", "role"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_tokens_and_roles_are_enforced(
    api: LiveApi, method: str, path: str, role: str
) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        for headers in (
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": f"Bearer {api.tokens['admin']}x"},
            {"Authorization": f"Basic {api.tokens['admin']}"},
            {"Authorization": api.tokens["admin"]},
        ):
            answer = await call(client, method, path, headers)
            assert answer.status_code == 401, headers
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        rank = ROLES.index(role)
        for weaker in ROLES[:rank]:
            answer = await call(client, method, path, api.headers(weaker))
            assert answer.status_code == 403, weaker
            assert role in answer.json()["detail"]
        for enough in ROLES[rank:]:
            answer = await call(client, method, path, api.headers(enough))
            assert answer.status_code not in (401, 403), enough


async def test_open_routes_need_no_token(api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/"):
            assert (await client.get(path)).status_code == 200, path
        index = await client.get("/static/index.html")
        assert index.status_code == 200 and "<html" in index.text.lower()


async def test_admin_reads_the_settings_without_secrets(api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        answer = await client.get("/v1/settings", headers=api.headers("admin"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["topic_decisions"] == api.decisions and body["api_client_buffer"] == 1_000
    assert "api_tokens" not in body
    assert all(token not in answer.text for token in api.tokens.values())


@pytest.fixture
def every_log_line() -> Iterator[list[str]]:
    """Each log record of the process (the API runs in a thread here), as the JSON logs print it."""
    lines: list[str] = []
    formatter = JsonFormatter()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    root = logging.getLogger()
    handler, level = Keep(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_no_token_reaches_the_logs(api: LiveApi, every_log_line: list[str]) -> None:
    row = decision(unique("tx"), merchant=unique("m"), action="review", score=0.7)
    wrong = f"viewer-{unique('guess')}"
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        async with sse(
            client, "/v1/decisions/stream", api.headers(), {"merchant": row["merchant_id"]}
        ) as s:
            await produce(api.settings.kafka_bootstrap, api.decisions, [row])
            await s.take(1)
        for role in ROLES:
            for method, path, _ in ROUTES:
                await call(client, method, path, api.headers(role))
        verdict_url = f"/v1/decisions/{row['tx_id']}/verdict"
        for _ in range(2):  # 201, then 409
            await client.post(
                verdict_url, headers=api.headers("analyst"), json={"verdict": "fraud"}
            )
        await client.post(verdict_url, headers=api.headers("analyst"), json={"verdict": 1})
        await client.get("/v1/cases", headers={"Authorization": f"Bearer {wrong}"})
        await client.get("/v1/cases", headers={"Authorization": f"Basic {wrong}"})
    text = "\n".join(every_log_line)
    assert '"who": "analyst-user"' in text or '"who":"analyst-user"' in text, "requests are logged"
    assert '"status":401' in text and '"status":409' in text
    for secret in [*api.tokens.values(), wrong]:
        assert secret not in text
