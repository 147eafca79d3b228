"""The streaming worker's benchmark: throughput, latency under load, and the Kafka ceiling.

Run with ``python -m bench.worker --data FILE --out bench/worker.json`` (``bench/worker.md`` is
written beside it). It starts its own Apache Kafka broker and redis-server (``tests/services``)
and measures, with ``fraudstream worker`` in a child process (learning off, a trained model):

1. throughput: N handbook transactions pre-loaded into a 4-partition ``transactions`` topic,
   then one worker started; decisions/s from the first decision to the last, and the time from
   the worker's start to its first decision;
2. latency (:mod:`bench.latency`) at 25%, 50% and 90% of that rate: a fresh stack and a
   warmed worker, transactions produced open-loop at the rate, every 5 ms what fell due as one
   record batch per partition, as a producer lingering 5 ms sends them (the Java client's
   default since Kafka 4.0, as a payment gateway's would); the CPU this process spent doing so
   is reported as ``harness_cpu_us_per_tx`` (it shares the cores); per transaction, its broker
   append time (topics use ``LogAppendTime``, so the producer's linger is not in it) to the
   decision's arrival in this process, same clock, p50/p95/p99;
3. the ceiling (:mod:`bench.ceiling`): a plain aiokafka consume-and-produce loop (a group,
   the same batch size, no processing) in its own process over the same pre-loaded topic, once
   with the values as they are and once padded to the size of a decision; our share is worker
   throughput / ceiling.

Rates come from the broker's append times of the output records, not from this process, so a
busy benchmark process does not bend them. CPU seconds of the worker, redis-server and the broker
per transaction, and how long the worker waited for a core (``/proc``), tell a CPU-bound worker
from a waiting one and a busy machine from a slow worker. ``--profile S`` runs py-spy (raw
folded stacks, all threads, idle included) on the worker in each phase; ``--env FRAUD_X=...``
sets worker settings. Worker logs, profiles and each latency run's samples go to ``--work``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.ceiling import bench_ceiling
from bench.latency import LOAD_LINGER_MS, bench_latency
from bench.naive import bench_naive
from bench.probes import (
    APPEND_TIME,
    Usage,
    commit_id,
    load_average,
    percentile,
    py_spy,
    rate_between,
    read_all,
    wait_for_count,
)
from bench.scaling import bench_scaling
from models.checkpoint import Checkpoint
from models.features import InMemoryFeatureStore
from models.learner import DelayedLabelLearner
from models.model import FraudModel
from models.records import Label
from processor.checkpoints import RedisCheckpointStore
from replay.producer import replay_async
from replay.readers import PRESETS, Row, read_transactions
from tests.integration.harness import ROOT, Stack, WorkerProcess
from tests.services.kafka import KafkaBroker, create_topics
from tests.services.redis import RedisServer

TARGET_TX_PER_S = 10_000
TARGET_SHARE = 0.60
TARGET_P99_MS = 50.0
NAIVE_ROWS = 10_000  # the one-at-a-time loop does ~100 tx/s: fewer rows than the worker


def load_rows(data: Path, limit: int) -> list[Row]:
    rows = (r for r in read_transactions(data, PRESETS["handbook"]) if isinstance(r, Row))
    return list(itertools.islice(rows, limit))


def train_checkpoint(rows: Sequence[Row], version: int = 1) -> Checkpoint:
    """A model taught on ``rows`` (labels known at once), so decisions escalate as in production."""
    store = InMemoryFeatureStore()
    learner = DelayedLabelLearner(FraudModel(), label_delay=0.0, version=version - 1)
    for row in rows:
        features = store.update_one(row.tx).values
        learner.observe(row.tx.tx_id, row.tx.ts, features)
        if row.is_fraud:
            learner.on_label(Label(row.tx.tx_id, True, "replay", row.tx.ts))
        learner.advance(row.tx.ts)
    return learner.checkpoint(rows[-1].tx.ts)


class Bench:
    """The broker, Redis, the rows and the trained model shared by every phase."""

    def __init__(
        self,
        broker: KafkaBroker,
        redis: RedisServer,
        rows: list[Row],
        work: Path,
        checkpoint: Checkpoint,
        extra_env: dict[str, str],
    ) -> None:
        self.bootstrap = broker.bootstrap
        self.redis_url = redis.url
        self.service_pids = {
            "redis": getattr(getattr(redis, "_process", None), "pid", None),
            "kafka": getattr(getattr(broker, "_process", None), "pid", None),
        }
        self.rows = rows
        self.work = work
        self.checkpoint = checkpoint
        self.extra_env = extra_env

    async def stack(self) -> Stack:
        """A fresh corner of the broker and Redis: topics (append-time stamped), model in place."""
        stack = Stack(
            self.bootstrap, self.redis_url, extra={"FRAUD_LEARN": "false", **self.extra_env}
        )
        await create_topics(self.bootstrap, stack.settings().topics(), config=APPEND_TIME)
        client = aioredis.from_url(self.redis_url)
        try:
            await RedisCheckpointStore(client, prefix=stack.name).publish(self.checkpoint)
        finally:
            await client.aclose()
        return stack

    async def preload(self, topic: str, rows: Sequence[Row]) -> dict[str, Any]:
        began = time.perf_counter()
        stats = await replay_async(rows, bootstrap=self.bootstrap, topic=topic, send_labels=False)
        seconds = time.perf_counter() - began
        return {
            "sent": stats.sent,
            "seconds": round(seconds, 2),
            "tx_per_s": round(stats.sent / seconds),
        }


async def bench_throughput(bench: Bench, n: int, profile: float = 0.0) -> dict[str, Any]:
    """One worker over N pre-loaded transactions: decisions/s, join time, CPU per transaction."""
    stack = await bench.stack()
    s = stack.settings()
    preload = await bench.preload(s.topic_transactions, bench.rows[:n])
    load_before = load_average()
    worker = WorkerProcess(stack, bench.work, f"throughput-{stack.name}").start()
    assert worker.proc is not None
    started = time.time()
    spy = None
    try:
        await wait_for_count(
            bench.bootstrap, s.topic_decisions, s.partitions, 1, alive=worker.alive
        )
        if profile:
            spy = py_spy(
                worker.proc.pid,
                profile,
                bench.work / "profile-throughput.txt",
                threads=True,
                idle=True,
            )
        usage = Usage({"worker": worker.proc.pid, **bench.service_pids})
        await wait_for_count(
            bench.bootstrap, s.topic_decisions, s.partitions, n, alive=worker.alive
        )
        used = usage.done(n)
        load_after = load_average()
    finally:
        worker.stop()
        if spy is not None:
            spy.wait(60)
    records = await read_all(bench.bootstrap, s.topic_decisions, s.partitions)
    stamps = [ts for ts, _ in records]
    docs = [orjson.loads(v) for _, v in records]
    actions: dict[str, int] = {}
    for doc in docs:
        actions[doc["action"]] = actions.get(doc["action"], 0) + 1
    span = (max(stamps) - min(stamps)) / 1000.0
    return {
        "topic": s.topic_transactions,
        "transactions": n,
        "decisions": len(records),
        "distinct_tx": len({d["tx_id"] for d in docs}),
        "preload": preload,
        "join_s": round(min(stamps) / 1000.0 - started, 2),
        "seconds": round(span, 2),
        "tx_per_s": round((len(stamps) - 1) / span),
        "tx_per_s_10_90": round(rate_between(stamps, 0.1, 0.9)),
        **used,
        "decision_bytes_p50": int(percentile([len(v) for _, v in records], 0.5)),
        "worker_latency_ms_p50": round(percentile([d["latency_ms"] for d in docs], 0.5), 2),
        "actions": actions,
        "model_version": docs[0]["model_version"],
        "load_before": load_before,
        "load_after": load_after,
        "profiled": bool(profile),
    }


async def _run(
    data: Path,
    rows: int,
    *,
    fractions: Sequence[float],
    seconds: float,
    profile: float,
    work: Path,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    # The workers inherit this environment: with no API key their narrator writes templates, so
    # a benchmark never calls (or pays) an LLM.
    os.environ.pop("OPENAI_API_KEY", None)
    load_before = load_average()
    loaded = load_rows(data, max(rows, 60_000))
    checkpoint = train_checkpoint(loaded[:50_000])
    with KafkaBroker() as broker, RedisServer() as redis:
        bench = Bench(broker, redis, loaded, work, checkpoint, extra_env)
        throughput = await bench_throughput(bench, rows, profile)
        settings = Stack(
            bench.bootstrap, bench.redis_url, extra={"FRAUD_LEARN": "false", **extra_env}
        ).settings()
        ceiling = await bench_ceiling(
            bench, throughput["topic"], rows, settings.batch_size, int(settings.batch_wait_ms)
        )
        sized = await bench_ceiling(
            bench,
            throughput["topic"],
            rows,
            settings.batch_size,
            int(settings.batch_wait_ms),
            throughput["decision_bytes_p50"],
        )
        naive = await bench_naive(bench, throughput["topic"], min(rows, NAIVE_ROWS))
        scaling = await bench_scaling(bench, rows, throughput)
        peak = throughput["tx_per_s"]
        latency = {
            f"{round(f * 100)}%": await bench_latency(bench, f * peak, seconds, profile=profile)
            for f in fractions
        }
    half = latency.get("50%", {}).get("append_to_decision_received_ms", {})
    share = throughput["tx_per_s"] / ceiling["records_per_s"]
    return {
        "machine": {
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_average(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": commit_id(ROOT),
            "packages": {
                p: metadata.version(p) for p in ("faust-streaming", "aiokafka", "redis", "orjson")
            },
            "installed": {name: _has(name) for name in ("hiredis", "uvloop")},
            "kafka": broker.version,
        },
        "settings": {
            "rows": rows,
            "partitions": settings.partitions,
            "batch_size": settings.batch_size,
            "batch_wait_ms": settings.batch_wait_ms,
            "learn": settings.learn,
            "guarantee": settings.guarantee,
            "latency_seconds": seconds,
            "model": f"trained on the first 50,000 rows ({checkpoint.model_version})",
            "extra_env": extra_env,
        },
        "throughput": throughput,
        "ceiling": ceiling,
        "ceiling_decision_sized": sized,
        "naive": naive,
        "speedup_over_naive": round(throughput["tx_per_s"] / naive["tx_per_s"], 1),
        "scaling": scaling,
        "share_of_ceiling": round(share, 3),
        "latency": latency,
        "targets": {
            "tx_per_s": TARGET_TX_PER_S,
            "share_of_ceiling": TARGET_SHARE,
            "p99_ms_at_half_load": TARGET_P99_MS,
            "met": {
                "tx_per_s": throughput["tx_per_s"] >= TARGET_TX_PER_S,
                "share_of_ceiling": share >= TARGET_SHARE,
                "p99_ms_at_half_load": bool(half) and half["p99"] <= TARGET_P99_MS,
            },
        },
    }


def _has(module: str) -> bool:
    try:
        metadata.version(module)
    except metadata.PackageNotFoundError:
        return False
    return True


def bench_worker(
    data: Path,
    rows: int = 200_000,
    *,
    fractions: Sequence[float] = (0.25, 0.5, 0.9),
    seconds: float = 25.0,
    profile: float = 0.0,
    work: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Throughput, latency at fractions of it and the aiokafka ceiling of one worker process."""
    work = work or Path(f"/tmp/fraudstream-bench-worker-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    return asyncio.run(
        _run(
            data,
            rows,
            fractions=fractions,
            seconds=seconds,
            profile=profile,
            work=work,
            extra_env=extra_env or {},
        )
    )


