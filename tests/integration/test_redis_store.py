"""The Redis feature store against the reference store, on a real Redis server.

Every feature of every transaction must match ``InMemoryFeatureStore`` to 1e-9 on the same
stream: random streams (late arrivals, ties on one card, labels in between, redeliveries), a
stream long enough to be trimmed, and a slice of the handbook data. Then what the store promises
besides the values: batches equal one-by-one, a redelivered batch changes nothing, memory stays
within the retention, it survives ``SCRIPT FLUSH``, and each script call stays on one hash tag.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from models.features import DAY, FeatureConfig, InMemoryFeatureStore
from models.records import FeatureVector, Transaction
from processor.redis_store import RedisFeatureStore, trim_slack_for, ttl_for
from replay.readers import PRESETS, BadRow, read_transactions

HANDBOOK = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "handbook-2018-04-01_2018-07-31.csv.gz"
)
T0 = 1_522_540_800.0  # 2018-04-01T00:00:00Z, a Sunday
# Short windows, so that a few weeks of stream are trimmed many times over.
SHORT = FeatureConfig(
    card_windows=(1, 2),
    terminal_windows=(1, 3),
    label_delay_days=1.0,
    distinct_terminals_days=1,
    dedup_seconds=0.25 * DAY,
)

Batch = list[Transaction]
Labels = list[tuple[str, bool]]
Step = tuple[str, Any]  # ("txs", Batch) or ("labels", Labels)


class PipelineClient(aioredis.Redis):
    """A plain client the store does not recognise: it goes through redis-py's pipeline."""


def random_stream(
    seed: int,
    *,
    days: float,
    n: int,
    cards: int = 10,
    terminals: int = 20,
    late_share: float = 0.0,
    lateness: float = 0.0,
    redeliver_within: float = DAY,
) -> list[Step]:
    """Batches of transactions and, between them, labels: deterministic for ``seed``.

    Ties on one card (the same card again at the same second), whole-second timestamps, late
    arrivals up to ``lateness`` seconds, redeliveries of transactions seen up to
    ``redeliver_within`` seconds of event time ago, labels that flip, labels for unknown ids.
    """
    rng = random.Random(seed)
    gap = days * DAY / n
    t = T0
    seen: list[Transaction] = []
    steps: list[Step] = []
    batch: Batch = []
    card = "c0"
    for i in range(n):
        if seen and rng.random() < 0.08:
            recent = [tx for tx in seen[-200:] if tx.ts >= t - redeliver_within]
            if recent:
                batch.append(rng.choice(recent))
        tie = seen and rng.random() < 0.12
        if tie:
            ts = seen[-1].ts
            card = seen[-1].card_id if rng.random() < 0.7 else card
        else:
            t += rng.expovariate(1 / gap)
            ts = float(round(t)) if rng.random() < 0.4 else t
            card = f"c{min(int(rng.expovariate(0.3)), cards - 1)}"
            if rng.random() < late_share:
                ts = t - rng.uniform(0, lateness)
        amount = round(rng.choice((rng.uniform(1, 120), rng.uniform(100, 900))), 2)
        tx = Transaction(f"tx{i}", ts, card, f"m{rng.randrange(terminals)}", amount, "EUR")
        seen.append(tx)
        batch.append(tx)
        if rng.random() < 0.1 or len(batch) >= 40:
            steps.append(("txs", batch))
            batch = []
            if rng.random() < 0.5:
                labels = [(rng.choice(seen).tx_id, rng.random() < 0.6) for _ in range(4)]
                if rng.random() < 0.2:
                    labels.append((f"unknown{i}", True))
                steps.append(("labels", labels))
    if batch:
        steps.append(("txs", batch))
    return steps


def run_reference(steps: Sequence[Step], config: FeatureConfig) -> list[Any]:
    """What the reference store returns at each step: vectors for a batch, booleans for labels."""
    ref = InMemoryFeatureStore(config)
    out: list[Any] = []
    for kind, items in steps:
        if kind == "txs":
            out.append([ref.update_one(tx) for tx in items])
        else:
            out.append([ref.record_label(tx_id, fraud) for tx_id, fraud in items])
    return out


async def run_store(
    store: RedisFeatureStore, steps: Sequence[Step], *, stream: bool = False
) -> list[Any]:
    """The steps through the store: batches by ``update_many`` (or ``update_stream``)."""
    out: list[Any] = []
    for kind, items in steps:
        if kind == "txs" and stream:
            out.append([v async for v in store.update_stream(items)])
        elif kind == "txs":
            out.append(await store.update_many(items))
        else:
            out.append(await store.record_labels(items))
    return out


