"""The naive variant: what Kafka + Redis + the model stitched together by hand would do.

``bench_naive`` runs ``python -m bench.naive`` in its own process over a pre-loaded topic: a plain
aiokafka consumer in a group takes one transaction at a time, computes the product's features
(:class:`models.features.FeatureConfig` names, the same definitions as
:class:`models.features.InMemoryFeatureStore`) with one plain Redis command per feature (no Lua,
no pipelining), scores them with the same trained model, decides with the default policy, sends
the decision with ``send_and_wait`` and commits that one offset before taking the next. Set
beside the worker's throughput in the same run, it shows what batching, one Lua round trip per
entity and a pipelined producer buy.

Key layout of :class:`NaiveFeatures` (``<p>`` is the prefix; nothing is hash-tagged):

===============================  ====  ===============================================
``<p>:card:<card_id>``           ZSET  ``tx_id|terminal|amount`` by event time
``<p>:card:<card_id>:fraud``     ZSET  tx_ids of its fraud-labelled transactions, by time
``<p>:term:<merchant_id>``       ZSET  tx_ids by event time
``<p>:term:<merchant_id>:fraud`` ZSET  tx_ids of its fraud-labelled transactions, by time
``<p>:tx:<tx_id>``               STR   JSON ``{ts, card, terminal}`` for labels (with a TTL)
===============================  ====  ===============================================

Each entity's sets are trimmed below ``t - retention`` on every transaction. Re-adding the same
member makes a redelivered transaction count once; its features are computed again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from bench.probes import (
    APPEND_TIME,
    Usage,
    load_average,
    percentile,
    rate_between,
    read_all,
    wait_for_count,
)
from models.checkpoint import dumps, loads
from models.errors import InvalidRecord
from models.features import DAY, FeatureConfig, InMemoryFeatureStore
from models.policy import Policy
from models.records import Action, Transaction, transaction_from_wire
from models.scoring import Scorer
from processor.logs import configure
from processor.redis_store import ttl_for
from tests.integration.harness import ROOT
from tests.services.kafka import create_topics

if TYPE_CHECKING:
    from bench.worker import Bench

__all__ = ["NaiveFeatures", "bench_naive", "naive_loop"]

log = logging.getLogger("bench.naive")
PARTITIONS = 4
STAGES = ("consume", "features", "decide", "produce", "commit")


class NaiveFeatures:
    """The feature set computed with one plain Redis command per feature, one command at a time."""

    def __init__(
        self, client: aioredis.Redis, config: FeatureConfig | None = None, *, prefix: str = "nv"
    ) -> None:
        self.client = client
        self.config = config or FeatureConfig()
        self.prefix = prefix
        self.calls = 0  # Redis commands sent, each its own round trip
        self._index_ttl = round(
            ttl_for(max(self.config.card_retention, self.config.terminal_retention))
        )

    async def _call(self, command: Awaitable[Any]) -> Any:
        """Await one Redis command (its own round trip) and count it."""
        self.calls += 1
        return await command

    async def update_one(self, tx: Transaction) -> dict[str, float]:
        """Count ``tx`` (once) on its card and terminal and return its features."""
        cfg, p, t, r = self.config, self.prefix, tx.ts, self.client
        card, term = f"{p}:card:{tx.card_id}", f"{p}:term:{tx.merchant_id}"
        index = orjson.dumps({"ts": t, "card": tx.card_id, "terminal": tx.merchant_id})
        await self._call(r.set(f"{p}:tx:{tx.tx_id}", index, ex=self._index_ttl))
        await self._call(r.zadd(card, {f"{tx.tx_id}|{tx.merchant_id}|{tx.amount!r}": t}))
        await self._call(r.zadd(term, {tx.tx_id: t}))
        await self._call(r.zremrangebyscore(card, "-inf", f"({t - cfg.card_retention!r}"))
        await self._call(r.zremrangebyscore(term, "-inf", f"({t - cfg.terminal_retention!r}"))
        seconds = int(t)
        values: dict[str, float] = {
            "amount": tx.amount,
            "is_weekend": 1.0 if (seconds // 86_400 + 3) % 7 >= 5 else 0.0,
            "is_night": 1.0 if (seconds % 86_400) // 3_600 <= cfg.night_last_hour else 0.0,
        }
        values |= await self._card_features(tx, card)
        values |= await self._terminal_features(t, term)
        values["log_amount"] = math.log1p(tx.amount)
        return {name: values[name] for name in cfg.names}  # the order the product's store gives

    async def _card_features(self, tx: Transaction, card: str) -> dict[str, float]:
        """The card's windows over ``(t - w, t]``: the current transaction counts."""
        cfg, t, r = self.config, tx.ts, self.client
        out: dict[str, float] = {}
        for w in cfg.card_windows:
            out[f"card_count_{w}d"] = float(await self._call(r.zcount(card, *_window(t, w))))
        for w in cfg.card_windows:
            amounts = _amounts(await self._call(r.zrangebyscore(card, *_window(t, w))))
            out[f"card_mean_amount_{w}d"] = sum(amounts) / len(amounts) if amounts else 0.0
        longest = max(cfg.card_windows)
        amounts = _amounts(await self._call(r.zrangebyscore(card, *_window(t, longest))))
        previous, spent = len(amounts) - 1, sum(amounts) - tx.amount
        ratio = tx.amount / (spent / previous) if previous and spent > 0 else 1.0
        out[f"card_amount_ratio_{longest}d"] = ratio
        out["card_hours_since_last"] = await self._hours_since_last(tx, card, longest * DAY)
        days = cfg.distinct_terminals_days
        members = await self._call(r.zrangebyscore(card, *_window(t, days)))
        out[f"card_distinct_terminals_{days}d"] = float(len({m.split(b"|")[1] for m in members}))
        frauds = await self._call(r.zcount(f"{card}:fraud", *_window(t, longest)))
        out[f"card_known_frauds_{longest}d"] = float(frauds)
        return out

    async def _hours_since_last(self, tx: Transaction, card: str, longest: float) -> float:
        """Hours back to the card's previous payment within the longest window (capped)."""
        lo, t = f"({tx.ts - longest!r}", repr(tx.ts)
        newest = await self._call(
            self.client.zrevrangebyscore(card, t, lo, start=0, num=2, withscores=True)
        )
        mine = tx.tx_id.encode() + b"|"
        gap = longest
        for member, score in newest:  # this payment and the one before it, newest first
            if not member.startswith(mine):
                gap = tx.ts - score
                break
        return min(gap, longest) / 3_600.0

    async def _terminal_features(self, t: float, term: str) -> dict[str, float]:
        """The terminal's windows over ``(t - d - w, t - d]``: only labels known by then."""
        cfg, r = self.config, self.client
        upper = t - cfg.label_delay_days * DAY
        counts: dict[int, int] = {}
        out: dict[str, float] = {}
        for w in cfg.terminal_windows:
            counts[w] = await self._call(r.zcount(term, *_window(upper, w)))
            out[f"terminal_count_{w}d"] = float(counts[w])
        for w in cfg.terminal_windows:
            frauds = await self._call(r.zcount(f"{term}:fraud", *_window(upper, w)))
            out[f"terminal_risk_{w}d"] = frauds / counts[w] if counts[w] else 0.0
        return out

    async def record_label(self, tx_id: str, is_fraud: bool) -> bool:
        """Mark ``tx_id`` fraud (or not) on its card and terminal; False if it is not held."""
        raw = await self._call(self.client.get(f"{self.prefix}:tx:{tx_id}"))
        if raw is None:
            return False
        index = orjson.loads(raw)
        keys = (
            f"{self.prefix}:card:{index['card']}:fraud",
            f"{self.prefix}:term:{index['terminal']}:fraud",
        )
        for key in keys:
            if is_fraud:
                await self._call(self.client.zadd(key, {tx_id: index["ts"]}))
            else:
                await self._call(self.client.zrem(key, tx_id))
        return True


