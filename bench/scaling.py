"""Scaling out: two ``fraudstream worker`` processes in one group against one.

``bench_scaling`` pre-loads N transactions into a fresh 4-partition topic, starts two workers
together (one group: the broker splits the partitions between them) and reads the rate from the
broker's append times of every decision, over the steady part of the run (10%-90% of the
decisions, once both have joined), so the join and the rebalance it causes stay out of it. It
checks nothing was lost (distinct tx_ids == N), counts the duplicates a rebalance leaves, and
sets the rate against one worker's over the same N: the ratio. On a small machine the broker
and Redis share the cores with the workers, so each process's CPU share and the load average are
recorded beside the rate: they tell a worker that could go faster from a machine that is full.

``python -m bench.scaling --data FILE --rows N --naive-rows M`` runs one worker, two workers and
the naive loop (:mod:`bench.naive`) on a broker and Redis of its own and prints the results.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.probes import (
    Usage,
    load_average,
    rate_between,
    read_all,
    runqueue_wait,
    tx_id_of,
    wait_for_count,
)
from tests.integration.harness import WorkerProcess

if TYPE_CHECKING:
    from bench.worker import Bench

__all__ = ["bench_scaling"]

TARGET_RATIO = 1.7
WORKERS = 2


async def _decided(
    bench: Bench, topic: str, partitions: int, n: int, alive: Any, timeout: float = 120.0
) -> list[tuple[int, bytes]]:
    """Every decision once N distinct transactions are decided (duplicates count in the offsets,
    so the end offsets reaching N alone does not mean every transaction was decided)."""
    deadline = time.monotonic() + timeout
    while True:
        records = await read_all(bench.bootstrap, topic, partitions)
        if len({tx_id_of(v) for _, v in records}) >= n or time.monotonic() > deadline:
            return records
        if not alive():
            raise RuntimeError(f"{topic}: a worker died")
        await asyncio.sleep(0.5)


async def _partition_spans(bench: Bench, topic: str, partitions: int) -> list[dict[str, Any]]:
    """Per partition of ``topic``: records, and the first and last append time (ms). A
    partition that ends long after the others shows one worker finishing alone."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bench.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        spans = []
        for tp in tps:
            if ends[tp]:
                first = await _stamp_at(consumer, tp, 0)
                last = await _stamp_at(consumer, tp, ends[tp] - 1)
                spans.append({"records": ends[tp], "first": first, "last": last})
        return spans
    finally:
        await consumer.stop()


async def _stamp_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> int:
    """The broker timestamp of the record at ``offset`` of ``tp``."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        batch = await consumer.getmany(tp, timeout_ms=1_000, max_records=1)
        if batch.get(tp):
            return int(batch[tp][0].timestamp)
    raise TimeoutError(f"{tp}: no record at offset {offset}")


def _machine_ticks() -> tuple[int, int]:
    """Busy and total CPU ticks of the whole machine so far (``/proc/stat``, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def _longest_gap(stamps: Sequence[int]) -> float:
    """Seconds of the longest pause between two decisions (a rebalance shows up here)."""
    ordered = sorted(stamps)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0) / 1000.0


