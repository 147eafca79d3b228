"""The worker's Faust transport: our consumer loop is upstream's with its hand-off changed."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

from faust.transport import consumer as upstream
from faust.types import TP

from processor.settings import Settings
from processor.transport import App, Consumer, Transport

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages. When an upgrade changes that loop,
# this fails: read the new loop and carry its changes into processor/transport.py.
UPSTREAM_DRAIN = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_the_upstream_loop_is_the_one_the_override_was_made_from() -> None:
    source = inspect.getsource(upstream.Consumer._drain_messages)
    assert "callback(message), self.suspend_flow.wait()" in source
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_DRAIN


def test_the_override_hands_messages_over_without_wait_first() -> None:
    source = inspect.getsource(Consumer._drain_messages)
    assert "wait_first" not in source
    assert "await callback(message)" in source


def test_the_app_consumes_through_the_transport() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9")
    app = App("transport-test", broker=settings.broker_urls)
    assert isinstance(app.transport, Transport)
    assert app.transport.Consumer is Consumer


class _Message:
    """What the loop reads of a fetched message."""

    def __init__(self, tp: TP, offset: int, generation_id: int) -> None:
        self.tp, self.topic, self.offset, self.generation_id = tp, tp.topic, offset, generation_id


def _drain(
    offsets: list[int], on_hand_off: Callable[[App, Consumer, int], None] | None = None
) -> tuple[list[int], Consumer]:
    """Run one fetch of ``offsets`` through the loop; what was handed off, and the consumer."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9")
    app = App("transport-drain-test", broker=settings.broker_urls)
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    app.consumer_generation_id = 1
    tp = TP("transactions", 0)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    handed: list[int] = []

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, _Message]]:
        fetcher._stopped.set()  # one fetch, then the loop ends
        for offset in offsets:
            if app.consumer_generation_id != 1:
                break  # as Faust's getmany stops at a new generation
            yield tp, _Message(tp, offset, 1)

    async def callback(message: _Message) -> None:
        handed.append(message.offset)
        if on_hand_off is not None:
            on_hand_off(app, consumer, message.offset)

    consumer.getmany = getmany  # type: ignore[method-assign]
    consumer.callback = callback  # type: ignore[method-assign]
    asyncio.run(consumer._drain_messages(fetcher))
    return handed, consumer


def test_messages_handed_off_are_read() -> None:
    handed, consumer = _drain([10, 11, 12])
    assert handed == [10, 11, 12]
    assert consumer._read_offset[TP("transactions", 0)] == 12


def test_a_hand_off_that_outlasts_a_rebalance_leaves_the_read_offset_to_its_seek() -> None:
    """The hand-off of 11 completes after a rebalance whose seek went back to 5: reading must go
    on from 5, or the re-fetched 5..10 would be dropped as read and never decided."""

    def rebalance_during(app: App, consumer: Consumer, offset: int) -> None:
        if offset == 11:
            app.consumer_generation_id = 2
            consumer._read_offset[TP("transactions", 0)] = 5  # perform_seek's committed offset

    handed, consumer = _drain([10, 11, 12], rebalance_during)
    assert handed == [10, 11]
    assert consumer._read_offset[TP("transactions", 0)] == 5


def test_a_suspended_flow_hands_nothing_off() -> None:
    def suspend(app: App, consumer: Consumer, offset: int) -> None:
        consumer.suspend_flow.set()

    handed, consumer = _drain([10, 11, 12], suspend)
    assert handed == [10]  # then nothing, as Faust's hand-off gives way to the suspension
    assert consumer._read_offset[TP("transactions", 0)] == 12
