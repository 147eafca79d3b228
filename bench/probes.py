"""What the benchmarks measure with: process CPU from ``/proc``, topic counts and timestamps,
and py-spy for where a process spends its time.

Topics the benchmarks create stamp records with the broker's append time (``APPEND_TIME``), so
a rate or a latency is read from the broker's clock, not from a busy benchmark process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "APPEND_TIME",
    "Usage",
    "commit_id",
    "cpu_seconds",
    "load_average",
    "percentile",
    "py_spy",
    "rate_between",
    "read_all",
    "tx_id_of",
    "wait_for_count",
]

APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}
TICK = os.sysconf("SC_CLK_TCK")


def commit_id(root: Path) -> str:
    """`git rev-parse --short HEAD` of ``root``, with -dirty when it has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + (
            "-dirty" if git("status", "--porcelain") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def runqueue_wait(pid: int | None) -> float:
    """Seconds the process's main thread spent runnable but waiting for a core."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Usage:
    """CPU of the worker, redis-server and the broker over an interval (``/proc``)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.began = time.monotonic()
        self.cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.waited = runqueue_wait(pids["worker"])

    def done(self, count: int) -> dict[str, Any]:
        """Each process's share of a core and CPU µs per record, and the worker's wait."""
        elapsed = time.monotonic() - self.began
        cpu = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}
        waited = runqueue_wait(self.pids["worker"]) - self.waited
        return {
            "cpu_share": {name: round(c / elapsed, 2) for name, c in cpu.items()},
            "cpu_us_per_tx": {name: round(c / count * 1e6, 1) for name, c in cpu.items()},
            "worker_waiting_for_a_core_share": round(waited / elapsed, 2),
        }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def tx_id_of(value: bytes) -> str:
    """The tx_id of a decision or transaction: both put it first; parse only if not."""
    head = b'{"tx_id":"'
    if value.startswith(head):
        return value[len(head) : value.index(b'"', len(head))].decode()
    return str(orjson.loads(value)["tx_id"])


async def _end_offsets(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> int:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    return sum((await consumer.end_offsets(tps)).values())


async def read_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, bytes]]:
    """Every record of ``topic`` now: (broker timestamp ms, value)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500, max_records=20_000)).values():
                out.extend((m.timestamp, m.value) for m in messages)
        return out
    finally:
        await consumer.stop()


async def wait_for_count(
    bootstrap: str,
    topic: str,
    partitions: int,
    count: int,
    *,
    alive: Callable[[], bool] | None = None,
    timeout: float = 900.0,
) -> None:
    """Return once ``topic`` holds ``count`` records (by its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while await _end_offsets(consumer, topic, partitions) < count:
            if alive is not None and not alive():
                raise RuntimeError(f"{topic}: the producing process died")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: fewer than {count} records after {timeout:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        await consumer.stop()


def rate_between(stamps_ms: Sequence[int], lo: float = 0.0, hi: float = 1.0) -> float:
    """Records per second between the ``lo`` and ``hi`` fractions of the sorted stamps."""
    stamps = sorted(stamps_ms)
    a, b = int(lo * (len(stamps) - 1)), int(hi * (len(stamps) - 1))
    span = (stamps[b] - stamps[a]) / 1000.0
    return (b - a) / span if span > 0 else float("nan")


def py_spy(
    pid: int, seconds: float, out: Path, *, threads: bool = False, idle: bool = False
) -> subprocess.Popen[bytes]:
    """Record ``pid`` for ``seconds`` with py-spy: raw folded stacks to ``out``.

    py-spy comes with the dev extras (``$PYSPY`` names another one). ``threads`` splits the
    stacks by thread, ``idle`` keeps the time spent waiting.
    """
    pyspy = os.environ.get("PYSPY") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if not pyspy:
        raise RuntimeError("py-spy is not installed: make install (dev extras) or set PYSPY")
    argv = [pyspy, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(out)]
    argv += ["--threads"] if threads else []
    argv += ["--idle"] if idle else []
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