def assert_same(expected: list[Any], got: list[Any], names: Sequence[str]) -> None:
    """Every feature to 1e-9 (relative, or absolute near zero); label answers equal."""
    assert len(got) == len(expected)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert len(have) == len(want), f"step {step}"
        for a, b in zip(want, have, strict=True):
            if not isinstance(a, FeatureVector):
                assert a == b, f"step {step}: label answer"
                continue
            assert b.tx_id == a.tx_id
            assert tuple(b.values) == tuple(names)
            for name in names:
                x, y = a.values[name], b.values[name]
                assert type(y) is float, (a.tx_id, name)
                assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9), (a.tx_id, name, x, y)


def vectors(results: list[Any]) -> list[FeatureVector]:
    return [v for step in results for v in step if isinstance(v, FeatureVector)]


async def dump_all(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the store's prefix (the prefix cut off) with its contents.

    Contents, not ``DUMP``: a large hash's serialized field order moves as Redis rehashes it.
    """
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        if kind == b"zset":
            value: Any = await client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            value = await client.hgetall(key)
        else:
            value = await client.get(key)
        out[key[len(prefix) :]] = value
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_streams_match_the_reference(redis_client: aioredis.Redis, seed: int) -> None:
    # 25 days: nothing reaches the 30-day card or 37-day terminal retention, so late arrivals
    # (up to a day) and redeliveries past the one-day dedup window must match exactly too.
    steps = random_stream(
        seed, days=25, n=1500, late_share=0.1, lateness=DAY, redeliver_within=3 * DAY
    )
    store = RedisFeatureStore(redis_client)
    assert_same(run_reference(steps, store.config), await run_store(store, steps), store.names)


async def test_pipeline_path_matches_the_reference(redis_client: aioredis.Redis) -> None:
    client = PipelineClient(connection_pool=redis_client.connection_pool)
    steps = random_stream(4, days=20, n=600, late_share=0.1, lateness=DAY)
    store = RedisFeatureStore(client)
    assert_same(run_reference(steps, store.config), await run_store(store, steps), store.names)


async def test_text_replies_match_the_reference(redis_client: aioredis.Redis) -> None:
    kwargs = redis_client.connection_pool.connection_kwargs
    client = aioredis.Redis(host=kwargs["host"], port=kwargs["port"], decode_responses=True)
    try:
        steps = random_stream(5, days=10, n=300, late_share=0.1, lateness=DAY)
        store = RedisFeatureStore(client, prefix="text")
        got = await run_store(store, steps)
        assert_same(run_reference(steps, store.config), got, store.names)
    finally:
        await client.aclose()


async def test_any_text_is_a_fine_id(redis_client: aioredis.Redis) -> None:
    # Ids are opaque: braces, separators, newlines and non-ASCII must neither break the layout
    # nor let two entities share a key.
    odd = ["a}b", "{x}", "a|b:c", "line\nbreak", "ünï cødé", "a}", "a", "", "|"]

    def renamed(tx: Transaction) -> Transaction:
        card = odd[int(tx.card_id[1:]) % len(odd)]
        term = odd[int(tx.merchant_id[1:]) % len(odd)] + tx.merchant_id[1:2]
        return Transaction(f"{card}{tx.tx_id}", tx.ts, card, term, tx.amount, "EUR")

    steps: list[Step] = []
    for kind, items in random_stream(12, days=5, n=300):
        if kind == "txs":
            batch = [renamed(tx) for tx in items]
            steps.append(("txs", batch))
            steps.append(("labels", [(tx.tx_id, True) for tx in batch[:2]]))
    store = RedisFeatureStore(redis_client, prefix="odd:x")
    assert_same(run_reference(steps, store.config), await run_store(store, steps), store.names)


async def test_trimmed_stream_matches_the_reference(redis_client: aioredis.Redis) -> None:
    # In event-time order (with ties), 24 days of 2- and 4-day retentions: trimmed all along,
    # labels for transactions already expired answer False in both.
    steps = random_stream(6, days=24, n=2000, redeliver_within=SHORT.dedup_seconds / 2)
    store = RedisFeatureStore(redis_client, SHORT)
    expected = run_reference(steps, SHORT)
    assert_same(expected, await run_store(store, steps), store.names)
    answers = [a for step in expected for a in step if isinstance(a, bool)]
    assert True in answers and answers.count(False) > 5


def handbook_steps(days: float, every: int) -> tuple[list[Step], int]:
    """The handbook's first ``days`` for one card in ``every``, labels as the backtest has them.

    A fraud becomes known a label delay (7 days) after it happened and is recorded before the
    first transaction at or after that moment; batches of at most 500 end where labels are due.
    """
    assert HANDBOOK.is_file(), f"the shared handbook data is required: {HANDBOOK}"
    good = (
        r for r in read_transactions(HANDBOOK, PRESETS["handbook"]) if not isinstance(r, BadRow)
    )
    rows = itertools.takewhile(lambda r: r.tx.ts < T0 + days * DAY, good)
    delay = FeatureConfig().label_delay_days * DAY
    due: deque[tuple[float, str]] = deque()
    steps: list[Step] = []
    batch: Batch = []
    frauds = 0
    for row in rows:
        if int(row.tx.card_id) % every:
            continue
        labels: Labels = []
        while due and due[0][0] <= row.tx.ts:
            labels.append((due.popleft()[1], True))
        if labels or len(batch) == 500:
            steps.append(("txs", batch))
            batch = []
        if labels:
            steps.append(("labels", labels))
        batch.append(row.tx)
        if row.is_fraud:
            due.append((row.tx.ts + delay, row.tx.tx_id))
            frauds += 1
    steps.append(("txs", batch))
    return [s for s in steps if s[1]], frauds


@pytest.mark.slow
async def test_handbook_slice_matches_the_reference(redis_client: aioredis.Redis) -> None:
    # The handbook's first 20k rows span two days, before any label is due: instead, a fortnight
    # of one card in eight (about 17k transactions, labels and terminal risk included).
    steps, frauds = handbook_steps(days=14, every=8)
    store = RedisFeatureStore(redis_client)
    expected = run_reference(steps, store.config)
    assert_same(expected, await run_store(store, steps), store.names)
    got = vectors(expected)
    assert len(got) > 15_000 and frauds > 20
    assert any(v.values["terminal_risk_30d"] > 0 for v in got)
    assert any(v.values["card_known_frauds_30d"] > 0 for v in got)


async def test_batches_equal_one_by_one(redis_client: aioredis.Redis) -> None:
    steps = random_stream(7, days=12, n=800, late_share=0.1, lateness=DAY)
    batched = RedisFeatureStore(redis_client, prefix="a")
    single = RedisFeatureStore(redis_client, prefix="b")
    got_batched = await run_store(batched, steps)
    got_single: list[Any] = []
    for kind, items in steps:
        if kind == "txs":
            got_single.append([await single.update_one(tx) for tx in items])
        else:
            got_single.append([await single.record_label(tx_id, f) for tx_id, f in items])
    assert got_batched == got_single
    assert await dump_all(redis_client, "a") == await dump_all(redis_client, "b")


async def test_redelivered_batches_change_nothing(redis_client: aioredis.Redis) -> None:
    steps = random_stream(8, days=3, n=600, late_share=0.1, lateness=3_600.0)
    batches = [items for kind, items in steps if kind == "txs"]
    store = RedisFeatureStore(redis_client)
    first = await run_store(store, steps)
    before = await dump_all(redis_client, store.prefix)
    last_two = batches[-2] + batches[-1]
    answers = {v.tx_id: v for v in vectors(first)}
    again = await store.update_many(last_two)
    assert again == [answers[tx.tx_id] for tx in last_two]
    shuffled = random.Random(0).sample(last_two, len(last_two))
    assert await store.update_many(shuffled) == [answers[tx.tx_id] for tx in shuffled]
    assert await dump_all(redis_client, store.prefix) == before

    # A batch that failed half way and is retried whole gets what one clean pass would have.
    clean = RedisFeatureStore(redis_client, prefix="clean")
    retried = RedisFeatureStore(redis_client, prefix="retried")
    for batch in batches[:-1]:
        assert await clean.update_many(batch) == await retried.update_many(batch)
    await retried.update_many(batches[-1][: len(batches[-1]) // 2])
    assert await retried.update_many(batches[-1]) == await clean.update_many(batches[-1])
    assert await dump_all(redis_client, "clean") == await dump_all(redis_client, "retried")


async def test_memory_stays_within_the_retention(redis_client: aioredis.Redis) -> None:
    # 60 days of a steady stream; three cards and a terminal go quiet after day 10.
    cfg = FeatureConfig()
    rng = random.Random(9)
    txs = []
    for i in range(12_000):
        ts = T0 + i * 60 * DAY / 12_000
        quiet = ts < T0 + 10 * DAY and rng.random() < 0.05
        card = f"q{rng.randrange(3)}" if quiet else f"c{rng.randrange(60)}"
        term = "mq" if quiet else f"m{rng.randrange(100)}"
        txs.append(Transaction(f"t{i}", ts, card, term, round(rng.uniform(1, 300), 2), "EUR"))
    store = RedisFeatureStore(redis_client)
    for k in range(0, len(txs), 500):
        await store.update_many(txs[k : k + 500])
        await store.record_labels([(tx.tx_id, True) for tx in txs[k : k + 500 : 50]])
    now = store.watermark

    keys = [key.decode() async for key in redis_client.scan_iter(match="fs:*", count=1000)]
    assert await store.memory_keys() == len(keys)
    last_seen: dict[str, float] = {}
    for tx in txs:
        last_seen[store.card_key(tx.card_id)] = tx.ts
        last_seen[store.terminal_key(tx.merchant_id)] = tx.ts
    for entity, kind, retention in (
        (store.card_key, "card", cfg.card_retention),
        (store.terminal_key, "term", cfg.terminal_retention),
    ):
        slack = trim_slack_for(retention)
        for name in {tx.card_id if kind == "card" else tx.merchant_id for tx in txs}:
            base = entity(name)
            held: list[Any] = await redis_client.zrange(base + "tl", 0, -1, withscores=True)
            oldest = min(score for _, score in held)
            # The oldest kept is within the retention (and the slack) of the entity's last
            # touch, which for all but the quiet ones is within days of the end: not day 0.
            assert oldest >= last_seen[base] - retention - slack, base
            if not name.startswith(("q", "mq")):
                assert oldest >= now - retention - slack - 5 * DAY, base
            frauds: list[Any] = await redis_client.zrange(base + "fr", 0, -1, withscores=True)
            assert all(score >= oldest for _, score in frauds), base
        assert any(k.startswith(f"fs:{{{kind}:") and k.endswith(":fr") for k in keys)
    # Cached replies are kept for the dedup window (and the upkeep slack), not the retention.
    for name in {tx.card_id for tx in txs}:
        base = store.card_key(name)
        stored: dict[Any, Any] = await redis_client.hgetall(base + "h")
        cached: list[bytes] = [v for f, v in stored.items() if f and not v.startswith(b"\n")]
        stamps = [float(v.split(b",", 1)[0]) for v in cached]
        oldest_kept = last_seen[base] - cfg.dedup_seconds - trim_slack_for(cfg.card_retention)
        assert all(s >= oldest_kept for s in stamps), base
        assert len(cached) < len(stored) / 2 or name.startswith("q"), base
    # Every key expires: a TTL no longer than its retention and the slack, quiet ones included.
    limits = {
        "card": ttl_for(cfg.card_retention),
        "term": ttl_for(cfg.terminal_retention),
        "tx": ttl_for(store.entry_retention),
    }
    for key in keys:
        tagged = re.match(r"fs:\{(card|term|tx):", key)
        assert tagged, key
        ttl = await redis_client.pttl(key)
        assert 0 < ttl <= limits[tagged.group(1)] * 1000, (key, ttl)
    entries = sum([await redis_client.zcard(k) for k in keys if k.endswith(":tl")])
    assert entries < 0.8 * 2 * len(txs)  # card and terminal entries: far from 60 days' worth
    assert now == txs[-1].ts


@pytest.mark.parametrize("client_kind", ["direct", "pipeline"])
async def test_scripts_come_back_after_a_flush(
    redis_client: aioredis.Redis, client_kind: str
) -> None:
    client = (
        redis_client
        if client_kind == "direct"
        else PipelineClient(connection_pool=redis_client.connection_pool)
    )
    steps = random_stream(10, days=6, n=400, late_share=0.1, lateness=DAY)
    store = RedisFeatureStore(client)
    half = len(steps) // 2
    got = await run_store(store, steps[:half])
    await redis_client.script_flush()
    got += await run_store(store, steps[half:])
    assert_same(run_reference(steps, store.config), got, store.names)
    assert all(await redis_client.script_exists(*store._sha.values()))


@pytest.mark.parametrize("client_kind", ["direct", "pipeline"])
async def test_the_streamed_path_equals_the_batch_path(
    redis_client: aioredis.Redis, client_kind: str
) -> None:
    """``update_stream`` yields what ``update_many`` returns, leaves the same state, and
    recovers from lost scripts part way through a batch."""
    client = (
        redis_client
        if client_kind == "direct"
        else PipelineClient(connection_pool=redis_client.connection_pool)
    )
    steps = random_stream(12, days=8, n=500, late_share=0.1, lateness=DAY)
    batch = RedisFeatureStore(client, prefix="batch")
    streamed = RedisFeatureStore(client, prefix="streamed")
    half = len(steps) // 2
    got = await run_store(streamed, steps[:half], stream=True)
    await redis_client.script_flush()
    got += await run_store(streamed, steps[half:], stream=True)
    assert got == await run_store(batch, steps)
    assert_same(run_reference(steps, batch.config), got, batch.names)
    assert await dump_all(redis_client, "batch") == await dump_all(redis_client, "streamed")
    assert streamed.watermark == batch.watermark

    # A retry after a lost connection skips what was decided already, with the same values.
    last = [items for kind, items in steps if kind == "txs"][-1]
    again = [v async for v in streamed.update_stream(last, skip=3)]
    assert again == (await batch.update_many(last))[3:]


def monitored(line: str) -> tuple[str, list[str]]:
    """The client type and the arguments of one MONITOR line."""
    head = re.match(r"[\d.]+ \[\d+ ([^\]]*)\] ", line)
    assert head, line
    args = re.findall(r'"((?:[^"\\]|\\.)*)"', line[head.end() :])
    unescaped = [a.encode().decode("unicode_escape") for a in args]
    return ("lua" if head.group(1) == "lua" else "client"), unescaped


def tag(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}", key.index("{"))]


async def test_every_script_call_stays_on_one_hash_tag(redis_client: aioredis.Redis) -> None:
    steps = random_stream(11, days=40, n=300, cards=4, terminals=5)
    store = RedisFeatureStore(redis_client, SHORT)
    await store.load_scripts()
    lines: list[str] = []
    async with redis_client.monitor() as monitor:
        await run_store(store, steps)
        await redis_client.echo("monitor-end")
        while not lines or "monitor-end" not in lines[-1]:
            raw = await monitor.connection.read_response()
            lines.append(raw.decode() if isinstance(raw, bytes) else raw)
    calls = 0
    call_slot = None
    touched: set[str] = set()
    for line in lines:
        who, args = monitored(line)
        if who == "client" and args[0].upper() == "EVALSHA":
            keys = args[3 : 3 + int(args[2])]
            assert len({tag(k) for k in keys}) == 1, keys
            assert tag(keys[0]).startswith(("card:", "term:"))
            call_slot = key_slot(keys[0].encode())
            calls += 1
        elif who == "lua":
            # Every command a script runs is on a key of the call's own slot.
            assert key_slot(args[1].encode()) == call_slot, args
            touched.add(args[1])
        elif args[0].upper() in ("SET", "GET"):
            assert tag(args[1]).startswith("tx:")
    assert calls > 600 and touched
    async for key in redis_client.scan_iter(count=1000):
        assert re.match(r"fs:\{(card|term|tx):[^}]+\}", key.decode()), key


async def test_late_arrival_windows_stop_at_the_retention_horizon(
    redis_client: aioredis.Redis,
) -> None:
    # The one place this store departs from the reference (see the module docstring): a late
    # transaction's windows see nothing older than the watermark's retention horizon.
    txs = [
        Transaction("a", T0 + 0.75 * DAY, "c", "m", 10.0, "EUR"),
        Transaction("b", T0 + 31.0 * DAY, "c", "m", 20.0, "EUR"),
        Transaction("late", T0 + 30.5 * DAY, "c", "m", 30.0, "EUR"),
    ]
    store = RedisFeatureStore(redis_client)
    got = await store.update_many(txs)
    ref = InMemoryFeatureStore()
    want = [ref.update_one(tx) for tx in txs]
    assert got[:2] == want[:2]
    # "a" is inside the late transaction's 30 days but older than 31 - 30 days.
    assert want[2].values["card_count_30d"] == 2.0
    assert got[2].values["card_count_30d"] == 1.0
    assert got[2].values["card_count_7d"] == want[2].values["card_count_7d"] == 1.0


async def test_nothing_to_do(redis_client: aioredis.Redis) -> None:
    store = RedisFeatureStore(redis_client)
    assert await store.update_many([]) == []
    assert await store.record_labels([]) == []
    assert not await store.record_label("never-seen", True)
    assert await store.memory_keys() == 0
    with pytest.raises(ValueError, match="prefix"):
        RedisFeatureStore(redis_client, prefix="{x}")
