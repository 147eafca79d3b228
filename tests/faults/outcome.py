"""The checks a fault case ends with, in one call, and the figures they give."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from models.features import FeatureConfig
from replay.readers import Row
from tests.faults.checks import (
    assert_features_match,
    assert_store_matches,
    decision_counts,
    duplicates_in_window,
    parse_metrics,
    reference_features,
)
from tests.faults.load import Seen, Timing, topic_size
from tests.integration.harness import Stack


async def settle(
    stack: Stack, rows: Sequence[Row], decisions: Sequence[Seen], faults: Sequence[Timing]
) -> dict[str, Any]:
    """Every check of a recovered run (module docstring of ``checks``); its figures."""
    settings = stack.settings()
    config = FeatureConfig(label_delay_days=settings.label_delay_days)
    on_topic = await topic_size(stack.bootstrap, settings.topic_transactions)
    counts = decision_counts(decisions, rows)
    figures: dict[str, Any] = {
        "sent": len(rows),
        "transactions_on_topic": on_topic,
        "decided": len(counts),
        "decisions_on_topic": len(decisions),
    }
    figures |= duplicates_in_window(decisions, counts, faults)
    assert_features_match(decisions, reference_features(rows, config))
    figures |= await assert_store_matches(stack.redis_url, stack.name, rows, config)
    figures["dlq"] = await topic_size(stack.bootstrap, settings.topic_dlq)
    return figures


async def scrape(port: int) -> dict[str, float]:
    """A worker's own series on 127.0.0.1:``port``/metrics.

    Kept: the ``fraudstream_*`` counters and gauges, histogram counts and sums (not buckets),
    and the resident memory.
    """
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"http://127.0.0.1:{port}/metrics")
    answer.raise_for_status()
    return {
        name: value
        for name, value in parse_metrics(answer.text).items()
        if (name.startswith("fraudstream_") and "_bucket" not in name and "_created" not in name)
        or name == "process_resident_memory_bytes"
    }


def written_after(decisions: Sequence[Seen], moment: float) -> int:
    """Decision records the broker stamped at or after ``moment`` (epoch s)."""
    return sum(1 for seen in decisions if seen.at >= moment)
