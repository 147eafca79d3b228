"""What every fault case checks after recovery, on counts read back from the topics and Redis.

* every payment sent has a decision (distinct ``tx_id`` on ``decisions`` = payments sent);
* a payment decided twice was first decided inside the fault's commit window: the worker commits
  a batch's offsets at most ``COMMIT_INTERVAL_S`` after its decisions are on the broker, so only
  decisions written shortly before the fault can be written again after it;
* no payment counted twice: every decision carries the features the reference store
  (:class:`models.features.InMemoryFeatureStore`, fed each payment once) gives it, and Redis
  holds what the reference holds: a probe payment per card gets the same feature vector from
  Redis and from the reference, and each terminal's timeline holds each of its payments once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from models.features import FeatureConfig, InMemoryFeatureStore
from models.records import Transaction
from processor.redis_store import RedisFeatureStore
from replay.readers import Row
from tests.faults.load import Seen, Timing

# The worker's Faust commit interval (processor/app.py: broker_commit_interval=1.0).
COMMIT_INTERVAL_S = 1.0
# A decision written up to this long before a fault may be written again after it: the commit
# interval, the wait to fill a batch, the commit's round trip, and a second for a loaded machine.
COMMIT_WINDOW_S = COMMIT_INTERVAL_S + 2.0


def decision_counts(decisions: Sequence[Seen], rows: Sequence[Row]) -> Counter[str]:
    """Decisions per ``tx_id``; asserts that every payment sent, and only those, has one."""
    counts = Counter(seen.value["tx_id"] for seen in decisions)
    sent = {row.tx.tx_id for row in rows}
    missing = sent - set(counts)
    unknown = set(counts) - sent
    assert not missing, f"{len(missing)} payments have no decision, e.g. {sorted(missing)[:5]}"
    assert not unknown, f"decisions for payments never sent: {sorted(unknown)[:5]}"
    return counts


def duplicates_in_window(
    decisions: Sequence[Seen], counts: Counter[str], faults: Sequence[Timing]
) -> dict[str, Any]:
    """Checks that each twice-decided payment was first decided within a fault's commit window.

    The window of a fault is [began - COMMIT_WINDOW_S, ended + COMMIT_WINDOW_S]. Returns the
    duplicate figures: ``duplicates`` (extra decisions), ``duplicated_tx`` (payments concerned),
    and ``window_decisions`` (payments first decided inside the windows: the bound).
    """
    first_at: dict[str, float] = {}
    for seen in decisions:
        tx_id = seen.value["tx_id"]
        first_at[tx_id] = min(first_at.get(tx_id, math.inf), seen.at)

    def in_window(at: float) -> bool:
        return any(f.began - COMMIT_WINDOW_S <= at <= f.ended + COMMIT_WINDOW_S for f in faults)

    twice = {tx for tx, n in counts.items() if n > 1}
    outside = sorted(tx for tx in twice if not in_window(first_at[tx]))
    assert not outside, f"{len(outside)} payments decided again outside the commit window"
    window = sum(1 for at in first_at.values() if in_window(at))
    extra = sum(n - 1 for n in counts.values())
    # Redelivery repeats a payment's decision once per fault at most.
    assert extra <= window * max(1, len(faults)), (extra, window)
    by_fault = [
        sum(
            counts[tx] - 1
            for tx in twice
            if f.began - COMMIT_WINDOW_S <= first_at[tx] <= f.ended + COMMIT_WINDOW_S
        )
        for f in faults
    ]
    return {
        "duplicates": extra,
        "duplicated_tx": len(twice),
        "duplicates_by_fault": by_fault,
        "window_decisions": window,
        "commit_window_s": COMMIT_WINDOW_S,
    }


def reference_features(
    rows: Sequence[Row], config: FeatureConfig
) -> dict[str, Mapping[str, float]]:
    """Each payment's features from the reference store, fed every payment once, in order."""
    store = InMemoryFeatureStore(config)
    return {row.tx.tx_id: store.update_one(row.tx).values for row in rows}


def features_equal(got: Mapping[str, Any], want: Mapping[str, float]) -> bool:
    return set(got) == set(want) and all(
        math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9) for name, value in want.items()
    )


def assert_features_match(
    decisions: Sequence[Seen], reference: Mapping[str, Mapping[str, float]]
) -> None:
    """Every decision, first or repeated, carries the reference's features for its payment."""
    wrong = [
        seen.value["tx_id"]
        for seen in decisions
        if not features_equal(seen.value["features"], reference[seen.value["tx_id"]])
    ]
    assert not wrong, f"{len(wrong)} decisions differ from the reference's features: {wrong[:5]}"


async def assert_store_matches(
    redis_url: str, prefix: str, rows: Sequence[Row], config: FeatureConfig
) -> dict[str, int]:
    """Redis holds each payment once: probes per card agree with the reference, and so do the
    terminals' timelines. Returns how many cards and terminals were compared."""
    probe_ts = max(row.tx.ts for row in rows) + 60.0
    cards = sorted({row.tx.card_id for row in rows})
    probes = [
        Transaction(
            tx_id=f"probe-{card}",
            ts=probe_ts,
            card_id=card,
            merchant_id="probe-terminal",
            amount=1.0,
            currency="EUR",
        )
        for card in cards
    ]
    reference = InMemoryFeatureStore(config)
    for row in rows:
        reference.update_one(row.tx)
    want = [reference.update_one(probe).values for probe in probes]
    client = aioredis.from_url(redis_url)
    try:
        store = RedisFeatureStore(client, config, prefix=prefix)
        got = [vector.values for vector in await store.update_many(probes)]
        per_terminal = Counter(row.tx.merchant_id for row in rows)
        terminals = sorted(per_terminal)
        async with client.pipeline(transaction=False) as pipe:
            for terminal in terminals:
                pipe.zcard(f"{prefix}:{{term:{terminal}}}:tl")
            held = await pipe.execute()
    finally:
        await client.aclose()
    wrong_cards = [c for c, g, w in zip(cards, got, want, strict=True) if not features_equal(g, w)]
    assert not wrong_cards, f"{len(wrong_cards)} cards differ from the reference: {wrong_cards[:5]}"
    wrong_terms = [t for t, n in zip(terminals, held, strict=True) if n != per_terminal[t]]
    assert not wrong_terms, f"{len(wrong_terms)} terminals count a payment twice or not at all"
    return {"cards_compared": len(cards), "terminals_compared": len(terminals)}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{label="v",...}': value}`` (labels sorted), samples only."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
