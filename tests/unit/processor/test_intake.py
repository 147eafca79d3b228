"""The scorer's intake: batches of at most ``size``, a bounded wait, a bounded buffer."""

from __future__ import annotations

import asyncio
import time

import pytest

from processor.intake import Intake


async def test_a_whole_batch_is_taken_at_once_and_in_order() -> None:
    intake: Intake[int] = Intake(3, wait=10.0)
    for n in range(6):  # two whole batches: the most that may wait
        await intake.put(n)
    started = time.monotonic()
    assert await intake.take() == [0, 1, 2]
    assert await intake.take() == [3, 4, 5]
    assert time.monotonic() - started < 1.0, "a full batch never waits"
    assert len(intake) == 0


async def test_a_partial_batch_waits_at_most_wait() -> None:
    intake: Intake[int] = Intake(100, wait=0.05)
    await intake.put(1)
    started = time.monotonic()
    assert await intake.take() == [1]
    assert 0.04 <= time.monotonic() - started < 1.0


async def test_take_waits_for_the_first_item_then_fills_the_batch() -> None:
    intake: Intake[int] = Intake(2, wait=5.0)
    taking = asyncio.ensure_future(intake.take())
    await asyncio.sleep(0.05)
    assert not taking.done()
    await intake.put(1)
    await asyncio.sleep(0.05)
    assert not taking.done(), "one item of two: it waits for the batch to fill"
    await intake.put(2)
    assert await asyncio.wait_for(taking, 1.0) == [1, 2]


async def test_put_waits_while_two_batches_wait() -> None:
    intake: Intake[int] = Intake(2, wait=0.0)
    for n in range(4):
        await intake.put(n)
    putting = asyncio.ensure_future(intake.put(4))
    await asyncio.sleep(0.05)
    assert not putting.done()
    assert await intake.take() == [0, 1]
    await asyncio.wait_for(putting, 1.0)
    assert await intake.take() == [2, 3]
    assert await intake.take() == [4]


def test_size_and_wait_are_checked() -> None:
    with pytest.raises(ValueError):
        Intake(0, 0.005)
    with pytest.raises(ValueError):
        Intake(10, -1.0)
