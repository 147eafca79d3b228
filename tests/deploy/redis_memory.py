"""Measure the Redis feature store's memory per card, per terminal and per transaction.

Runs :class:`processor.redis_store.RedisFeatureStore` over the first ``--days`` of the handbook's
payments (fraud labels recorded when they become known, a label delay later, as the worker does)
against a real ``redis-server`` started here, then reads ``INFO memory`` and ``MEMORY USAGE`` of
every card and terminal key and of a sample of the transaction index keys. The capacity plan in
``k8s/README.md`` quotes its output::

    python -m tests.deploy.redis_memory --days 45 --out /tmp/redis-memory.json

A run past the longest retention (card 30 days, terminal 37 days) is needed for the card and
terminal keys to reach their steady size: the store trims them by event time. The transaction
index entries expire by wall-clock TTL instead (retention plus a quarter, about 46 days), so in a
replay they all stay; the per-entry size is what the plan multiplies by the live rate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from models.features import FeatureConfig
from models.records import Transaction
from processor.redis_store import RedisFeatureStore, ttl_for
from replay.readers import PRESETS, BadRow, Row, read_transactions
from tests.services.redis import RedisServer

log = logging.getLogger("fraudstream.deploy.redis_memory")

ROOT = Path(__file__).resolve().parents[2]
HANDBOOK = ROOT.parent / "shared" / "data" / "handbook-2018-04-01_2018-07-31.csv.gz"
DAY = 86_400.0
BATCH = 500
KINDS = ("card", "term", "tx")


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """What one run measured; bytes are Redis' own accounting (``MEMORY USAGE``, ``INFO``)."""

    days: float
    transactions: int
    frauds_labelled: int
    cards: int
    terminals: int
    tx_index_keys: int
    bytes_per_card: float
    bytes_per_terminal: float
    bytes_per_tx_index: float
    used_memory_delta: int
    used_memory_dataset: int
    tx_per_card_day: float
    tx_index_ttl_days: float
    bytes_per_million_cards: float
    redis_version: str
    seconds: float


def handbook_rows(path: Path, days: float) -> Iterator[Row]:
    """The file's good rows of its first ``days`` of event time."""
    rows = (r for r in read_transactions(path, PRESETS["handbook"]) if not isinstance(r, BadRow))
    first = next(rows)
    end = first.tx.ts + days * DAY
    return itertools.takewhile(lambda r: r.tx.ts < end, itertools.chain([first], rows))


async def feed(store: RedisFeatureStore, rows: Iterator[Row], delay_days: float) -> tuple[int, int]:
    """Count every row in batches; record each fraud once its label is due (event time)."""
    due: deque[tuple[float, str]] = deque()
    batch: list[Transaction] = []
    count = frauds = 0
    for row in rows:
        if (due and due[0][0] <= row.tx.ts) or len(batch) == BATCH:
            await store.update_many(batch)
            batch = []
        labels: list[tuple[str, bool]] = []
        while due and due[0][0] <= row.tx.ts:
            labels.append((due.popleft()[1], True))
        if labels:
            frauds += sum(await store.record_labels(labels))
        batch.append(row.tx)
        count += 1
        if row.is_fraud:
            due.append((row.tx.ts + delay_days * DAY, row.tx.tx_id))
    await store.update_many(batch)
    return count, frauds


async def key_sizes(client: aioredis.Redis, prefix: str, tx_sample: int) -> dict[str, list[int]]:
    """``MEMORY USAGE`` (exact, ``SAMPLES 0``) of the store's keys, grouped by entity kind.

    A card's or terminal's three keys are summed into one figure per entity; index keys are
    sampled (the first ``tx_sample`` that ``SCAN`` returns).
    """
    names: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
    async for key in client.scan_iter(match=f"{prefix}:{{*", count=5_000):
        kind = key.split(b"{", 1)[1].split(b":", 1)[0].decode()
        if kind in names and (kind != "tx" or len(names["tx"]) < tx_sample):
            names[kind].append(key)
    sizes: dict[str, list[int]] = {}
    for kind, keys in names.items():
        per_entity: dict[bytes, int] = {}
        for start in range(0, len(keys), 5_000):
            chunk = keys[start : start + 5_000]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            for key, size in zip(chunk, await pipe.execute(), strict=True):
                entity = key.rsplit(b"}", 1)[0]
                per_entity[entity] = per_entity.get(entity, 0) + int(size or 0)
        sizes[kind] = list(per_entity.values())
    return sizes


def mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


async def measure(url: str, path: Path, days: float, tx_sample: int) -> MemoryReport:
    """Feed the store from an empty Redis and read back what it holds."""
    began = time.monotonic()
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
        before = (await client.info("memory"))["used_memory"]
        config = FeatureConfig()
        store = RedisFeatureStore(client, config, prefix="mem")
        count, frauds = await feed(store, handbook_rows(path, days), config.label_delay_days)
        memory = await client.info("memory")
        server = await client.info("server")
        sizes = await key_sizes(client, "mem", tx_sample)
        tx_keys = await client.dbsize() - len(sizes["card"]) - len(sizes["term"])
    finally:
        await client.aclose()
    cards = len(sizes["card"])
    per_card, per_term, per_tx = mean(sizes["card"]), mean(sizes["term"]), mean(sizes["tx"])
    rate = count / cards / days if cards else 0.0
    ttl_days = ttl_for(max(config.card_retention, config.terminal_retention)) / DAY
    terms_per_card = len(sizes["term"]) / cards if cards else 0.0
    per_million = 1e6 * (per_card + terms_per_card * per_term + rate * ttl_days * per_tx)
    return MemoryReport(
        days=days,
        transactions=count,
        frauds_labelled=frauds,
        cards=cards,
        terminals=len(sizes["term"]),
        tx_index_keys=tx_keys,
        bytes_per_card=round(per_card, 1),
        bytes_per_terminal=round(per_term, 1),
        bytes_per_tx_index=round(per_tx, 1),
        used_memory_delta=int(memory["used_memory"]) - int(before),
        used_memory_dataset=int(memory.get("used_memory_dataset", 0)),
        tx_per_card_day=round(rate, 3),
        tx_index_ttl_days=round(ttl_days, 2),
        bytes_per_million_cards=round(per_million),
        redis_version=str(server["redis_version"]),
        seconds=round(time.monotonic() - began, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=HANDBOOK, help="handbook CSV(.gz)")
    parser.add_argument("--days", type=float, default=45.0, help="event-time days to feed")
    parser.add_argument("--tx-sample", type=int, default=20_000, help="index keys to size")
    parser.add_argument("--redis-url", help="an existing, empty Redis (default: start one)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.redis_url:
        report = asyncio.run(measure(args.redis_url, args.data, args.days, args.tx_sample))
    else:
        with RedisServer() as server:
            report = asyncio.run(measure(server.url, args.data, args.days, args.tx_sample))
    doc: dict[str, Any] = asdict(report)
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
