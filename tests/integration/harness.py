"""Helpers for the streaming tests: a worker in its own process, topic readers, handbook slices."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from processor.settings import Settings
from replay.readers import PRESETS, BadRow, Row, read_transactions

ROOT = Path(__file__).resolve().parents[2]
HANDBOOK = ROOT.parent / "shared" / "data" / "handbook-2018-04-01_2018-07-31.csv.gz"


def handbook_rows(limit: int, skip: int = 0) -> list[Row]:
    """The first ``limit`` good rows of the shared handbook file (after ``skip``)."""
    assert HANDBOOK.is_file(), f"the shared handbook data is required: {HANDBOOK}"
    rows = (
        r for r in read_transactions(HANDBOOK, PRESETS["handbook"]) if not isinstance(r, BadRow)
    )
    return list(itertools.islice(rows, skip, skip + limit))


@dataclass
class Stack:
    """One test's private corner of the shared broker and Redis: its own topics, group, keys."""

    bootstrap: str
    redis_url: str
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    partitions: int = 4
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        n = self.name
        env = {
            "FRAUD_KAFKA_BOOTSTRAP": self.bootstrap,
            "FRAUD_REDIS_URL": self.redis_url,
            "FRAUD_GROUP": f"{n}-group",
            "FRAUD_TOPIC_TRANSACTIONS": f"{n}.transactions",
            "FRAUD_TOPIC_DECISIONS": f"{n}.decisions",
            "FRAUD_TOPIC_ESCALATIONS": f"{n}.escalations",
            "FRAUD_TOPIC_NARRATIVES": f"{n}.narratives",
            "FRAUD_TOPIC_LABELS": f"{n}.labels",
            "FRAUD_TOPIC_DLQ": f"{n}.transactions.dlq",
            "FRAUD_TOPIC_LABELS_DLQ": f"{n}.labels.dlq",
            "FRAUD_TOPIC_OBSERVATIONS": f"{n}.observations",
            "FRAUD_PARTITIONS": str(self.partitions),
            "FRAUD_REDIS_PREFIX": n,
            "FRAUD_MODEL_POLL_S": "0.2",
            "FRAUD_SESSION_TIMEOUT_S": "6",
            "FRAUD_LOG_JSON": "true",
            "FRAUD_METRICS_PORT": "0",  # tests that read /metrics pass a free port
        }
        env.update(self.extra)
        return env

    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env)
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)


class WorkerProcess:
    """``fraudstream worker`` as a child process, as an operator would run it."""

    def __init__(self, stack: Stack, log_dir: Path, name: str = "worker") -> None:
        self.stack = stack
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.stack.env}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        """``kill -9``: no goodbye, no commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


async def read_topic(
    bootstrap: str,
    topic: str,
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 120.0,
    alive: Callable[[], bool] | None = None,
    describe: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start until ``done(records)`` (JSON values)."""
    # No group: the consumer is given every partition of the topic and starts at the beginning.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(records):
            if time.monotonic() > deadline:
                detail = describe() if describe else ""
                raise AssertionError(
                    f"{topic}: condition not met after {timeout:.0f}s, {len(records)} records\n"
                    f"{detail}"
                )
            if alive is not None and not alive():
                detail = describe() if describe else ""
                raise AssertionError(f"the worker died\n{detail}")
            batch = await consumer.getmany(timeout_ms=200, max_records=5_000)
            for messages in batch.values():
                records.extend(orjson.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return records


def count_by(records: list[dict[str, Any]], key: str = "tx_id") -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record[key]] = counts.get(record[key], 0) + 1
    return counts


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
