"""The SSE fan-out benchmark: many live clients on one API process, delivery lag and memory.

Run with ``python -m bench.sse --out bench/sse.json`` (``bench/sse.md`` is written beside it). It
starts its own Apache Kafka broker and redis-server (``tests/services``), then per run:

1. one ``fraudstream api`` in a child process, as an operator runs it, on fresh topics;
2. N clients (default 1,000) on ``GET /v1/decisions/stream`` with a bearer token, spread over one
   or two client processes of raw asyncio sockets (:mod:`bench.sse_clients`: a few byte scans
   per read, no per-event parsing but in one reference client per process), so the client side
   costs little and its CPU is reported beside the API's;
3. decisions produced open-loop at R/s (default 200) for T seconds (default 30) over 4 partitions,
   each stamped with its production time; per client per event, the delivery lag is the arrival
   time minus that stamp (same machine, same clock), and minus the broker's append time too.

Every client must get every event, or a ``gap`` event that counts what it missed: both are
counted. Each process's reference client checks every partition's order; every other client's
reads must continue exactly where its previous read ended in the reference order. The API's
RSS is read before any client, with the clients connected and idle, and under load; memory per
client is (RSS idle with N clients - RSS with none) / N. CPU shares of the API, the client
processes, the producer, the broker and the machine's other work come from ``/proc``, with how
long each waited for a core. Each run records the load average around it: the machine is
shared, so the default is two runs. ``--profile S`` records py-spy (folded stacks) of the API
during each run's load; ``--api-tree DIR`` runs the API from another source tree (an exported
commit), for before/after figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from bench.probes import (
    APPEND_TIME,
    commit_id,
    cpu_seconds,
    load_average,
    py_spy,
    read_all,
    runqueue_wait,
)
from bench.sse_clients import FIELDS_PREFIX
from tests.integration.harness import ROOT
from tests.services.kafka import KafkaBroker, create_topics
from tests.services.ports import free_port
from tests.services.redis import RedisServer

TARGET_CLIENTS = 1_000
TARGET_RATE = 200.0
TARGET_P99_MS = 250.0
PARTITIONS = 4
STREAM = "/v1/decisions/stream"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``/proc/<pid>/status``), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (system: the socket writes' copies)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, ``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def decision_bytes(seq: int, sent_at: float) -> bytes:
    """A decision shaped as the worker writes it (about 900 bytes), stamped with ``sent_at``.

    ``bench_seq`` and ``bench_sent_at`` come first and together, so the clients find them with
    one regular expression instead of parsing JSON.
    """
    score = (seq % 97) / 97
    action = "decline" if score > 0.9 else "review" if score > 0.7 else "approve"
    record = {
        "tx_id": f"sse-{seq}",
        **{FIELDS_PREFIX + "seq": seq, FIELDS_PREFIX + "sent_at": round(sent_at, 6)},
        "ts": "2026-01-01T00:00:00.000Z",
        "card_id": f"card-{seq % 5_000}",
        "merchant_id": f"terminal-{seq % 2_000}",
        "amount": round(10 + (seq % 500) * 1.37, 2),
        "currency": "EUR",
        "score": round(score, 4),
        "action": action,
        "reasons": [
            {"code": "model_score", "text": "the model's score is high", "weight": round(score, 4)},
            {
                "code": "amount_vs_card_mean",
                "text": "amount far above the card's mean",
                "weight": 0.2,
            },
        ],
        "features": {f"feature_{i:02d}": round((seq * (i + 3)) % 1000 / 7.0, 4) for i in range(20)},
        "model_version": "m-00000042",
        "policy_version": "p-7f3a9c2e",
        "decided_at": "2026-01-01T00:00:00.010Z",
        "latency_ms": 3.1,
    }
    return orjson.dumps(record)


class ApiProcess:
    """``fraudstream api`` in a child process on fresh topics, with a viewer token."""

    def __init__(
        self,
        bootstrap: str,
        redis_url: str,
        work: Path,
        extra: dict[str, str],
        tree: Path = ROOT,
    ) -> None:
        self.tree = tree
        self.name = f"sse{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.bootstrap = bootstrap
        self.env = {
            "FRAUD_KAFKA_BOOTSTRAP": bootstrap,
            "FRAUD_REDIS_URL": redis_url,
            "FRAUD_TOPIC_DECISIONS": f"{self.name}.decisions",
            "FRAUD_TOPIC_NARRATIVES": f"{self.name}.narratives",
            "FRAUD_TOPIC_LABELS": f"{self.name}.labels",
            "FRAUD_REDIS_PREFIX": self.name,
            "FRAUD_API_TOKENS": f"{self.token}:viewer:bench",
            "FRAUD_LOG_JSON": "true",
            **extra,
        }
        self.log_path = work / f"api-{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def decisions(self) -> str:
        return self.env["FRAUD_TOPIC_DECISIONS"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        topics = {self.decisions: PARTITIONS, self.env["FRAUD_TOPIC_NARRATIVES"]: 1}
        topics[self.env["FRAUD_TOPIC_LABELS"]] = 1
        await create_topics(self.bootstrap, topics, config=APPEND_TIME)
        argv = [sys.executable, "-m", "processor.cli", "api", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, env={**os.environ, **self.env}, cwd=self.tree, stdout=log, stderr=log
            )
        await self._ready(60.0)

    async def _ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the API exited: {self.log_path.read_text()[-2000:]}")
                try:
                    answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if answer.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the API was not ready within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ClientProcess:
    """One process of SSE clients (``bench.sse_clients``), driven over its stdin and stdout."""

    def __init__(self, api: ApiProcess, count: int, out: Path) -> None:
        argv = [sys.executable, "-m", "bench.sse_clients", "--port", str(api.port)]
        argv += ["--clients", str(count), "--partitions", str(PARTITIONS), "--out", str(out)]
        self.out = out
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "BENCH_SSE_TOKEN": api.token},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def expect_line(self, word: str, timeout: float) -> None:
        """Wait for the process to print ``word`` (``ready`` once every client is subscribed)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if line.strip() != word.encode():
            raise RuntimeError(f"client process said {line!r}, expected {word!r}")

    def expect(self, events: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"expect {events}\n".encode())
        self.proc.stdin.flush()

    def result(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """The tallies, and per delivered event its seq and arrival time."""
        self.proc.wait(30)
        summary = orjson.loads(self.out.with_suffix(".json").read_bytes())
        arrays = np.load(self.out.with_suffix(".npz"))
        return summary, arrays["seq"], arrays["at"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Sampler:
    """CPU seconds of the named processes between two points, and the API's peak RSS."""

    def __init__(self, pids: dict[str, list[int]], api_pid: int) -> None:
        self.pids = pids
        self.api_pid = api_pid
        self.began = time.monotonic()
        self.cpu = self._cpu()
        self.machine = machine_busy_seconds()
        self.waited = self._waited()
        self.api_split = user_system_seconds(api_pid)
        self.peak_rss = rss_bytes(api_pid)

    def _cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}

    def _waited(self) -> dict[str, float]:
        return {name: sum(runqueue_wait(p) for p in pids) for name, pids in self.pids.items()}

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes(self.api_pid))

    def done(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.began
        used = {name: c - self.cpu[name] for name, c in self._cpu().items()}
        waited = {name: w - self.waited[name] for name, w in self._waited().items()}
        busy = machine_busy_seconds() - self.machine
        user, system = (
            b - a for a, b in zip(self.api_split, user_system_seconds(self.api_pid), strict=True)
        )
        used["others"] = max(0.0, busy - sum(used.values()))
        return {
            "seconds": round(elapsed, 2),
            "cpu_share": {name: round(c / elapsed, 3) for name, c in used.items()},
            "api_user_system_share": [round(user / elapsed, 3), round(system / elapsed, 3)],
            "machine_busy_cores": round(busy / elapsed, 2),
            # Runnable but not running (main threads): starved on a busy machine, not slow.
            "waiting_for_a_core_share": {name: round(w / elapsed, 3) for name, w in waited.items()},
        }


async def produce(
    bootstrap: str, topic: str, rate: float, seconds: float, sampler: Sampler, first: int = 0
) -> dict[str, Any]:
    """Decisions open-loop at ``rate``/s for ``seconds``, partition ``seq % PARTITIONS``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    total = int(rate * seconds)
    behind = 0.0
    try:
        t0 = time.monotonic()
        next_sample = t0
        seq, total = first, first + total
        while seq < total:
            now = time.monotonic()
            due = min(total, first + int((now - t0) * rate) + 1)
            behind = max(behind, (due - seq) / rate)
            while seq < due:
                value = decision_bytes(seq, time.time())
                key = f"card-{seq % 5_000}".encode()
                await producer.send(topic, value, key=key, partition=seq % PARTITIONS)
                seq += 1
            if now >= next_sample:
                sampler.sample()
                next_sample = now + 1.0
            await asyncio.sleep(max(0.0, t0 + (seq - first) / rate - time.monotonic()))
        sent_s = time.monotonic() - t0
        await producer.flush()
    finally:
        await producer.stop()
    return {
        "events": total - first,
        "seconds": round(sent_s, 2),
        "achieved_rate": round((total - first) / sent_s, 1),
        "producer_max_behind_ms": round(behind * 1000, 1),
    }


async def production_times(bootstrap: str, topic: str, events: int) -> np.ndarray:
    """Per seq of the load phase: its production stamp and its broker append time (seconds)."""
    times = np.full((events, 2), np.nan)
    for append_ms, value in await read_all(bootstrap, topic, PARTITIONS):
        record = orjson.loads(value)
        seq = record[FIELDS_PREFIX + "seq"]
        if 0 <= seq < events:
            times[seq] = (record[FIELDS_PREFIX + "sent_at"], append_ms / 1000.0)
    return times


def lag_summary(lags: np.ndarray) -> dict[str, float]:
    """p50 / p95 / p99 / max of the lags in milliseconds (nearest rank)."""
    if not len(lags):
        return {}
    ms = lags * 1000.0
    out = {
        f"p{q}": round(float(np.quantile(ms, q / 100, method="inverted_cdf")), 1)
        for q in (50, 95, 99)
    }
    return out | {"max": round(float(ms.max()), 1)}


async def one_run(
    broker: KafkaBroker,
    redis: RedisServer,
    work: Path,
    *,
    clients: int,
    processes: int,
    rate: float,
    seconds: float,
    profile: float,
    extra_env: dict[str, str],
    api_tree: Path = ROOT,
) -> dict[str, Any]:
    """A fresh API, N clients, T seconds of decisions at R/s: lag, delivery, memory, CPU."""
    load_before = load_average()
    api = ApiProcess(broker.bootstrap, redis.url, work, extra_env, api_tree)
    await api.start()
    procs: list[ClientProcess] = []
    try:
        # A handful of decisions before any client, so the API's first-use costs are paid.
        warm = await produce(
            broker.bootstrap, api.decisions, 50.0, 1.0, Sampler({}, api.pid), first=10**9
        )
        await asyncio.sleep(3.0)
        rss_none = rss_bytes(api.pid)
        connect_began = time.monotonic()
        shares = [clients // processes + (i < clients % processes) for i in range(processes)]
        procs = [
            ClientProcess(api, n, work / f"clients-{api.name}-{i}") for i, n in enumerate(shares)
        ]
        await asyncio.gather(*(p.expect_line("ready", 180.0) for p in procs))
        connect_s = time.monotonic() - connect_began
        await asyncio.sleep(3.0)
        rss_idle = rss_bytes(api.pid)
        pids = {
            "api": [api.pid],
            "clients": [p.proc.pid for p in procs],
            "producer": [os.getpid()],
            "broker": [getattr(getattr(broker, "_process", None), "pid", 0) or 0],
        }
        sampler = Sampler(pids, api.pid)
        spy = (
            py_spy(api.pid, min(profile, seconds), work / f"profile-{api.name}.txt")
            if profile
            else None
        )
        produced = await produce(broker.bootstrap, api.decisions, rate, seconds, sampler)
        usage = sampler.done()
        rss_load = rss_bytes(api.pid)
        for p in procs:
            p.expect(produced["events"])
        await asyncio.gather(*(p.expect_line("done", 120.0) for p in procs))
        results = [p.result() for p in procs]
        load_after = load_average()
        if spy is not None:
            spy.wait(60)
    finally:
        for p in procs:
            p.kill()
        api.stop()
    seqs = np.concatenate([seq for _, seq, _ in results])
    arrived = np.concatenate([at for _, _, at in results])
    times = await production_times(broker.bootstrap, api.decisions, produced["events"])
    ours = (seqs >= 0) & (seqs < len(times))
    seqs, arrived = seqs[ours], arrived[ours]
    lags = arrived - times[seqs, 0]
    # The producer's own delay (stamp to broker append) is told apart from the API's part.
    from_append = arrived - times[seqs, 1]
    tallies = [summary for summary, _, _ in results]
    # Per second of the load phase, the p99 of what was produced in it: a spike that lines up
    # with the machine's other work shows in it.
    second = np.floor(times[seqs, 0] - times[:, 0].min()).astype(np.int64)
    p99_by_second = [
        round(float(np.quantile(lags[second == s], 0.99, method="inverted_cdf")) * 1000, 1)
        for s in range(int(second.max(initial=-1)) + 1)
        if np.any(second == s)
    ]
    expected = produced["events"] * clients
    received = sum(t["received"] for t in tallies)
    missed = sum(t["missed"] for t in tallies)
    return {
        "api": api.name,
        "clients": clients,
        "client_processes": processes,
        "connect_seconds": round(connect_s, 2),
        "warm_events": warm["events"],
        "produced": produced,
        "delivery_lag_ms": lag_summary(lags),
        "append_to_client_ms": lag_summary(from_append),
        "stamp_to_append_ms": lag_summary(times[:, 1] - times[:, 0]),
        "lag_p99_ms_by_second": p99_by_second,
        "events": {
            "expected": expected,
            "delivered": received,
            "missed_in_gaps": missed,
            "gap_events": sum(t["gaps"] for t in tallies),
            "unaccounted": expected - received - missed,
            "discontinuities": sum(t["discontinuities"] for t in tallies),
            "reference_out_of_order": sum(t["reference_out_of_order"] for t in tallies),
            "unresolved": sum(t["unresolved"] for t in tallies),
            "not_ours": int((~ours).sum()),
            "clients_complete": sum(t["complete"] for t in tallies),
            "clients_closed": sum(t["closed"] for t in tallies),
        },
        "api_rss_mib": {
            "no_clients": round(rss_none / 2**20, 1),
            "clients_idle": round(rss_idle / 2**20, 1),
            "under_load_end": round(rss_load / 2**20, 1),
            "under_load_peak": round(sampler.peak_rss / 2**20, 1),
        },
        "memory_per_client_kib": round((rss_idle - rss_none) / clients / 1024, 1),
        **usage,
        "client_cpu_per_process": [t["cpu_seconds"] for t in tallies],
        "profiled": bool(profile),
        "load_before": load_before,
        "load_after": load_after,
    }


async def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    load_before = load_average()
    runs = []
    with KafkaBroker() as broker, RedisServer() as redis:
        for _ in range(args.runs):
            runs.append(
                await one_run(
                    broker,
                    redis,
                    work,
                    clients=args.clients,
                    processes=args.client_processes,
                    rate=args.rate,
                    seconds=args.seconds,
                    profile=args.profile,
                    extra_env=dict(e.split("=", 1) for e in args.env),
                    api_tree=args.api_tree or ROOT,
                )
            )
        kafka_version = broker.version
    worst = max(r["delivery_lag_ms"].get("p99", float("inf")) for r in runs)
    return {
        "machine": {
            "cores": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_average(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": args.commit or commit_id(ROOT),
            "kafka": kafka_version,
        },
        "settings": {
            "clients": args.clients,
            "client_processes": args.client_processes,
            "rate": args.rate,
            "seconds": args.seconds,
            "partitions": PARTITIONS,
            "runs": args.runs,
            "extra_env": dict(e.split("=", 1) for e in args.env),
            "api_tree": str(args.api_tree or ROOT),
        },
        "runs": runs,
        "targets": {
            "clients": TARGET_CLIENTS,
            "rate": TARGET_RATE,
            "p99_ms": TARGET_P99_MS,
            "met": bool(
                args.clients >= TARGET_CLIENTS
                and args.rate >= TARGET_RATE
                and worst <= TARGET_P99_MS
                and all(r["events"]["unaccounted"] == 0 for r in runs)
            ),
        },
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a short Markdown page: one table row per run."""
    m, s, t = result["machine"], result["settings"], result["targets"]
    lines = [
        "# SSE fan-out benchmark",
        "",
        f"One `fraudstream api` process; {s['clients']:,} clients on `{STREAM}` in "
        f"{s['client_processes']} client process(es); {s['rate']:g} decisions/s for "
        f"{s['seconds']:g} s over {s['partitions']} partitions; Apache Kafka {m['kafka']} and "
        f"redis-server on the same machine: {m['cores']} cores; Python {m['python']}; "
        f"commit {m['commit']}.",
        "",
        "| run | load before / after | lag p50 / p95 / p99 / max (ms) | p99 of each second: "
        "median / worst (ms) | delivered / expected | missed (gaps) | API RSS none / idle / "
        "load (MiB) | per client | CPU API / clients / broker / other work | API waiting for a "
        "core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["runs"], 1):
        lag, ev, rss, cpu = r["delivery_lag_ms"], r["events"], r["api_rss_mib"], r["cpu_share"]
        seconds = r["lag_p99_ms_by_second"] or [float("nan")]
        lines.append(
            f"| {i} | {r['load_before'][0]} / {r['load_after'][0]} | {lag.get('p50')} / "
            f"{lag.get('p95')} / {lag.get('p99')} / {lag.get('max')} | "
            f"{float(np.median(seconds)):.1f} / {max(seconds):.1f} | {ev['delivered']:,} / "
            f"{ev['expected']:,} | {ev['missed_in_gaps']:,} ({ev['gap_events']}) | "
            f"{rss['no_clients']} / {rss['clients_idle']} / {rss['under_load_peak']} | "
            f"{r['memory_per_client_kib']} KiB | {cpu['api']:.0%} / {cpu['clients']:.0%} / "
            f"{cpu['broker']:.0%} / {cpu['others']:.0%} | "
            f"{r['waiting_for_a_core_share']['api']:.0%} |"
        )
    verdict = "met" if t["met"] else "**not met**"
    lines += [
        "",
        f"Target: >= {t['clients']:,} clients on one API process, p99 delivery lag <= "
        f"{t['p99_ms']:g} ms at {t['rate']:g} decisions/s, every event delivered or counted in "
        f"a gap: {verdict}.",
        "",
        "Lag: the decision's production time (stamped in the record just before the send) to its "
        "arrival at a client, same clock; the p99 of each second of production shows which "
        "seconds the machine's other work spoiled. Memory per client: (API RSS with the clients "
        "connected and idle - RSS with none) / clients. CPU: shares of one core over the load "
        "phase; other work is the machine's busy time less this benchmark's processes. The "
        "client processes, the broker and the producer share the two cores with the API. "
        "Figures on a shared machine are noisy: compare the runs' load averages.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sse", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/sse.json"))
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="decisions per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load phase")
    parser.add_argument("--runs", type=int, default=2, help="fresh API per run, same broker")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds per run")
    parser.add_argument("--work", type=Path, help="logs, samples, profiles (default /tmp/...)")
    parser.add_argument(
        "--env", action="append", default=[], help="extra FRAUD_X=value for the API"
    )
    parser.add_argument("--commit", help="record this commit (when run from an exported tree)")
    parser.add_argument(
        "--api-tree", type=Path, help="run the API from this source tree (before/after figures)"
    )
    args = parser.parse_args(argv)
    work = args.work or Path(f"/tmp/fraudstream-bench-sse-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_run(args, work))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
