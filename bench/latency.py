"""Append-to-decision latency of a warmed worker fed open-loop at a fixed rate.

``bench_latency`` is one latency run of ``python -m bench.worker``: a fresh corner of the stack,
a worker warmed on 2,000 transactions, then transactions produced at the rate, every
``LOAD_LINGER_MS`` what fell due as one record batch per partition (what a producer lingering that
long puts on the wire). Per transaction: its broker append time to the decision's arrival here
(same clock), to the decision's own append time, and from when it was sent; percentiles, the CPU
of every process per transaction, and this process's own (it shares the cores).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.probes import Usage, load_average, percentile, py_spy, read_all, tx_id_of
from processor.outbox import Outbox
from replay.producer import transaction_bytes
from tests.integration.harness import WorkerProcess

if TYPE_CHECKING:
    from bench.worker import Bench

__all__ = ["LOAD_LINGER_MS", "bench_latency"]

LOAD_LINGER_MS = 5


async def bench_latency(
    bench: Bench, rate: float, seconds: float, *, warm: int = 2_000, profile: float = 0.0
) -> dict[str, Any]:
    """A warmed worker fed open-loop at ``rate`` tx/s: append -> decision latency percentiles."""
    stack = await bench.stack()
    s = stack.settings()
    n = min(int(rate * seconds), len(bench.rows) - warm)
    values = [(r.tx.card_id.encode(), transaction_bytes(r.tx)) for r in bench.rows[: warm + n]]
    tx_ids = [r.tx.tx_id for r in bench.rows[: warm + n]]
    arrived: dict[str, float] = {}
    stamped: dict[str, int] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bench.bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    # Batched as a real producer batches. A request per few records loads the broker, on the
    # same cores as the worker; measured at half load, the worker fell 1.5 s behind without
    # the linger and kept up with it.
    producer = AIOKafkaProducer(bootstrap_servers=bench.bootstrap, acks=1, linger_ms=LOAD_LINGER_MS)
    await consumer.start()
    await producer.start()
    consumer.assign([TopicPartition(s.topic_decisions, p) for p in range(s.partitions)])
    stop = asyncio.Event()

    async def receive() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    tx_id = tx_id_of(m.value)
                    arrived.setdefault(tx_id, now)
                    stamped.setdefault(tx_id, m.timestamp)

    async def wait_decided(ids: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(arrived) < len(ids):
            if not worker.alive():
                raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(arrived)} of {len(ids)} decisions after {timeout:.0f}s")
            await asyncio.sleep(0.05)

    receiver = asyncio.create_task(receive())
    worker = WorkerProcess(stack, bench.work, f"latency-{stack.name}").start()
    assert worker.proc is not None
    sent_at: list[float] = []
    spy = None
    try:
        for key, value in values[:warm]:
            await producer.send(s.topic_transactions, value, key=key)
        await producer.flush()
        await wait_decided(tx_ids[:warm], 120.0)
        load_before = load_average()
        if profile:
            out = bench.work / f"profile-latency-{round(rate)}.txt"
            spy = py_spy(worker.proc.pid, min(profile, seconds), out, threads=True, idle=True)
        usage = Usage({"worker": worker.proc.pid, **bench.service_pids})
        harness_cpu = time.process_time()
        t0 = time.monotonic()
        i = warm
        behind = 0.0
        tick = LOAD_LINGER_MS / 1000.0
        while i < warm + n:
            # Every tick, what fell due since the last one goes out as one record batch per
            # partition, as a producer lingering that long sends it; a send per record cost this
            # process 3-4 times the CPU, taken from the two cores the worker shares.
            elapsed = time.monotonic() - t0
            due = min(warm + n, warm + int(elapsed * rate) + 1)
            behind = max(behind, (due - i) / rate)
            outbox = Outbox(producer)
            await outbox.topic(s.topic_transactions)
            now = time.time()
            for key, value in values[i:due]:
                outbox.add(s.topic_transactions, key, value)
            sent_at.extend(itertools.repeat(now, due - i))
            i = due
            await outbox.send()
            await asyncio.sleep(max(0.0, t0 + elapsed + tick - time.monotonic()))
        send_s = time.monotonic() - t0
        harness_cpu = time.process_time() - harness_cpu
        await producer.flush()
        await wait_decided(tx_ids, 120.0)
        used = usage.done(n)
        used["harness_cpu_us_per_tx"] = round(harness_cpu / n * 1e6, 1)
        load_after = load_average()
    finally:
        stop.set()
        await receiver
        await producer.stop()
        await consumer.stop()
        worker.stop()
        if spy is not None:
            spy.wait(60)
    appended = {
        tx_id_of(v): ts
        for ts, v in await read_all(bench.bootstrap, s.topic_transactions, s.partitions)
    }
    measured = tx_ids[warm:]
    from_append = [arrived[t] * 1000.0 - appended[t] for t in measured]
    from_send = [(arrived[t] - at) * 1000.0 for t, at in zip(measured, sent_at, strict=True)]
    in_worker = [stamped[t] - appended[t] for t in measured]
    samples = {"sent_at": sent_at, "from_append_ms": from_append, "in_worker_ms": in_worker}
    (bench.work / f"latency-{round(rate)}.json").write_bytes(orjson.dumps(samples))

    def summary(values: Sequence[float]) -> dict[str, float]:
        return {f"p{q}": round(percentile(values, q / 100), 1) for q in (50, 95, 99)} | {
            "max": round(max(values), 1)
        }

    return {
        "target_tx_per_s": round(rate),
        "achieved_tx_per_s": round(n / send_s),
        "transactions": n,
        "seconds": round(send_s, 1),
        "producer_max_behind_ms": round(behind * 1000, 1),
        "append_to_decision_received_ms": summary(from_append),
        "send_to_decision_received_ms": summary(from_send),
        "append_to_decision_appended_ms": summary(in_worker),
        **used,
        "load_before": load_before,
        "load_after": load_after,
    }