async def _two_workers(bench: Bench, n: int) -> dict[str, Any]:
    """Two workers started together over N pre-loaded transactions; rates, CPU, losses."""
    stack = await bench.stack()
    s = stack.settings()
    preload = await bench.preload(s.topic_transactions, bench.rows[:n])
    load_before = load_average()
    workers = [WorkerProcess(stack, bench.work, f"scaling-{stack.name}-{i}") for i in (1, 2)]
    for worker in workers:
        worker.start()
    pids = [w.proc.pid for w in workers if w.proc is not None]
    started = time.time()

    def alive() -> bool:
        return all(w.alive() for w in workers)

    try:
        await wait_for_count(bench.bootstrap, s.topic_decisions, s.partitions, 1, alive=alive)
        usage = Usage({"worker": pids[0], "worker_2": pids[1], **bench.service_pids})
        waited = [runqueue_wait(pid) for pid in pids]
        ticks = _machine_ticks()
        began = time.monotonic()
        await wait_for_count(bench.bootstrap, s.topic_decisions, s.partitions, n, alive=alive)
        used = usage.done(n)
        elapsed = time.monotonic() - began
        waiting = [
            round((runqueue_wait(p) - w) / elapsed, 2) for p, w in zip(pids, waited, strict=True)
        ]
        busy, total = (now - then for now, then in zip(_machine_ticks(), ticks, strict=True))
        load_after = load_average()
        records = await _decided(bench, s.topic_decisions, s.partitions, n, alive)
    finally:
        for worker in workers:
            worker.stop()
    stamps = [ts for ts, _ in records]
    distinct = len({tx_id_of(v) for _, v in records})
    span = (max(stamps) - min(stamps)) / 1000.0
    spans = await _partition_spans(bench, s.topic_decisions, s.partitions)
    share = used["cpu_share"]
    return {
        "topic": s.topic_transactions,
        "transactions": n,
        "workers": WORKERS,
        "decisions": len(records),
        "distinct_tx": distinct,
        "lost": n - distinct,
        "duplicates": len(records) - distinct,
        "preload": preload,
        "join_s": round(min(stamps) / 1000.0 - started, 2),
        "seconds": round(span, 2),
        "tx_per_s": round((len(stamps) - 1) / span),
        "tx_per_s_10_90": round(rate_between(stamps, 0.1, 0.9)),
        "longest_pause_s": round(_longest_gap(stamps), 2),
        "partitions": [
            {
                "decisions": p["records"],
                "from_s": round((p["first"] - min(stamps)) / 1000.0, 2),
                "to_s": round((p["last"] - min(stamps)) / 1000.0, 2),
            }
            for p in spans
        ],
        **used,
        "workers_cpu_us_per_tx": round(
            used["cpu_us_per_tx"]["worker"] + used["cpu_us_per_tx"]["worker_2"], 1
        ),
        "waiting_for_a_core_share": dict(zip(("worker", "worker_2"), waiting, strict=True)),
        "cores": os.cpu_count(),
        "cores_busy": round(sum(share.values()), 2),
        "machine_busy_share": round(busy / total, 2) if total else None,
        "load_before": load_before,
        "load_after": load_after,
    }


async def bench_scaling(
    bench: Bench, n: int, single: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Two workers against one over N transactions: the 10%-90% rate ratio (target 1.7x).

    ``single`` is a ``bench_throughput`` result over the same N, if one was just measured;
    otherwise one worker is measured here first, on a fresh topic of the same N rows.
    """
    if single is None or single.get("transactions") != n:
        from bench.worker import bench_throughput  # bench.worker imports this module

        single = await bench_throughput(bench, n)
    two = await _two_workers(bench, n)
    ratio = two["tx_per_s_10_90"] / single["tx_per_s_10_90"]
    # What the cores allow at all: the workers', Redis's and the broker's CPU per transaction
    # against every core (other tenants and this process left out: an upper bound), and the
    # cores the target rate would take at that cost.
    cpu_us = sum(two["cpu_us_per_tx"].values())
    bound = (os.cpu_count() or 1) * 1e6 / cpu_us
    needed = TARGET_RATIO * single["tx_per_s_10_90"] * cpu_us / 1e6
    return {
        "transactions": n,
        "one_worker": {
            key: single[key]
            for key in (
                "tx_per_s",
                "tx_per_s_10_90",
                "cpu_share",
                "cpu_us_per_tx",
                "worker_waiting_for_a_core_share",
                "load_before",
                "load_after",
            )
        },
        "two_workers": two,
        "ratio": round(ratio, 2),
        "all_processes_cpu_us_per_tx": round(cpu_us, 1),
        "cores_bound_tx_per_s": round(bound),
        "cores_needed_for_target": round(needed, 2),
        "target_ratio": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
    }


async def _run(data: Path, rows: int, naive_rows: int, work: Path) -> dict[str, Any]:
    from bench.naive import bench_naive
    from bench.worker import Bench, bench_throughput, load_rows, train_checkpoint
    from tests.services.kafka import KafkaBroker
    from tests.services.redis import RedisServer

    os.environ.pop("OPENAI_API_KEY", None)  # workers narrate from templates, never call an LLM
    loaded = load_rows(data, max(rows, naive_rows, 60_000))
    checkpoint = train_checkpoint(loaded[:50_000])  # as bench.worker trains its model
    with KafkaBroker() as broker, RedisServer() as redis:
        bench = Bench(broker, redis, loaded, work, checkpoint, {})
        single = await bench_throughput(bench, rows)
        scaling = await bench_scaling(bench, rows, single)
        naive = await bench_naive(bench, single["topic"], naive_rows)
    return {
        "scaling": scaling,
        "naive": naive,
        "speedup_over_naive": round(single["tx_per_s"] / naive["tx_per_s"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="the handbook CSV(.gz)")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--naive-rows", type=int, default=5_000)
    parser.add_argument(
        "--work", type=Path, default=Path(f"/tmp/fraudstream-scaling-{os.getpid()}")
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    work = args.work or Path(f"/tmp/fraudstream-bench-scaling-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_run(args.data, args.rows, args.naive_rows, work))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
