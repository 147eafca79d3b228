"""The embedded Tansu broker and Valkey server: real binaries, real clients, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from processor.embedded import EmbeddedKafka, EmbeddedServiceError, EmbeddedValkey
from processor.topics import TopicsError, ensure_topics

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def kafka() -> Iterator[EmbeddedKafka]:
    with EmbeddedKafka() as broker:
        yield broker


@pytest.fixture(scope="module")
def valkey() -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey() as server:
        yield server


def gone(pid: int) -> bool:
    """No such process, or only its zombie (an orphan's reaper may be slow)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.1)
    return False


async def partition_counts(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def test_records_round_trip_through_a_consumer_group(kafka: EmbeddedKafka) -> None:
    await ensure_topics(kafka.bootstrap, {"payments": 4})
    sent = {f"tx-{i}": f"card-{i % 37}" for i in range(500)}

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, linger_ms=5)
    await producer.start()
    try:
        for tx_id, card_id in sent.items():
            await producer.send(
                "payments", key=card_id.encode(), value=json.dumps({"tx_id": tx_id}).encode()
            )
        await producer.flush()
    finally:
        await producer.stop()

    group = AIOKafkaConsumer(
        "payments",
        bootstrap_servers=kafka.bootstrap,
        group_id="scorers",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Tansu holds each join for about half the session timeout.
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await group.start()
    received: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            for tp, records in (await group.getmany(timeout_ms=500)).items():
                for record in records:
                    received[json.loads(record.value)["tx_id"]] = tp.partition
        await group.commit()
    finally:
        await group.stop()
    assert set(received) == set(sent)
    assert set(received.values()) == {0, 1, 2, 3}, "keys spread over all four partitions"

    # What the group committed is where it resumes: a reader of its offsets sees only what came
    # after. (Assigned, not subscribed: a new member would wait for the old one's session to
    # expire, as aiokafka never leaves a group at Tansu's generation 0.)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("payments", key=b"card-1", value=b'{"tx_id": "late"}')
    finally:
        await producer.stop()
    resumed = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id="scorers", enable_auto_commit=False
    )
    await resumed.start()
    partitions = [TopicPartition("payments", p) for p in range(4)]
    try:
        committed = [await resumed.committed(tp) or 0 for tp in partitions]
        resumed.assign(partitions)
        later: list[str] = []
        deadline = time.monotonic() + 30
        while not later and time.monotonic() < deadline:
            for records in (await resumed.getmany(timeout_ms=500)).values():
                later += [json.loads(r.value)["tx_id"] for r in records]
    finally:
        await resumed.stop()
    assert sum(committed) == len(sent)
    assert later == ["late"]


async def test_ensure_topics_creates_missing_and_tolerates_existing(kafka: EmbeddedKafka) -> None:
    await ensure_topics(kafka.bootstrap, {"decisions": 3, "labels": 1})
    await ensure_topics(kafka.bootstrap, {"decisions": 3, "narratives": 2}, timeout=10)
    counts = await partition_counts(kafka.bootstrap, ["decisions", "labels", "narratives"])
    assert counts == {"decisions": 3, "labels": 1, "narratives": 2}


async def test_ensure_topics_names_the_unreachable_broker() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TopicsError, match=f"127.0.0.1:{port}"):
        await ensure_topics(f"127.0.0.1:{port}", {"payments": 1}, timeout=3)


def test_valkey_set_and_get(valkey: EmbeddedValkey) -> None:
    client = redis.Redis.from_url(valkey.url)
    try:
        client.set("card:42:last_tx", "tx-9", ex=60)
        assert client.get("card:42:last_tx") == b"tx-9"
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("save")["save"] == ""
    finally:
        client.close()


INCR_ONCE = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  return redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
end
return redis.call('GET', KEYS[2])
"""


async def test_valkey_runs_pipelined_lua_scripts(valkey: EmbeddedValkey) -> None:
    client = aredis.Redis.from_url(valkey.url)
    try:
        sha = await client.script_load(INCR_ONCE)
        async with client.pipeline(transaction=False) as pipe:
            for tx_id, amount in [("a", 10), ("b", 5.5), ("a", 10)]:  # "a" redelivered
                pipe.evalsha(sha, 2, "card:7:seen", "card:7:sum", tx_id, amount)
            results = await pipe.execute()
        assert [float(r) for r in results] == [10.0, 15.5, 15.5]
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", [EmbeddedKafka, EmbeddedValkey])
def test_stop_leaves_no_process_and_no_temp_dir(kind: type[EmbeddedKafka | EmbeddedValkey]) -> None:
    server = kind().start()
    pid, run_dir = server.pid, server.run_dir
    assert pid is not None and not gone(pid)
    server.stop()
    assert gone(pid) and server.pid is None
    assert not run_dir.exists()
    server.stop()  # twice is harmless


def test_kill_is_a_crash_and_start_comes_back_on_the_same_port() -> None:
    server = EmbeddedValkey().start()
    pid, url = server.pid, server.url
    assert pid is not None
    server.kill()
    assert gone(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    server.start()
    try:
        assert server.url == url
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()


async def test_a_broker_started_from_a_coroutine_serves_it() -> None:
    broker = EmbeddedKafka()
    await asyncio.to_thread(broker.start)
    try:
        await ensure_topics(broker.bootstrap, {"labels": 2})
        assert await partition_counts(broker.bootstrap, ["labels"]) == {"labels": 2}
    finally:
        await asyncio.to_thread(broker.stop)
    assert broker.pid is None


def test_valkey_with_a_data_dir_keeps_its_data(tmp_path: Path) -> None:
    with EmbeddedValkey(data_dir=tmp_path) as server:
        redis.Redis.from_url(server.url).set("model:version", "7")
    assert (tmp_path / "valkey.log").exists()
    with EmbeddedValkey(data_dir=tmp_path) as server:
        assert redis.Redis.from_url(server.url).get("model:version") == b"7"


@pytest.mark.parametrize("kind", [EmbeddedKafka, EmbeddedValkey])
def test_a_taken_port_is_refused_with_a_clear_error(
    kind: type[EmbeddedKafka | EmbeddedValkey],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = kind(port)
        with pytest.raises(EmbeddedServiceError, match=rf"(?is)127\.0\.0\.1:{port}.*in use"):
            server.start()
        assert server.pid is None


def test_started_from_a_short_lived_thread_outlives_the_thread() -> None:
    # The parent-death signal follows the forking *thread*; a worker thread must not take it along.
    started: list[EmbeddedValkey] = []
    worker = threading.Thread(target=lambda: started.append(EmbeddedValkey().start()))
    worker.start()
    worker.join()
    server = started[0]
    try:
        time.sleep(0.5)
        assert server.running
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_no_orphans_when_python_is_killed() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from processor.embedded import EmbeddedKafka, EmbeddedValkey
        kafka, valkey = EmbeddedKafka().start(), EmbeddedValkey().start()
        print(kafka.pid, valkey.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can help
        parent.wait()
    assert all(wait_gone(pid) for pid in pids), f"orphans left behind: {pids}"


def test_no_orphans_after_a_normal_exit() -> None:
    script = (
        "from processor.embedded import EmbeddedKafka, EmbeddedValkey\n"
        "print(EmbeddedKafka().start().pid, EmbeddedValkey().start().pid, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2
    assert all(wait_gone(pid, timeout=5) for pid in pids)
