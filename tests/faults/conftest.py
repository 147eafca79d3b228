"""The fault suite's own Apache Kafka broker and persistent Redis, workers, and its figures.

The cases restart these servers, so they are the suite's own (never the integration session's),
started once for the package: one Apache Kafka broker in KRaft mode and one ``redis-server`` with
its append-only file written on every command (``appendonly yes``, ``appendfsync always``: what a
client was told is written survives a restart). Each case keeps to its own topics, consumer group
and Redis key prefix (:class:`tests.integration.harness.Stack`). Every case's figures go to the
JSON file named by ``FRAUD_FAULTS_OUT`` (default ``bench/out/faults.json``), merged with the
cases already there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.worker import create_topics
from tests.integration.harness import ROOT, Stack, WorkerProcess
from tests.services.kafka import KafkaBroker
from tests.services.ports import free_port
from tests.services.redis import RedisServer

_HERE = Path(__file__).parent
Record = Callable[..., None]  # the `record` fixture: record(**figures)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="package")
def fault_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of the suite's own: the broker case restarts it."""
    with KafkaBroker(data_dir=tmp_path_factory.mktemp("fault-kafka")) as broker:
        yield broker


@pytest.fixture(scope="package")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A persistent Redis of the suite's own (AOF, fsync always): the Redis case restarts it."""
    data = tmp_path_factory.mktemp("fault-redis")
    with RedisServer(data_dir=data, persistence=True) as server:
        yield server


@pytest.fixture
async def stack(fault_kafka: KafkaBroker, fault_redis: RedisServer) -> AsyncIterator[Stack]:
    """The case's topics (4 partitions), group and key prefix; learning off (no labels sent)."""
    stack = Stack(fault_kafka.bootstrap, fault_redis.url)
    stack.extra["FRAUD_LEARN"] = "false"
    await create_topics(stack.settings())
    yield stack


class Workers:
    """``fraudstream worker`` processes of one case, each serving /metrics on a port of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []
        self.metrics_ports: dict[str, int] = {}

    def start(self, stack: Stack, name: str = "worker") -> WorkerProcess:
        port = self.metrics_ports[name] = free_port()
        stack = Stack(
            stack.bootstrap,
            stack.redis_url,
            name=stack.name,
            partitions=stack.partitions,
            extra={**stack.extra, "FRAUD_METRICS_PORT": str(port)},
        )
        worker = WorkerProcess(stack, self.log_dir, name).start()
        self.started.append(worker)
        return worker

    def describe(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in self.started)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.stop_all()


def figures_path() -> Path:
    out = os.environ.get("FRAUD_FAULTS_OUT") or str(ROOT / "bench" / "out" / "faults.json")
    return Path(out)


@pytest.fixture(scope="package")
def fault_figures() -> Iterator[dict[str, dict[str, Any]]]:
    """Each case's figures by case name, written out when the package ends."""
    figures: dict[str, dict[str, Any]] = {}
    yield figures
    if not figures:
        return
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        doc = {}
    cases = doc.get("cases", {}) if isinstance(doc, dict) else {}
    cases.update(figures)
    doc = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stack": "Apache Kafka (KRaft, one node) + redis-server (AOF, appendfsync always)",
        "cases": cases,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def record(request: pytest.FixtureRequest, fault_figures: dict[str, dict[str, Any]]) -> Record:
    """``record(**figures)``: this case's figures (merged), keyed by the test's name."""
    name = request.node.name.removeprefix("test_")
    began = time.monotonic()

    def add(**values: Any) -> None:
        entry = fault_figures.setdefault(name, {})
        entry.update(values)
        entry["case_seconds"] = round(time.monotonic() - began, 1)

    return add