def _window(t: float, days: float) -> tuple[str, str]:
    """ZCOUNT/ZRANGEBYSCORE bounds of ``(t - days, t]``."""
    return f"({t - days * DAY!r}", repr(t)


def _amounts(members: list[bytes]) -> list[float]:
    return [float(m.rsplit(b"|", 1)[1]) for m in members]


async def naive_loop(
    bootstrap: str,
    redis_url: str,
    source: str,
    sinks: tuple[str, str],
    group: str,
    prefix: str,
    checkpoint_path: Path,
    count: int,
    config: FeatureConfig | None = None,
) -> dict[str, float]:
    """One event at a time: decode, features, score, decide, ``send_and_wait``, commit.

    ``sinks`` are the decisions and escalations topics. Returns how many transactions were
    decided and skipped as invalid, how many Redis commands were sent, and the wall seconds
    spent in each of ``STAGES``.
    """
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    client = aioredis.from_url(redis_url)
    features = NaiveFeatures(client, config, prefix=prefix)
    checkpoint = loads(checkpoint_path.read_bytes())
    policy = Policy.load(known_features=features.config.names)
    # The Scorer's own store goes unused: decide() takes the features computed in Redis here.
    scorer = Scorer(InMemoryFeatureStore(features.config), checkpoint, policy)
    log.info("naive loop starting", extra={"source": source, "group": group, "count": count})
    done = skipped = 0
    spent = dict.fromkeys(STAGES, 0.0)
    await consumer.start()
    await producer.start()
    try:
        while done + skipped < count:
            began = time.perf_counter()
            m = await consumer.getone()
            spent["consume"] += time.perf_counter() - began
            if await _handle(m, features, scorer, producer, sinks, spent):
                done += 1
            else:
                skipped += 1
            began = time.perf_counter()
            await consumer.commit({TopicPartition(m.topic, m.partition): m.offset + 1})
            spent["commit"] += time.perf_counter() - began
    finally:
        await producer.stop()
        await consumer.stop()
        await client.aclose()
    log.info("naive loop done", extra={"decided": done, "skipped": skipped})
    return {"decided": done, "skipped": skipped, "redis_calls": features.calls} | {
        f"{stage}_s": round(seconds, 3) for stage, seconds in spent.items()
    }


