"""Load and observation for the fault cases: a paced producer, topic watchers, timing figures.

A fault case sends a fixed list of handbook payments at a fixed rate (:class:`PacedLoad`) while a
fault happens, and watches the output topics from the first offset (:class:`TopicWatch`), keeping
each record's broker timestamp so the case can say when decisions stopped and when they came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from replay.producer import transaction_bytes
from replay.readers import Row


@dataclass(frozen=True, slots=True)
class Seen:
    """One record read back: its JSON value, the broker timestamp (epoch s) and its partition."""

    value: dict[str, Any]
    at: float
    partition: int


class TopicWatch:
    """Every record of a topic from its first offset, read in the background (no group)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Seen] = []
        self.undecodable = 0
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A broker restart must not end the watch: keep retrying its metadata.
            metadata_max_age_ms=1_000,
            request_timeout_ms=20_000,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicWatch:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read(), name=f"watch-{self.topic}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=5_000)
            except KafkaError:
                await asyncio.sleep(0.2)  # the broker is away; the consumer reconnects
                continue
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        value = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        self.undecodable += 1
                        continue
                    self.records.append(Seen(value, m.timestamp / 1000.0, tp.partition))

    def values(self) -> list[dict[str, Any]]:
        return [r.value for r in self.records]

    def tx_ids(self) -> set[str]:
        return {r.value["tx_id"] for r in self.records}

    async def until(
        self,
        done: Callable[[TopicWatch], bool],
        timeout: float,
        *,
        what: str,
        alive: Callable[[], bool] | None = None,
        describe: Callable[[], str] | None = None,
    ) -> float:
        """Wait until ``done(self)``; the seconds it took. Fails after ``timeout`` s or a death."""
        began = time.monotonic()
        while not done(self):
            if self._task is not None and self._task.done():
                self._task.result()  # raises what ended the watch
            waited = time.monotonic() - began
            if waited > timeout or (alive is not None and not alive()):
                detail = describe() if describe else ""
                cause = "the worker died" if waited <= timeout else f"not after {timeout:.0f}s"
                raise AssertionError(
                    f"{self.topic}: {what}: {cause} ({len(self.records)} records)\n{detail}"
                )
            await asyncio.sleep(0.05)
        return time.monotonic() - began


class PacedLoad:
    """Payments sent at ``rate`` per second, keyed by card, by an idempotent producer.

    It runs on a thread and event loop of its own, so the feed goes on while the test blocks
    (stopping or starting a server). The producer's request timeout is long: a record handed to
    it while the broker is down is retried until the broker is back instead of failing.
    ``sent_at`` is when each payment was handed to the producer (epoch s).
    """

    def __init__(self, bootstrap: str, topic: str, rows: Sequence[Row], rate: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.rows = list(rows)
        self.rate = rate
        self.sent_at: dict[str, float] = {}
        self.failed = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"load-{topic}", daemon=True)

    def start(self) -> PacedLoad:
        self._thread.start()
        return self

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    def _run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # reported by wait_sent / finish
            self.error = exc

    async def _send(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            request_timeout_ms=120_000,
            metadata_max_age_ms=1_000,
        )
        await producer.start()
        pending: list[asyncio.Future[Any]] = []
        began = time.monotonic()
        try:
            for n, row in enumerate(self.rows):
                ahead = began + n / self.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                tx = row.tx
                pending.append(
                    await producer.send(self.topic, transaction_bytes(tx), key=tx.card_id.encode())
                )
                self.sent_at[tx.tx_id] = time.time()
            results = await asyncio.gather(*pending, return_exceptions=True)
            self.failed = sum(isinstance(r, BaseException) for r in results)
        finally:
            await producer.stop()

    def _check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the feed failed: {self.error!r}") from self.error

    async def wait_sent(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` payments were handed to the producer."""
        deadline = time.monotonic() + timeout
        while self.sent < count:
            self._check()
            assert time.monotonic() < deadline, f"only {self.sent} of {count} sent"
            await asyncio.sleep(0.02)

    async def finish(self, timeout: float = 180.0) -> None:
        """Until every payment is on the broker; fails if the producer gave any up."""
        await asyncio.to_thread(self._thread.join, timeout)
        assert not self._thread.is_alive(), f"the feed still runs after {timeout:.0f}s"
        self._check()
        assert self.failed == 0, f"{self.failed} payments never reached the broker"


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """The consumer group's state ("Stable", "PreparingRebalance", ...) and member count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
        _, _, state, _, _, members = described.groups[0][:6]
        return str(state), len(members)
    finally:
        await admin.close()


async def wait_members(bootstrap: str, group: str, count: int, timeout: float = 60.0) -> None:
    """Until the consumer group is stable with ``count`` members (a worker has its partitions)."""
    deadline = time.monotonic() + timeout
    while await group_state(bootstrap, group) != ("Stable", count):
        assert time.monotonic() < deadline, f"group {group} never had {count} stable members"
        await asyncio.sleep(0.25)


async def wait_rebalance(bootstrap: str, group: str, count: int, timeout: float = 60.0) -> float:
    """When (epoch s) the group left its stable state, polled every 0.1 s.

    If it is already stable again with ``count`` members (a rebalance quicker than a poll), the
    moment that was seen instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        state, members = await group_state(bootstrap, group)
        if state != "Stable" or members == count:
            return time.time()
        assert time.monotonic() < deadline, f"group {group} did not rebalance in {timeout:.0f}s"
        await asyncio.sleep(0.1)


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records the topic holds (end offsets summed over its partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()  # a topic this client has not seen
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


@dataclass
class Timing:
    """When a fault began and ended (epoch s), against the decisions' broker timestamps."""

    began: float
    ended: float = field(default=0.0)

    def close(self) -> None:
        self.ended = time.time()


def recovery_figures(
    decisions: Sequence[Seen], sent_at: dict[str, float], timing: Timing
) -> dict[str, float]:
    """How the decision flow came back after a fault.

    * ``first_decision_s``: fault began -> first decision written after the fault ended;
    * ``caught_up_s``: fault began -> every payment sent before the fault ended had a decision
      (the consumer lag of that backlog back to zero);
    * ``longest_pause_s``: the longest silence between two decisions around the fault.
    """
    first_at: dict[str, float] = {}
    for seen in decisions:
        tx_id = seen.value["tx_id"]
        if tx_id not in first_at or seen.at < first_at[tx_id]:
            first_at[tx_id] = seen.at
    after = [s.at for s in decisions if s.at >= timing.ended]
    assert after, "no decision was written after the fault"
    backlog = [first_at[tx] for tx, at in sent_at.items() if at <= timing.ended]
    times = sorted(s.at for s in decisions if timing.began - 5 <= s.at)
    pauses = [b - a for a, b in itertools.pairwise(times)]
    return {
        "first_decision_s": round(min(after) - timing.began, 3),
        "caught_up_s": round(max(max(backlog, default=timing.began) - timing.began, 0.0), 3),
        "longest_pause_s": round(max(pauses, default=0.0), 3),
    }
