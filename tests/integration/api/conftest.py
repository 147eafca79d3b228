"""The analyst API under a real uvicorn, on the session's real Kafka broker and Redis server.

`api` is one server for the whole package (its own topics and Redis prefix); `start_api(**settings)`
starts another, stopped at the end of the test, for tests that need their own settings or their
own Redis. Each server runs in a thread of the test process, so tests can read its log records.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from tests.services.kafka import create_topics_sync
from tests.services.ports import free_port

ROLES = ("viewer", "analyst", "admin")


@dataclass
class LiveApi:
    """A running API: where it listens, its settings and topics, and a token per role."""

    base_url: str
    settings: ApiSettings
    tokens: dict[str, str]
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    def headers(self, role: str = "viewer", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}", **extra}

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def decisions(self) -> str:
        return self.settings.topic_decisions

    @property
    def narratives(self) -> str:
        return self.settings.topic_narratives

    @property
    def labels(self) -> str:
        return self.settings.topic_labels

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "the API did not stop within 15 s"


def launch(kafka_bootstrap: str, redis_url: str, partitions: int = 3, **overrides: Any) -> LiveApi:
    """Topics of its own, a server on a free port, back once /readyz says ready."""
    name = f"api{uuid.uuid4().hex[:10]}"
    topics = {f"{name}.decisions": partitions, f"{name}.narratives": 1, f"{name}.labels": 1}
    create_topics_sync(kafka_bootstrap, topics)
    tokens = {role: f"{role}-{secrets.token_urlsafe(18)}" for role in ROLES}
    values: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
        "topic_decisions": f"{name}.decisions",
        "topic_narratives": f"{name}.narratives",
        "topic_labels": f"{name}.labels",
        "redis_prefix": name,
        "api_tokens": ",".join(f"{tokens[r]}:{r}:{r}-user" for r in ROLES),
        "api_heartbeat_s": 1.0,
        "api_write_rate_per_min": 10_000,
    }
    values.update(overrides)
    settings = ApiSettings(**values)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    live = LiveApi(f"http://127.0.0.1:{port}", settings, tokens, server, thread)
    deadline = time.monotonic() + 30
    last = "not started"
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the API thread died while starting")
        try:
            answer = httpx.get(live.url("/readyz"), timeout=5)
            if answer.status_code == 200:
                return live
            last = answer.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.1)
    live.stop()
    raise TimeoutError(f"the API was not ready within 30 s: {last}")


@pytest.fixture(scope="package")
def api(kafka_bootstrap: str, redis_url: str) -> Iterator[LiveApi]:
    live = launch(kafka_bootstrap, redis_url)
    yield live
    live.stop()


@pytest.fixture
def start_api(kafka_bootstrap: str, redis_url: str) -> Iterator[Callable[..., LiveApi]]:
    started: list[LiveApi] = []

    def start(**overrides: Any) -> LiveApi:
        overrides.setdefault("redis_url", redis_url)
        live = launch(kafka_bootstrap, **overrides)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()
