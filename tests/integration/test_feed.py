"""Feeding Kafka on a real broker: Ctrl-C stops ``fraudstream replay`` and ``up``'s live feed
after a flush, so every payment and label they count as sent is on its topic."""

from __future__ import annotations

import gzip
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from processor.worker import create_topics
from tests.integration.harness import HANDBOOK, ROOT, Stack, read_topic

pytestmark = pytest.mark.timeout(180)


def stop_while_sending(command: list[str], stack: Stack, log_path: Path, marker: bytes) -> int:
    """Start ``command``, wait for ``marker`` in its output, then stop it as people do."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            env={**os.environ, **stack.env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while marker not in log_path.read_bytes():
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            time.sleep(0.5)
            # Ctrl-C in `make run`'s terminal reaches the feed, then `up` sends SIGTERM too,
            # while it is still flushing what it was sending flat out (and an impatient user
            # presses Ctrl-C again).
            proc.send_signal(signal.SIGINT)
            for i in range(40):
                time.sleep(0.002)
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGTERM if i % 2 else signal.SIGINT)
            return proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()


async def assert_on_topics(stack: Stack, sent: int, labels: int) -> None:
    assert sent > 1_000 and labels > 0
    payments = await read_topic(
        stack.bootstrap, f"{stack.name}.transactions", lambda r: len(r) >= sent, timeout=30
    )
    assert len(payments) == sent
    sent_labels = await read_topic(
        stack.bootstrap, f"{stack.name}.labels", lambda r: len(r) >= labels, timeout=30
    )
    assert len(sent_labels) == labels


@pytest.fixture
async def stack(kafka_bootstrap: str, redis_url: str) -> Stack:
    stack = Stack(kafka_bootstrap, redis_url)
    await create_topics(stack.settings())
    return stack


async def test_ctrl_c_stops_the_live_feed_after_a_flush(stack: Stack, tmp_path: Path) -> None:
    log_path = tmp_path / "feed.log"
    command = [sys.executable, "-m", "processor.feed", str(HANDBOOK), "--speed", "3600x"]
    command += ["--warmup-days", "30", "--label-delay", "0.01"]
    code = stop_while_sending(command, stack, log_path, b"fast-forwarding")
    text = log_path.read_text()
    assert code == 0, (code, text)
    assert "Traceback" not in text and "never awaited" not in text, text
    stopped = [orjson.loads(line) for line in text.splitlines() if '"feed stopped"' in line]
    assert len(stopped) == 1, text
    await assert_on_topics(stack, stopped[0]["sent"], stopped[0]["labels"])


async def test_ctrl_c_stops_a_replay_after_a_flush(stack: Stack, tmp_path: Path) -> None:
    data = tmp_path / "head.csv"
    with gzip.open(HANDBOOK, "rt") as source, data.open("w") as head:
        head.writelines(itertools.islice(source, 300_001))
    log_path = tmp_path / "replay.log"
    command = [sys.executable, "-m", "processor.cli", "replay", str(data), "--label-delay", "0.01"]
    code = stop_while_sending(command, stack, log_path, b"replay progress")
    text = log_path.read_text()
    assert code == 130, (code, text)
    assert "Traceback" not in text and "never awaited" not in text, text
    summary = re.findall(r"replay interrupted: ([\d,]+) transactions and ([\d,]+) labels", text)
    assert len(summary) == 1, text
    sent, labels = (int(n.replace(",", "")) for n in summary[0])
    assert f"resume with: --from {sent + 2}" in text  # the header is line 1
    await assert_on_topics(stack, sent, labels)
