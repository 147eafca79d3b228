"""Probes and metrics as an operator meets them, and the `fraudstream api` command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.integration.api.conftest import LiveApi
from tests.integration.harness import ROOT
from tests.services.ports import free_port, wait_until
from tests.services.redis import RedisServer


async def test_readyz_names_redis_when_it_is_down_and_recovers(
    start_api: Callable[..., LiveApi], tmp_path: Path
) -> None:
    with RedisServer(data_dir=tmp_path / "redis") as own_redis:
        live = start_api(redis_url=own_redis.url)
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:
            assert (await client.get("/readyz")).json() == {
                "status": "ready",
                "kafka": "ok",
                "redis": "ok",
            }
            own_redis.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503
            body = down.json()
            assert body["status"] == "unavailable" and body["kafka"] == "ok"
            assert body["redis"] != "ok" and "Error" in body["redis"]
            assert (await client.get("/healthz")).json() == {"status": "ok"}, "alive all the same"
            verdict = await client.post(
                "/v1/decisions/any/verdict",
                headers=live.headers("analyst"),
                json={"verdict": "legit"},
            )
            assert verdict.status_code == 503 and "Redis" in verdict.json()["detail"]
            own_redis.start()
            again = await client.get("/readyz")
            assert again.status_code == 200, again.text


async def test_metrics_count_requests_by_route_and_status(api: LiveApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        await client.get("/v1/cases", headers=api.headers())
        await client.get("/v1/cases")
        await client.get("/v1/cards/some-card/history", headers=api.headers())
        text = (await client.get("/metrics")).text
    assert 'fraudstream_api_requests_total{method="GET",route="/v1/cases",status="200"}' in text
    assert 'fraudstream_api_requests_total{method="GET",route="/v1/cases",status="401"}' in text
    assert 'route="/v1/cards/{card_id}/history"' in text, "route templates, not raw paths"
    assert "some-card" not in text
    for name in (
        "fraudstream_api_sse_clients",
        "fraudstream_api_events_streamed_total",
        "fraudstream_api_consumer_lag",
        "fraudstream_api_buffered_decisions",
    ):
        assert name in text, name


def test_the_command_serves_and_stops_on_sigint(kafka_bootstrap: str, redis_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FRAUD_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRAUD_REDIS_URL": redis_url,
        "FRAUD_API_PORT": str(port),
        "FRAUD_API_TOKENS": "cli-secret-token:viewer",
        "FRAUD_LOG_JSON": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "processor.cli", "api"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: _healthy(port) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    assert f"http://localhost:{port}/" in out
    assert "cli-secret-token" not in out + err


def test_the_command_refuses_to_start_without_kafka(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "processor.cli", "api"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and time.monotonic() - began < 30
    assert "FRAUD_KAFKA_BOOTSTRAP" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
