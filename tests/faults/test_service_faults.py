"""Redis and the Kafka broker restarted while payments flow: the worker waits, then goes on.

Redis is the suite's persistent one (append-only file, fsync on every write), restarted with
SIGTERM; the broker is restarted with a controlled shutdown. Both come back on the same port, so
the worker reconnects by itself: nothing is restarted but the server.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.conftest import Record, Workers
from tests.faults.load import (
    PacedLoad,
    Timing,
    TopicWatch,
    recovery_figures,
    wait_members,
)
from tests.faults.outcome import scrape, settle
from tests.integration.harness import Stack, handbook_rows
from tests.services.kafka import KafkaBroker
from tests.services.redis import RedisServer

pytestmark = pytest.mark.timeout(180)

RATE = 250.0
OUTAGE_S = 3.0  # how long the server stays down: long enough for batches to queue up behind it
BACK_WITHIN_S = 20.0  # server up again -> decisions again, at most


async def test_redis_restarted_under_load(
    stack: Stack, workers: Workers, fault_redis: RedisServer, record: Record
) -> None:
    rows = handbook_rows(4_000)
    s = stack.settings()
    worker = workers.start(stack)
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with TopicWatch(stack.bootstrap, s.topic_decisions) as decisions:
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await decisions.until(
            lambda w: len(w.records) >= 1_000,
            60,
            what="decisions before the restart",
            alive=worker.alive,
            describe=workers.describe,
        )
        outage = Timing(began=time.time())
        fault_redis.stop()
        await asyncio.sleep(OUTAGE_S)
        before_back = len(decisions.records)
        fault_redis.start()
        outage.close()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            90,
            what="every payment decided after the restart",
            alive=worker.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["worker"])
        worker.stop()
        seen = list(decisions.records)
    figures = recovery_figures(seen, load.sent_at, outage)
    figures |= await settle(stack, rows, seen, [outage])
    record(
        fault=f"redis-server stopped (SIGTERM), down {OUTAGE_S:g}s, started again (AOF)",
        outage_s=round(outage.ended - outage.began, 3),
        decided_while_down=before_back,
        worker_metrics=metrics,
        **figures,
    )
    assert figures["first_decision_s"] < outage.ended - outage.began + BACK_WITHIN_S, figures
    assert figures["dlq"] == 0
    assert figures["duplicates"] == 0, "the worker waited for Redis: no batch was redelivered"
    assert metrics["fraudstream_redis_retries_total"] > 0, "the outage was seen and retried"
    assert metrics["fraudstream_transactions_scored_total"] == len(rows)


async def test_the_broker_restarted_under_load(
    stack: Stack, workers: Workers, fault_kafka: KafkaBroker, record: Record
) -> None:
    rows = handbook_rows(4_000)
    s = stack.settings()
    worker = workers.start(stack)
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with TopicWatch(stack.bootstrap, s.topic_decisions) as decisions:
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await decisions.until(
            lambda w: len(w.records) >= 1_000,
            60,
            what="decisions before the restart",
            alive=worker.alive,
            describe=workers.describe,
        )
        outage = Timing(began=time.time())
        fault_kafka.stop()
        await asyncio.sleep(OUTAGE_S)
        # On this thread: the broker dies with the thread that started it (PR_SET_PDEATHSIG).
        # The feed runs on a thread of its own meanwhile; the watch catches up afterwards.
        fault_kafka.start()
        outage.close()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            120,
            what="every payment decided after the restart",
            alive=worker.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["worker"])
        worker.stop()
        seen = list(decisions.records)
    figures = recovery_figures(seen, load.sent_at, outage)
    figures |= await settle(stack, rows, seen, [outage])
    # Every scoring is on the topic; beyond them, only a produce request the broker appended
    # but could not answer before it stopped is sent again: the same records, no more than the
    # worker had in flight (the batch being acknowledged and the one scored meanwhile).
    resent = figures["decisions_on_topic"] - metrics["fraudstream_transactions_scored_total"]
    record(
        fault=f"the Kafka broker stopped (controlled shutdown), down {OUTAGE_S:g}s, started again",
        outage_s=round(outage.ended - outage.began, 3),
        worker_metrics=metrics,
        resent_by_the_producer=resent,
        **figures,
    )
    assert figures["first_decision_s"] < outage.ended - outage.began + BACK_WITHIN_S, figures
    assert figures["transactions_on_topic"] == len(rows), "the idempotent feed wrote each once"
    assert figures["dlq"] == 0
    assert 0 <= resent <= 2 * s.batch_size, (resent, figures)
