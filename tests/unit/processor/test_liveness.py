"""The worker's ``/healthz``: a real HTTP server in its thread, a real event loop in another."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from processor.metrics import Heartbeat, WorkerCollector, endpoint, start_server
from processor.runtime import Counters
from tests.services.ports import free_port

STALL_AFTER = 0.6


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def served(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[str, Heartbeat]]:
    heartbeat = Heartbeat(STALL_AFTER, every=0.05)
    heartbeat.start(loop)
    registry = CollectorRegistry()
    runtime = SimpleNamespace(counters=Counters(), scorer=None)
    registry.register(WorkerCollector(runtime, heartbeat))  # type: ignore[arg-type]
    port = free_port()
    server = start_server("127.0.0.1", port, endpoint(heartbeat, registry))
    yield f"http://127.0.0.1:{port}", heartbeat
    server.shutdown()
    server.server_close()


def stall_gauge(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "fraudstream_event_loop_stall_seconds":
            return float(family.samples[0].value)
    raise AssertionError(f"no stall gauge in {text!r}")


def test_healthz_fails_while_the_loop_is_blocked_and_recovers_after(
    served: tuple[str, Heartbeat], loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = served
    time.sleep(0.2)  # a few stamps
    ok = httpx.get(f"{base}/healthz", timeout=5)
    assert (ok.status_code, ok.text) == (200, "ok\n")
    assert stall_gauge(base) < STALL_AFTER

    blocked = threading.Event()
    loop.call_soon_threadsafe(lambda: (blocked.set(), time.sleep(3 * STALL_AFTER)))
    assert blocked.wait(5)
    time.sleep(2 * STALL_AFTER)
    # The server's thread still answers, but says the loop is stuck.
    stuck = httpx.get(f"{base}/healthz", timeout=5)
    assert stuck.status_code == 503
    assert stuck.text.startswith("event loop stalled for")
    assert stall_gauge(base) > STALL_AFTER
    assert any("event loop stalled" in r.getMessage() for r in caplog.records)

    deadline = time.monotonic() + 10
    while (again := httpx.get(f"{base}/healthz", timeout=5)).status_code != 200:
        assert time.monotonic() < deadline, again.text
        time.sleep(0.05)
    assert again.text == "ok\n"
    assert any("event loop running again" in r.getMessage() for r in caplog.records)


def test_a_heartbeat_never_started_goes_stale() -> None:
    now = [100.0]
    heartbeat = Heartbeat(30.0, clock=lambda: now[0])
    assert heartbeat.check() == (True, "ok")
    now[0] += 31.0
    alive, text = heartbeat.check()
    assert not alive
    assert text == "event loop stalled for 31 s (limit 30 s)"
    assert heartbeat.stalled_for() == 31.0


def test_other_paths_are_the_prometheus_exposition(served: tuple[str, Heartbeat]) -> None:
    base, _ = served
    response = httpx.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    assert "fraudstream_transactions_scored_total 0.0" in response.text
