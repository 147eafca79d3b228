"""The Faust app: transactions in, decisions out, labels back into the model.

Agents:

* ``score`` — ``transactions`` -> features (Redis, one pipelined round trip per batch) -> the
  newest model -> the policy -> ``decisions``; review and decline also go to ``escalations``.
  A record that is not JSON or fails validation goes to ``transactions.dlq`` with the error, its
  partition, offset and raw bytes (card numbers masked), and the stream goes on.
* ``labels`` — ``labels`` -> the feature store (terminal risk and the card's known frauds count
  only labels that are known).
* ``learn`` — ``labels`` + the scorers' observations -> the delayed-label learner -> versioned
  checkpoints in Redis. Both topics have one partition, so exactly one worker of the group learns.

A timer on every worker polls Redis for a newer checkpoint and swaps it in between two batches.
The state the agents share (Redis, the scorer, the learner) is :class:`processor.runtime.Runtime`.
Delivery is at least once: a batch's offsets are released for commit only once its decisions are
on the broker (the next batch is scored meanwhile), so a crash replays at most the uncommitted
batches; the feature store is idempotent on ``tx_id``, and the duplicates on ``decisions`` carry
the same ``tx_id``. Redis errors, refusals included, hold the batch and are retried; any other
failure of a batch stops the process (:func:`halt`), so the batch is delivered again rather than
lost or left unacknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import faust
import orjson
from aiokafka import AIOKafkaProducer
from faust.types import EventT

from models.errors import InvalidRecord
from models.records import (
    Action,
    Label,
    Transaction,
    label_from_wire,
    mask_pan,
    transaction_from_wire,
)
from models.scoring import Scorer
from processor.intake import Intake
from processor.metrics import BATCHES
from processor.narrator import install_narrator
from processor.outbox import Outbox
from processor.runtime import REDIS_ERRORS, Runtime
from processor.settings import Settings
from processor.transport import App

log = logging.getLogger("fraudstream.worker")

_Record = TypeVar("_Record")
# The exit status of a worker stopped by a failed batch (EX_SOFTWARE).
HALT_STATUS = 70


DLQ_RAW_MAX = 65_536  # characters of a bad record kept in its DLQ record


def halt(agent: str) -> NoReturn:
    """Stop the process now, from an agent whose batch failed in a way no retry mends.

    Faust acknowledges a ``take_events`` batch (labels) once the agent is done with it, even by an
    exception, and acknowledged offsets are committed: those records would never be recorded. A
    scored batch is acknowledged by ``settle`` only, so a failed one would stay unacknowledged
    and hold back every later commit of its partitions. Exiting at once commits nothing more, so
    the worker that restarts (Kubernetes restarts it; ``fraudstream up`` stops and shows its log)
    gets the batch again. A bug that fails every time shows as a crash loop, not as missing
    decisions.
    """
    log.critical(
        "a batch failed; the worker stops so that it is delivered again",
        extra={"agent": agent},
        exc_info=True,
    )
    logging.shutdown()
    os._exit(HALT_STATUS)


def dead_letter(event: EventT, error: str, field_name: str | None = None) -> bytes:
    """The DLQ record of a bad message: why, where it came from, and its bytes (PANs masked)."""
    message = event.message
    raw: bytes = message.value if isinstance(message.value, bytes) else b""
    doc: dict[str, Any] = {
        "error": error,
        "field": field_name,
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "received_at": time.time(),
    }
    try:
        doc["raw"] = mask_pan(raw.decode("utf-8"))
        doc["raw_encoding"] = "utf-8"
    except UnicodeDecodeError:
        # Mask what is text among the bad bytes too (they come back unchanged): base64 hides a
        # card number from a glance, not from whoever decodes it.
        text = mask_pan(raw.decode("utf-8", "surrogateescape"))
        doc["raw"] = base64.b64encode(text.encode("utf-8", "surrogateescape")).decode()
        doc["raw_encoding"] = "base64"
    if len(doc["raw"]) > DLQ_RAW_MAX:
        # Escaped again in JSON, a huge bad record would outgrow a Kafka message, and a DLQ send
        # that fails stops the agent: keep its head (whole base64 quads) and say so.
        doc["raw"], doc["raw_truncated"], doc["raw_size"] = doc["raw"][:DLQ_RAW_MAX], True, len(raw)
    return orjson.dumps(doc)


def _kafka_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under Faust's: faust-streaming has no record-batch API of its own."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()  # type: ignore[attr-defined]
    return producer


def create_app(settings: Settings, runtime: Runtime | None = None) -> tuple[faust.App, Runtime]:
    """The Faust app with its agents, bound to ``settings``."""
    runtime = runtime or Runtime(settings)
    app = App(
        settings.group,
        broker=settings.broker_urls,
        store="memory://",
        # Faust keeps nothing there with the memory store, but creates it: never in the working
        # directory (read-only in the container image, a clutter of folders elsewhere).
        datadir=Path(tempfile.gettempdir()) / "fraudstream-{conf.name}-data",
        autodiscover=False,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee=settings.guarantee,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        broker_commit_interval=1.0,
        # The scorer waits for its batch's decisions to be acknowledged before the next batch, so a
        # longer linger only adds to every decision's latency; the batch is already a batch.
        producer_linger=0.001,
        producer_max_batch_size=512 * 1024,
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(16_384, settings.batch_size * 4),
        worker_redirect_stdouts=False,
    )
    topics = settings.topics()
    transactions = app.topic(
        settings.topic_transactions, partitions=topics[settings.topic_transactions]
    )
    decisions = app.topic(settings.topic_decisions, partitions=topics[settings.topic_decisions])
    escalations = app.topic(
        settings.topic_escalations, partitions=topics[settings.topic_escalations]
    )
    dlq = app.topic(settings.topic_dlq, partitions=topics[settings.topic_dlq])
    labels = app.topic(settings.topic_labels, partitions=1)
    labels_dlq = app.topic(settings.topic_labels_dlq, partitions=1)
    observations = app.topic(settings.topic_observations, partitions=1)
    learn_channel = app.topic(settings.topic_labels, settings.topic_observations, partitions=1)
    wait = settings.batch_wait_ms / 1000.0
    # At least once, the scorer builds its records into Kafka record batches itself (an Outbox
    # per scored batch, one future per partition batch) instead of a send through Faust's
    # channel per record; exactly once goes through Faust so its transactional producer is used.
    direct = settings.guarantee == "at_least_once"
    decisions_name = decisions.get_topic_name()
    escalations_name = escalations.get_topic_name()
    counters = runtime.counters

    async def score_batch(events: Sequence[EventT]) -> tuple[list[Any], int, float]:
        """Decide a batch and hand its records to the producer: (delivery futures, size, start)."""
        scorer = await runtime.ready()
        started = time.time()
        txs = []
        for event in events:
            tx = await _decoded(event, transaction_from_wire, dlq)
            if tx is not None:
                txs.append(tx)
        if not txs:
            return [], 0, started
        outbox = None
        if direct:
            outbox = Outbox(_kafka_producer(app))
            await outbox.topic(decisions_name)
            await outbox.topic(escalations_name)
        observed: list[Any] = []
        done = 0
        attempt = 0
        while done < len(txs):
            try:
                # Scores each payment as soon as Redis has counted it, while Redis counts the
                # next. After a lost connection the batch is counted again (idempotent) and the
                # payments already decided are skipped.
                async for vector in runtime.store.update_stream(txs, skip=done):
                    await decide(scorer, txs[done], vector.values, started, outbox, observed)
                    done += 1
            except REDIS_ERRORS as exc:
                await runtime.redis_failed("features", exc, attempt)
                attempt += 1
        counters.scored += len(txs)
        pending: list[Any] = await outbox.send() if outbox is not None else []
        if observed:
            pending.append(await emit(observations, None, orjson.dumps(observed)))
        return [p for p in pending if p is not None], len(txs), started

    async def settle(
        stream: faust.StreamT, events: Sequence[EventT], batch: tuple[list[Any], int, float]
    ) -> None:
        """Once a batch's records are on the broker, release its offsets to be committed."""
        pending, size, started = batch
        try:
            await asyncio.gather(*pending)
            for event in events:
                await stream.ack(event)
        except Exception:
            halt("score")
        if size:
            BATCHES.observe(size, time.time() - started)

    async def decide(
        scorer: Scorer,
        tx: Transaction,
        features: dict[str, float],
        started: float,
        outbox: Outbox | None,
        observed: list[Any],
    ) -> None:
        """One payment's decision (and its escalation), to the outbox or through Faust."""
        decision = scorer.decide(tx, features, scorer.score(features), started)
        wire = decision.to_wire()
        key = tx.card_id.encode()
        value = orjson.dumps(wire)
        if outbox is not None:
            outbox.add(decisions_name, key, value)
        else:
            await decisions.send(key=key, value=value)
        action = decision.action.value
        counters.by_action[action] = counters.by_action.get(action, 0) + 1
        if decision.action is not Action.APPROVE:
            # The narrator also needs what the payment said (merchant name, memo, ...).
            case = orjson.dumps({**wire, "transaction": tx.to_wire()})
            if outbox is not None:
                outbox.add(escalations_name, key, case)
            else:
                await escalations.send(key=key, value=case)
            counters.escalated += 1
        if settings.learn:
            observed.append([tx.tx_id, tx.ts, features])

    async def emit(topic: faust.types.TopicT, key: bytes | None, value: bytes) -> Any:
        """Hand a record to the producer; a future when sent directly, None through Faust."""
        if direct:
            name = topic.get_topic_name()
            return await app.producer.send(name, key, value, None, None, None)
        await topic.send(key=key, value=value)
        return None

    async def _decoded(
        event: EventT, parse: Callable[[Any], _Record], topic: faust.types.TopicT
    ) -> _Record | None:
        """The record ``parse`` makes of the event's JSON, or None once it is dead-lettered."""
        try:
            return parse(orjson.loads(event.message.value))
        except orjson.JSONDecodeError as exc:
            await _dead_letter(topic, event, f"not JSON: {exc}")
        except InvalidRecord as exc:
            await _dead_letter(topic, event, str(exc), exc.field)
        return None

    async def _dead_letter(
        topic: faust.types.TopicT, event: EventT, error: str, field_name: str | None = None
    ) -> None:
        counters.dead_lettered += 1
        log.warning(
            "record dead-lettered",
            extra={
                "topic": event.message.topic,
                "partition": event.message.partition,
                "offset": event.message.offset,
                "error": error,
            },
        )
        await topic.send(key=event.message.key, value=dead_letter(event, error, field_name))

    @app.agent(transactions, name="score")
    async def score(stream: faust.StreamT) -> None:
        # The stream loop only takes events in; ``score_batches`` scores them in batches from
        # the intake meanwhile. No event is acknowledged by Faust (``noack``): ``settle`` acks a
        # batch's events once its decisions are on the broker, so a crash before that commits
        # nothing of the batch.
        source = stream.noack()
        intake: Intake[EventT] = Intake(settings.batch_size, wait)
        scoring = asyncio.ensure_future(score_batches(source, intake))
        try:
            async for event in source.events():
                await intake.put(event)
        finally:
            scoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scoring

    async def score_batches(stream: faust.StreamT, intake: Intake[EventT]) -> None:
        """Score the intake's batches; while one batch's decisions are being acknowledged the
        next is scored (one batch in flight at most)."""
        settling: asyncio.Future[None] | None = None
        try:
            while True:
                events = await intake.take()
                try:
                    batch = await score_batch(events)
                    if settling is not None:
                        await settling
                    settling = asyncio.ensure_future(settle(stream, events, batch))
                except Exception:
                    halt("score")
        finally:
            if settling is not None:
                await settling

    @app.agent(labels, name="labels")
    async def record_labels(stream: faust.StreamT) -> None:
        await runtime.ready()
        async for events in stream.take_events(settings.batch_size, within=wait):
            try:
                await record_batch(events)
            except Exception:
                halt("labels")

    async def record_batch(events: Sequence[EventT]) -> None:
        known: list[tuple[str, bool]] = []
        for event in events:
            label = await _decoded(event, label_from_wire, labels_dlq)
            if label is not None:
                known.append((label.tx_id, label.is_fraud))
        if known:
            await runtime.retry_redis(
                "labels", lambda known=known: runtime.store.record_labels(known)
            )
            counters.labels += len(known)

    if settings.learn:

        @app.agent(learn_channel, name="learn")
        async def learn(stream: faust.StreamT) -> None:
            learner = await runtime.start_learner()
            async for event in stream.events():
                try:
                    message = event.message
                    try:
                        doc = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        continue  # the labels agent dead-letters it
                    if message.topic == settings.topic_observations:
                        try:
                            observed = [(str(t), float(ts), dict(f)) for t, ts, f in doc]
                        except (TypeError, ValueError) as exc:
                            # Only workers write this topic: say so, and learn from the rest.
                            log.error("malformed observations skipped", extra={"error": str(exc)})
                            continue
                        newest = -math.inf
                        for tx_id, ts, features in observed:
                            learner.observe(tx_id, ts, features)
                            newest = max(newest, ts)
                        learner.advance(newest)
                    else:
                        try:
                            label: Label = label_from_wire(doc)
                        except InvalidRecord:
                            continue
                        learner.on_label(label)
                    now = learner.now
                    if math.isfinite(now) and learner.checkpoint_due(now):
                        checkpoint = learner.checkpoint(now)
                        await runtime.retry_redis(
                            "checkpoint", lambda c=checkpoint: runtime.checkpoints.publish(c)
                        )
                except Exception:
                    halt("learn")

    @app.timer(interval=settings.model_poll_s, name="model-poll")
    async def poll_model() -> None:
        if runtime.scorer is not None:
            await runtime.retry_redis("model poll", runtime.swap_if_newer)

    install_narrator(app, settings, runtime)
    app.fraud_runtime = runtime  # type: ignore[attr-defined]
    return app, runtime