def markdown(result: dict[str, Any]) -> str:
    t, c, m, st = result["throughput"], result["ceiling"], result["machine"], result["settings"]
    sized = result["ceiling_decision_sized"]
    met = result["targets"]["met"]
    ok = {True: "met", False: "**not met**"}
    lines = [
        "# Worker benchmark",
        "",
        f"One `fraudstream worker` process, learning off, {st['rows']:,} handbook transactions, "
        f"{st['partitions']} partitions, batch {st['batch_size']} / {st['batch_wait_ms']:g} ms; "
        f"Apache Kafka {m['kafka']} and redis-server on the same machine: {m['cores']} cores, "
        f"load {m['load_before']} before, {m['load_after']} after; Python {m['python']}; "
        f"commit {m['commit']}.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| worker throughput | {t['tx_per_s']:,} tx/s (10-90%: {t['tx_per_s_10_90']:,}) | "
        f"{result['targets']['tx_per_s']:,} ({ok[met['tx_per_s']]}) |",
        f"| worker CPU | {t['cpu_us_per_tx']['worker']} µs/tx, "
        f"{t['cpu_share']['worker']:.0%} of a core (waiting for a core "
        f"{t['worker_waiting_for_a_core_share']:.0%}) | |",
        f"| redis-server / broker CPU | {t['cpu_us_per_tx']['redis']} / "
        f"{t['cpu_us_per_tx']['kafka']} µs/tx | |",
        f"| worker join (start to first decision) | {t['join_s']} s | |",
        f"| aiokafka ceiling (consume + produce) | {c['records_per_s']:,} records/s | |",
        f"| the same with decision-sized values ({sized['value_bytes']} B) | "
        f"{sized['records_per_s']:,} records/s | |",
        f"| share of ceiling | {result['share_of_ceiling']:.0%} | "
        f"{result['targets']['share_of_ceiling']:.0%} ({ok[met['share_of_ceiling']]}) |",
    ]
    lines += _naive_and_scaling_rows(result, ok)
    for name, lat in result["latency"].items():
        a = lat["append_to_decision_received_ms"]
        target = (
            f"≤ {TARGET_P99_MS:g} ms ({ok[met['p99_ms_at_half_load']]})" if name == "50%" else ""
        )
        cpu = lat["cpu_us_per_tx"]
        harness = lat.get("harness_cpu_us_per_tx")
        lines.append(
            f"| latency at {name} load ({lat['achieved_tx_per_s']:,} tx/s), p50 / p95 / p99 | "
            f"{a['p50']} / {a['p95']} / {a['p99']} ms (CPU µs/tx: worker {cpu['worker']}, "
            f"redis-server {cpu['redis']}, broker {cpu['kafka']}"
            + (f", this benchmark {harness}" if harness is not None else "")
            + f") | {target} |"
        )
    lines += [
        "",
        "Latency: the transaction's broker append time to the decision's arrival at a consumer "
        "on the same machine (same clock); transactions from a producer lingering "
        f"{LOAD_LINGER_MS} ms. Rates: broker append times of the first and last output "
        "record. Figures on a shared machine are noisy; compare runs made together.",
        "",
    ]
    return "\n".join(lines)


