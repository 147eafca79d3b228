"""A client that stops reading the live decisions while they flow: it gets a gap (or is cut off),
the other clients get every decision, and the API's memory stays bounded.

The API runs as ``fraudstream api`` in a process of its own (uvicorn on a free port), so its
resident memory is its own; the stalled client is a raw socket that reads the response's head and
then nothing until the feed is over: once the kernel's socket buffers between them are full (a
few thousand small decisions on loopback), the server must drop for it rather than buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.faults.checks import parse_metrics
from tests.faults.conftest import Record, Workers
from tests.faults.load import PacedLoad, Timing, TopicWatch, wait_members
from tests.faults.outcome import settle
from tests.integration.api.helpers import Event, sse
from tests.integration.harness import ROOT, Stack, handbook_rows
from tests.services.ports import free_port

pytestmark = pytest.mark.timeout(150)

RATE = 250.0
CLIENT_BUFFER = 100  # events a client may fall behind before it gets a gap
STREAM = "/v1/decisions/stream"
MEMORY_GROWTH_MAX = 96 * 2**20  # the API's resident memory may grow this much over the run


class ApiProcess:
    """``fraudstream api`` on a free port, reading the case's decisions topic."""

    def __init__(self, stack: Stack, log_dir: Path) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        settings = stack.settings()
        self.env = {
            **os.environ,
            **stack.env,
            "FRAUD_API_TOKENS": f"{self.token}:viewer:fault-suite",
            "FRAUD_API_CLIENT_BUFFER": str(CLIENT_BUFFER),
            "FRAUD_API_HEARTBEAT_S": "5",
            "FRAUD_TOPIC_DECISIONS": settings.topic_decisions,
        }
        self.log_path = log_dir / "api.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 40.0) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "processor.cli", "api", "--port", str(self.port)],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise TimeoutError(f"the API was not ready in {timeout:.0f}s")

    def resident_bytes(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def api_process(stack: Stack, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(stack, tmp_path).start()
    yield api
    api.stop()


class StalledClient:
    """An SSE request on a raw socket whose reader stops after the response's head."""

    def __init__(self, api: ApiProcess) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive window, so fewer events sit in the kernel between the two ends.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", api.port))
        request = (
            f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {api.token}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.received = b""
        while b"retry:" not in self.received:  # subscribed: the first line of the stream
            self.received += self.sock.recv(4096)
        self.cut_off = False

    def drain(self, total: int, timeout: float) -> tuple[int, list[dict[str, Any]]]:
        """Read on until the decisions and the gaps' counts add up to ``total`` (or EOF)."""
        self.sock.settimeout(1.0)
        deadline = time.monotonic() + timeout
        decisions, gaps = 0, list[dict[str, Any]]()
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                self.cut_off = True
                break
            self.received += chunk
            decisions, gaps = self.events()
            if decisions + sum(g["missed"] for g in gaps) >= total:
                break
        self.sock.close()
        return self.events()

    def events(self) -> tuple[int, list[dict[str, Any]]]:
        body = self.received.split(b"\r\n\r\n", 1)[-1]
        decisions, gaps = 0, list[dict[str, Any]]()
        for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
            lines = block.split(b"\n")
            if b"event: decision" in lines:
                decisions += 1
            elif b"event: gap" in lines:
                data = next(x for x in lines if x.startswith(b"data: "))
                gaps.append(orjson.loads(data[6:]))
        return decisions, gaps


async def read_all(stream: Any, into: list[Event]) -> None:
    while (event := await stream.next(timeout=120)) is not None:
        into.append(event)


async def test_a_stalled_sse_client_while_decisions_flow(
    stack: Stack, workers: Workers, api_process: ApiProcess, record: Record
) -> None:
    rows = handbook_rows(4_000)
    s = stack.settings()
    worker = workers.start(stack)
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    stalled = await asyncio.to_thread(StalledClient, api_process)
    readers: list[list[Event]] = [[], []]
    async with (
        httpx.AsyncClient(base_url=api_process.base_url, timeout=60) as client,
        sse(client, STREAM, api_process.headers) as first,
        sse(client, STREAM, api_process.headers) as second,
        TopicWatch(stack.bootstrap, s.topic_decisions) as decisions,
    ):
        rss_before = api_process.resident_bytes()
        tasks = [
            asyncio.create_task(read_all(stream, into))
            for stream, into in zip((first, second), readers, strict=True)
        ]
        flow = Timing(began=time.time())
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            60,
            what="every payment decided",
            alive=worker.alive,
            describe=workers.describe,
        )
        total = len(decisions.records)
        async with asyncio.timeout(60):
            while min(len(r) for r in readers) < total:
                await asyncio.sleep(0.05)
        flow.close()
        readers_lag = flow.ended - max(seen_.at for seen_ in decisions.records)
        rss_after = api_process.resident_bytes()
        received, gaps = await asyncio.to_thread(stalled.drain, total, 30)
        text = (await client.get("/metrics")).text  # after the gap: it is counted as it is sent
        for task in tasks:
            task.cancel()
        worker.stop()
        seen = list(decisions.records)
    metrics = parse_metrics(text)
    figures = await settle(stack, rows, seen, [flow])
    dropped = metrics.get("fraudstream_api_events_dropped_total", 0.0)
    record(
        fault="one SSE client stops reading while 4,000 decisions stream to it and two others",
        readers_all_in_s=round(readers_lag, 3),
        stalled_received=received,
        stalled_gaps=len(gaps),
        stalled_missed=sum(g["missed"] for g in gaps),
        stalled_cut_off=stalled.cut_off,
        api_rss_before_mb=round(rss_before / 2**20, 1),
        api_rss_after_mb=round(rss_after / 2**20, 1),
        api_metrics={
            k: v
            for k, v in metrics.items()
            if k.startswith(("fraudstream_api_events", "fraudstream_api_gaps", "fraudstream_api_b"))
            and "_created" not in k
        },
        **figures,
    )
    everything = Counter(seen_.value["tx_id"] for seen_ in seen)
    for got in readers:
        assert all(e.event == "decision" for e in got), "a reading client never gets a gap"
        assert Counter(e.json()["tx_id"] for e in got) == everything, "and gets every decision"
    assert gaps or stalled.cut_off, "the stalled client was not buffered for without bound"
    if not stalled.cut_off:
        assert all(g["reason"] == "slow" for g in gaps)
        assert received + sum(g["missed"] for g in gaps) == total, "each event: sent or counted"
        assert dropped == sum(g["missed"] for g in gaps)
        assert metrics['fraudstream_api_gaps_total{reason="slow"}'] == len(gaps)
    assert rss_after - rss_before < MEMORY_GROWTH_MAX, (rss_before, rss_after)
    assert metrics["fraudstream_api_buffered_decisions"] <= total
    assert figures["duplicates"] == 0
