"""The app's wiring, in process (no lifespan, so no Kafka or Redis): CORS, schema, route labels."""

from __future__ import annotations

import httpx
import pytest

from api.app import create_app
from api.errors import ConfigError
from api.settings import ApiSettings

OFFLINE = {"kafka_bootstrap": "127.0.0.1:9", "redis_url": "redis://127.0.0.1:9/0"}


def client(**settings: object) -> httpx.AsyncClient:
    app = create_app(ApiSettings(**{**OFFLINE, "api_tokens": "t0ken:viewer", **settings}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.mark.parametrize(
    ("origins", "allowed"), [("", None), ("https://console.example", "https://console.example")]
)
async def test_cors_is_off_unless_origins_are_set(origins: str, allowed: str | None) -> None:
    async with client(api_cors_origins=origins) as c:
        answer = await c.options(
            "/v1/cases",
            headers={
                "Origin": "https://console.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
    assert answer.headers.get("access-control-allow-origin") == allowed


def test_every_v1_operation_documents_its_role_and_bearer_auth() -> None:
    spec = create_app(ApiSettings(**OFFLINE)).openapi()
    operations = [
        op for path, ops in spec["paths"].items() if path.startswith("/v1/") for op in ops.values()
    ]
    assert len(operations) == 7
    assert all(op["x-required-role"] in ("viewer", "analyst", "admin") for op in operations)
    assert all(op["security"] == [{"HTTPBearer": []}] for op in operations)
    assert not any(path.startswith(("/metrics", "/static")) for path in spec["paths"])


async def test_metrics_label_requests_by_template_never_by_raw_path() -> None:
    async with client() as c:
        await c.get("/v1/cards/4111111111111111/history")
        await c.get("/no/such/page")
        text = (await c.get("/metrics")).text
    assert 'route="/v1/cards/{card_id}/history",status="401"' in text
    assert 'route="unmatched",status="404"' in text
    assert "4111111111111111" not in text


def test_a_bad_configuration_stops_the_app_from_being_built() -> None:
    with pytest.raises(ConfigError, match="FRAUD_KAFKA_BOOTSTRAP"):
        create_app(ApiSettings(kafka_bootstrap=" ", redis_url="redis://x/0"))
    with pytest.raises(ConfigError, match="entry 1"):
        create_app(ApiSettings(**OFFLINE, api_tokens="no-role-here"))