async def _handle(
    m: ConsumerRecord[bytes, bytes],
    features: NaiveFeatures,
    scorer: Scorer,
    producer: AIOKafkaProducer,
    sinks: tuple[str, str],
    spent: dict[str, float],
) -> bool:
    """Decide one record and send its decision (and case); False if it is not a transaction.

    ``spent`` adds up the wall time of each stage, to show where a one-at-a-time loop waits.
    """
    started = time.time()
    began = time.perf_counter()
    try:
        tx = transaction_from_wire(orjson.loads(m.value))
    except (orjson.JSONDecodeError, InvalidRecord) as exc:
        extra = {"partition": m.partition, "offset": m.offset, "error": str(exc)}
        log.warning("record skipped", extra=extra)
        return False
    values = await features.update_one(tx)
    mark = time.perf_counter()
    spent["features"] += mark - began
    decision = scorer.decide(tx, values, scorer.score(values), started)
    wire = decision.to_wire()
    value = orjson.dumps(wire)
    began = time.perf_counter()
    spent["decide"] += began - mark
    await producer.send_and_wait(sinks[0], value, key=m.key)
    if decision.action is not Action.APPROVE:  # the case, as the worker sends it
        case = orjson.dumps({**wire, "transaction": tx.to_wire()})
        await producer.send_and_wait(sinks[1], case, key=m.key)
    spent["produce"] += time.perf_counter() - began
    return True


async def bench_naive(bench: Bench, topic: str, n: int) -> dict[str, Any]:
    """The naive loop in its own process over the first ``n`` records it takes from ``topic``.

    ``topic`` is pre-loaded (``bench_throughput`` returns it); its own group, Redis prefix and
    output topics keep it apart from the worker. Rates come from the decisions' append times.
    """
    stem = f"{topic}.naive-{uuid.uuid4().hex[:6]}"
    sinks = (f"{stem}-decisions", f"{stem}-escalations")
    await create_topics(bench.bootstrap, dict.fromkeys(sinks, PARTITIONS), config=APPEND_TIME)
    checkpoint = bench.work / "naive-checkpoint.bin"
    checkpoint.write_bytes(dumps(bench.checkpoint))
    args = [bench.bootstrap, bench.redis_url, topic, *sinks, f"{stem}-group", stem]
    argv = [sys.executable, "-m", "bench.naive", *args, str(checkpoint), str(n)]
    log_path = bench.work / "naive.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        started = time.time()

        def alive() -> bool:
            return proc.poll() is None

        try:
            await wait_for_count(bench.bootstrap, sinks[0], PARTITIONS, 1, alive=alive)
            load_before = load_average()
            usage = Usage({"worker": proc.pid, **bench.service_pids})
            await wait_for_count(bench.bootstrap, sinks[0], PARTITIONS, n, alive=alive)
            used = usage.done(n)
            load_after = load_average()
        finally:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    summary = next(
        orjson.loads(line)
        for line in reversed(log_path.read_bytes().splitlines())
        if line.startswith(b'{"decided"')
    )
    records = await read_all(bench.bootstrap, sinks[0], PARTITIONS)
    stamps = [ts for ts, _ in records]
    docs = [orjson.loads(v) for _, v in records]
    span = (max(stamps) - min(stamps)) / 1000.0
    return {
        "topic": topic,
        "transactions": n,
        "rows_note": f"{n:,} rows: a loop this slow gets fewer rows than the worker",
        "decisions": len(records),
        "distinct_tx": len({d["tx_id"] for d in docs}),
        "join_s": round(min(stamps) / 1000.0 - started, 2),
        "seconds": round(span, 2),
        "tx_per_s": round((len(stamps) - 1) / span),
        "tx_per_s_10_90": round(rate_between(stamps, 0.1, 0.9)),
        "redis_calls_per_tx": round(summary["redis_calls"] / max(summary["decided"], 1), 1),
        # Where the loop's wall time goes, per transaction: mostly waiting on round trips.
        "wall_us_per_tx": {
            stage: round(summary[f"{stage}_s"] / max(summary["decided"], 1) * 1e6)
            for stage in STAGES
        },
        **used,
        "latency_ms_p50": round(percentile([d["latency_ms"] for d in docs], 0.5), 2),
        "load_before": load_before,
        "load_after": load_after,
    }


def main(argv: list[str]) -> int:
    """``python -m bench.naive BOOTSTRAP REDIS SOURCE DECISIONS ESCALATIONS GROUP PREFIX
    CHECKPOINT COUNT``; prints a JSON summary line when done."""
    bootstrap, redis_url, source, decisions, escalations, group, prefix, path, count = argv
    configure(json=True)
    summary = asyncio.run(
        naive_loop(
            bootstrap,
            redis_url,
            source,
            (decisions, escalations),
            group,
            prefix,
            Path(path),
            int(count),
        )
    )
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
