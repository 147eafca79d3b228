"""Workers that crash, join and leave while payments flow: nothing lost, nothing counted twice."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Record, Workers
from tests.faults.load import (
    PacedLoad,
    Timing,
    TopicWatch,
    recovery_figures,
    wait_members,
    wait_rebalance,
)
from tests.faults.outcome import scrape, settle, written_after
from tests.integration.harness import Stack, handbook_rows

pytestmark = pytest.mark.timeout(150)

RATE = 250.0  # payments a second: a modest, steady feed on two shared cores
KILL_RECOVERY_TARGET_S = 30.0  # the product's target: kill -9 to decisions again


async def test_kill_minus_nine_under_load_then_restart(
    stack: Stack, workers: Workers, record: Record
) -> None:
    rows = handbook_rows(4_000)
    s = stack.settings()
    victim = workers.start(stack, "victim")
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with TopicWatch(stack.bootstrap, s.topic_decisions) as decisions:
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        # Steady state first: the victim has committed offsets behind it when it dies.
        await decisions.until(
            lambda w: len(w.records) >= 1_800,
            60,
            what="the first worker deciding",
            alive=victim.alive,
            describe=workers.describe,
        )
        kill = Timing(began=time.time())
        victim.kill()
        survivor = workers.start(stack, "survivor")
        kill.close()
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            90,
            what="every payment decided after the restart",
            alive=survivor.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["survivor"])
        survivor.stop()
        seen = list(decisions.records)
    figures = recovery_figures(seen, load.sent_at, kill)
    figures |= await settle(stack, rows, seen, [kill])
    record(
        fault="kill -9 of the only worker, a new one started at once",
        worker_metrics=metrics,
        **figures,
    )
    assert figures["first_decision_s"] < KILL_RECOVERY_TARGET_S, figures
    assert figures["caught_up_s"] < KILL_RECOVERY_TARGET_S + 10, figures
    assert figures["dlq"] == 0
    assert figures["duplicates"] < figures["decided"] // 2, "the victim's commits held"
    # The survivor's tally is what the topic shows it wrote, redone payments included.
    assert metrics["fraudstream_transactions_scored_total"] == written_after(seen, kill.began)
    assert metrics["fraudstream_dead_letters_total"] == 0


async def test_a_second_worker_joins_then_the_first_leaves(
    stack: Stack, workers: Workers, record: Record
) -> None:
    rows = handbook_rows(5_000)
    s = stack.settings()
    first = workers.start(stack, "first")
    await wait_members(stack.bootstrap, s.group, 1)  # in the group before the feed
    async with TopicWatch(stack.bootstrap, s.topic_decisions) as decisions:
        load = PacedLoad(stack.bootstrap, s.topic_transactions, rows, RATE).start()
        await decisions.until(
            lambda w: len(w.records) >= 500,
            60,
            what="the first worker deciding",
            alive=first.alive,
            describe=workers.describe,
        )
        second = workers.start(stack, "second")
        # The rebalance begins once the second worker has started up and asks to join.
        join = Timing(began=await wait_rebalance(stack.bootstrap, s.group, 2))
        await wait_members(stack.bootstrap, s.group, 2)
        join.close()
        decided_alone = len(decisions.tx_ids())
        leave = Timing(began=time.time())
        first.stop()
        await wait_members(stack.bootstrap, s.group, 1)
        leave.close()
        assert load.sent < len(rows), "the feed must still be running when the first leaves"
        await load.finish()
        await decisions.until(
            lambda w: len(w.tx_ids()) >= len(rows),
            90,
            what="every payment decided by the second worker",
            alive=second.alive,
            describe=workers.describe,
        )
        metrics = await scrape(workers.metrics_ports["second"])
        second.stop()
        seen = list(decisions.records)
    joined = recovery_figures(seen, load.sent_at, join)
    left = recovery_figures(seen, load.sent_at, leave)
    figures = await settle(stack, rows, seen, [join, leave])
    record(
        fault="a second worker joins mid-stream (rebalance), then the first stops",
        join={"rebalance_s": round(join.ended - join.began, 3), **joined},
        leave={"rebalance_s": round(leave.ended - leave.began, 3), **left},
        decided_before_join=decided_alone,
        worker_metrics=metrics,
        **figures,
    )
    assert left["longest_pause_s"] < 20, left
    assert left["caught_up_s"] < 30, left
    assert figures["dlq"] == 0
    # The second worker wrote everything after the first left, nothing before it joined.
    scored = metrics["fraudstream_transactions_scored_total"]
    assert written_after(seen, leave.ended) <= scored <= written_after(seen, join.began)