def _naive_and_scaling_rows(result: dict[str, Any], ok: dict[bool, str]) -> list[str]:
    """The table rows of the naive loop and of two workers against one."""
    nv, sc = result["naive"], result["scaling"]
    two = sc["two_workers"]
    cpu = two["cpu_share"]
    return [
        f"| naive loop: aiokafka one event at a time, one Redis command per feature "
        f"({nv['redis_calls_per_tx']:g}/tx), send_and_wait, commit each ({nv['transactions']:,} "
        f"rows) | {nv['tx_per_s']:,} tx/s, {nv['cpu_us_per_tx']['worker']:,.0f} µs CPU/tx; the "
        f"worker is {result['speedup_over_naive']:g}x faster | |",
        f"| two workers, one group, 10-90% ({two['transactions']:,} rows) | "
        f"{two['tx_per_s_10_90']:,} tx/s, {sc['ratio']:g}x one worker's "
        f"{sc['one_worker']['tx_per_s_10_90']:,}; lost {two['lost']}, duplicates "
        f"{two['duplicates']} | {sc['target_ratio']:g}x ({ok[sc['met']]}) |",
        f"| two workers' CPU: worker / worker / redis-server / broker | {cpu['worker']:.0%} / "
        f"{cpu['worker_2']:.0%} / {cpu['redis']:.0%} / {cpu['kafka']:.0%} of a core; machine "
        f"{two['machine_busy_share']:.0%} busy, load {two['load_after']}; the target takes "
        f"{sc['cores_needed_for_target']:g} of {two['cores']} cores at "
        f"{sc['all_processes_cpu_us_per_tx']:g} µs/tx | |",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="the handbook CSV(.gz)")
    parser.add_argument("--out", type=Path, default=Path("bench/worker.json"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=25.0, help="length of each latency run")
    parser.add_argument("--fractions", default="0.25,0.5,0.9", help="latency loads, of the peak")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds per phase")
    parser.add_argument("--work", type=Path, help="logs and profiles (default: /tmp/...)")
    parser.add_argument(
        "--env", action="append", default=[], help="extra FRAUD_X=value for workers"
    )
    parser.add_argument("--commit", help="record this commit (when run from an exported tree)")
    args = parser.parse_args(argv)
    result = bench_worker(
        args.data,
        args.rows,
        fractions=[float(f) for f in args.fractions.split(",") if f],
        seconds=args.seconds,
        profile=args.profile,
        work=args.work,
        extra_env=dict(e.split("=", 1) for e in args.env),
    )
    if args.commit:
        result["machine"]["commit"] = args.commit
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
