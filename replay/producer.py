"""``fraudstream replay``: feed a historic file into Kafka as if it were happening now.

Transactions go to ``transactions`` keyed by card, in event-time order, paced by ``--speed`` (event
seconds per wall second; ``max`` sends as fast as the broker takes them). A fraud label goes to
``labels`` when it would have become known — the transaction's time plus ``--label-delay`` — on
the same scaled clock, so the live learner meets labels as late as it would in production.
Ground truth never rides along with a transaction: the file's label columns are dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import signal
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from models.errors import FraudstreamError
from models.records import Label, Transaction, format_ts, parse_ts
from processor import logs
from replay.readers import GROUND_TRUTH, BadRow, Row

log = logging.getLogger("fraudstream.replay")

DAY = 86_400.0


@dataclass
class ReplayStats:
    """What a replay did; printed on exit and returned to callers."""

    sent: int = 0
    labels: int = 0
    bad_rows: int = 0
    skipped: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    last_line: int = 0
    started: float = field(default_factory=time.monotonic)
    lag: float = 0.0  # seconds behind the schedule at the last send

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "labels": self.labels,
            "bad_rows": self.bad_rows,
            "skipped": self.skipped,
            "first_ts": format_ts(self.first_ts) if self.first_ts is not None else None,
            "last_ts": format_ts(self.last_ts) if self.last_ts is not None else None,
            "last_line": self.last_line,
            "elapsed_s": round(self.elapsed, 3),
            "rate_per_s": round(self.rate, 1),
        }


def parse_speed(text: str) -> float | None:
    """``60x`` / ``60`` -> 60.0; ``max`` -> None (no pacing)."""
    value = text.strip().lower()
    if value == "max":
        return None
    try:
        speed = float(value.removesuffix("x"))
    except ValueError:
        raise FraudstreamError(f"--speed: {text!r} is not a speed (e.g. 60x, 1x or max)") from None
    if not speed > 0:
        raise FraudstreamError("--speed: must be positive")
    return speed


def parse_start(text: str | None) -> tuple[int | None, float | None]:
    """``--from``: a line number of the file, or an event time (RFC 3339 / date)."""
    if text is None:
        return None, None
    if text.isdigit():
        return int(text), None
    try:
        return None, parse_ts(text, "--from")
    except Exception:
        raise FraudstreamError(
            f"--from: {text!r} is neither a line number nor a time (e.g. 2018-05-01)"
        ) from None


def events(
    rows: Iterable[Row | BadRow],
    *,
    label_delay: float,
    stats: ReplayStats,
    from_line: int | None = None,
    from_ts: float | None = None,
) -> Iterator[tuple[float, Transaction | Label, int]]:
    """Transactions and the fraud labels they will produce, merged in event-time order.

    Rows must come in event-time order (a file that is not is sorted first by the caller). Bad
    rows are logged with their line number and counted, never sent.
    """
    pending: list[tuple[float, int, Label]] = []
    seq = 0
    for row in rows:
        if isinstance(row, BadRow):
            stats.bad_rows += 1
            log.warning("bad row skipped", extra={"line": row.line, "reason": row.reason})
            continue
        tx = row.tx
        if (from_line is not None and row.line < from_line) or (
            from_ts is not None and tx.ts < from_ts
        ):
            stats.skipped += 1
            continue
        while pending and pending[0][0] <= tx.ts:
            known_at, _, label = heapq.heappop(pending)
            yield known_at, label, 0
        if row.is_fraud:
            seq += 1
            known = tx.ts + label_delay
            heapq.heappush(pending, (known, seq, Label(tx.tx_id, True, "replay", known)))
        yield tx.ts, tx, row.line
    while pending:
        known_at, _, label = heapq.heappop(pending)
        yield known_at, label, 0


def transaction_bytes(tx: Transaction) -> bytes:
    wire = tx.to_wire()
    for name in GROUND_TRUTH.intersection(wire):
        del wire[name]
    return orjson.dumps(wire)


async def start_producer(bootstrap: str, idempotent: bool | None) -> AIOKafkaProducer:
    """An idempotent producer where the broker allows it (Tansu does not: then at least once)."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "compression_type": None,
        "request_timeout_ms": 30_000,
    }
    if idempotent is not False:
        producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **options)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            if idempotent:
                raise FraudstreamError(
                    f"the broker refuses an idempotent producer: {exc}"
                ) from None
            log.warning(
                "the broker has no idempotent producer; sending at least once",
                extra={"error": str(exc)},
            )
    producer = AIOKafkaProducer(acks="all", **options)
    await producer.start()
    return producer


async def send_record(
    producer: AIOKafkaProducer,
    record: Transaction | Label,
    line: int,
    stats: ReplayStats,
    topic: str,
    labels_topic: str,
) -> asyncio.Future[Any]:
    """Hand one transaction (keyed by card) or label (keyed by tx) to the producer; count it."""
    if isinstance(record, Transaction):
        future = await producer.send(topic, transaction_bytes(record), key=record.card_id.encode())
        stats.sent += 1
        stats.last_line = line
        stats.last_ts = record.ts
        if stats.first_ts is None:
            stats.first_ts = record.ts
        return future
    future = await producer.send(
        labels_topic, orjson.dumps(record.to_wire()), key=record.tx_id.encode()
    )
    stats.labels += 1
    return future


def run_until_stopped(main: Coroutine[Any, Any, Any]) -> bool:
    """Run ``main`` to its end or until SIGINT or SIGTERM; True if a signal stopped it.

    The first signal cancels ``main`` once, so its ``finally`` clauses (a producer's flush) run to
    their end: a second Ctrl-C, or the SIGTERM a supervisor sends after it, is ignored, and so is
    any signal that comes while the interpreter exits after a stop.
    """
    stopped = False
    signals = (signal.SIGINT, signal.SIGTERM)

    async def guarded() -> None:
        nonlocal stopped
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                task.cancel()

        def on_signal(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(stop)

        # signal.signal, not loop.add_signal_handler: removing the loop's handler puts back the
        # default one (SIGTERM kills) before a stopped run could ignore what comes next.
        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            await main
        except asyncio.CancelledError:
            if not stopped:
                raise
            task.uncancel()
        finally:
            for sig in signals:
                signal.signal(sig, signal.SIG_IGN if stopped else previous[sig])

    asyncio.run(guarded())
    return stopped


async def replay_async(
    rows: Iterable[Row | BadRow],
    *,
    bootstrap: str,
    topic: str = "transactions",
    labels_topic: str = "labels",
    speed: float | None = None,
    label_delay: float = 7 * DAY,
    from_line: int | None = None,
    from_ts: float | None = None,
    limit: int | None = None,
    send_labels: bool = True,
    idempotent: bool | None = None,
    stats: ReplayStats | None = None,
    on_progress: Any = None,
) -> ReplayStats:
    """Send ``rows`` (and their labels) to Kafka; returns the counts. Cancel-safe: whatever was
    handed to the producer before a cancellation is flushed."""
    stats = stats or ReplayStats()
    producer = await start_producer(bootstrap, idempotent)
    wall0: float | None = None
    event0: float | None = None
    in_flight: list[asyncio.Future[Any]] = []
    try:
        for event_ts, record, line in events(
            rows, label_delay=label_delay, stats=stats, from_line=from_line, from_ts=from_ts
        ):
            if isinstance(record, Transaction) and limit is not None and stats.sent >= limit:
                break
            if isinstance(record, Label) and not send_labels:
                continue
            if speed is not None:
                if wall0 is None or event0 is None:
                    wall0, event0 = time.monotonic(), event_ts
                due = wall0 + (event_ts - event0) / speed
                ahead = due - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                    stats.lag = 0.0
                else:
                    stats.lag = -ahead
            in_flight.append(await send_record(producer, record, line, stats, topic, labels_topic))
            if len(in_flight) >= 10_000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
                if on_progress is not None:
                    on_progress(stats)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        await producer.stop()  # flushes what is buffered
    if on_progress is not None:
        on_progress(stats)
    return stats


def replay(
    file: Annotated[Path, typer.Argument(help="CSV, CSV.gz, Parquet or JSONL of transactions.")],
    speed: Annotated[
        str, typer.Option(help="Event seconds per wall second, e.g. 60x, or max.")
    ] = "max",
    preset: Annotated[
        str | None, typer.Option(help="Column layout: handbook or fraudstream (default: guess).")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Column mapping, e.g. tx_id=ID,ts=TIME,... (see backtest).")
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(envvar="FRAUD_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers."),
    ] = None,
    topic: Annotated[
        str, typer.Option(envvar="FRAUD_TOPIC_TRANSACTIONS", help="Transactions topic.")
    ] = "transactions",
    labels_topic: Annotated[
        str, typer.Option(envvar="FRAUD_TOPIC_LABELS", help="Labels topic.")
    ] = "labels",
    label_delay: Annotated[
        float, typer.Option(help="Days after a fraud until its label is known.")
    ] = 7.0,
    labels: Annotated[
        bool, typer.Option("--labels/--no-labels", help="Send fraud labels to the labels topic.")
    ] = True,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Resume at a line number or an event time (2018-05-01)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many transactions.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Feed a file into Kafka in event-time order, paced, with labels when they become known."""
    from replay.commands import open_rows

    logs.configure(log_level)
    if not bootstrap:
        raise FraudstreamError("set FRAUD_KAFKA_BOOTSTRAP or pass --bootstrap")
    pace = parse_speed(speed)
    from_line, from_ts = parse_start(start)
    if label_delay < 0:
        raise FraudstreamError("--label-delay: must not be negative")
    rows = ordered(open_rows(file, preset, columns))
    stats = ReplayStats()
    progress = _Progress(limit)
    try:
        stopped = run_until_stopped(
            replay_async(
                rows,
                bootstrap=bootstrap,
                topic=topic,
                labels_topic=labels_topic,
                speed=pace,
                label_delay=label_delay * DAY,
                from_line=from_line,
                from_ts=from_ts,
                limit=limit,
                send_labels=labels,
                stats=stats,
                on_progress=progress.update,
            )
        )
    except KeyboardInterrupt:
        progress.close()
        _print_summary(stats, interrupted=True)
        raise SystemExit(130) from None
    except KafkaError as exc:
        progress.close()
        _print_summary(stats, interrupted=True)
        raise FraudstreamError(f"Kafka at {bootstrap}: {exc}") from None
    progress.close()
    _print_summary(stats, interrupted=stopped)
    if stopped:
        raise SystemExit(130)


def ordered(rows: Iterable[Row | BadRow]) -> Iterator[Row | BadRow]:
    """Rows in event-time order: as they come when the file is ordered, else sorted (stable)."""
    buffered: list[Row | BadRow] = []
    last = float("-inf")
    in_order = True
    for row in rows:
        buffered.append(row)
        if isinstance(row, Row):
            if row.tx.ts < last:
                in_order = False
            last = max(last, row.tx.ts)
    if not in_order:
        log.info("the file is not in event-time order; sorting it")
        bad = [r for r in buffered if isinstance(r, BadRow)]
        good = sorted((r for r in buffered if isinstance(r, Row)), key=lambda r: r.tx.ts)
        buffered = [*bad, *good]
    return iter(buffered)


class _Progress:
    """A rich progress line (rate, lag) on a terminal; JSON log lines elsewhere."""

    def __init__(self, total: int | None) -> None:
        import sys

        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        self._live = sys.stderr.isatty()
        self._last_log = 0.0
        self._progress: Progress | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]replay[/]"),
                TextColumn("{task.completed:,} sent"),
                TextColumn("{task.fields[rate]:,.0f}/s"),
                TextColumn("lag {task.fields[lag]:.1f}s"),
                TextColumn("event time {task.fields[event]}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("replay", total=total, rate=0.0, lag=0.0, event="")

    def update(self, stats: ReplayStats) -> None:
        event = format_ts(stats.last_ts) if stats.last_ts is not None else ""
        if self._progress is not None:
            self._progress.update(
                self._task, completed=stats.sent, rate=stats.rate, lag=stats.lag, event=event
            )
        elif time.monotonic() - self._last_log >= 5.0:
            self._last_log = time.monotonic()
            log.info("replay progress", extra={**stats.to_dict(), "lag_s": round(stats.lag, 3)})

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _print_summary(stats: ReplayStats, *, interrupted: bool) -> None:
    doc = stats.to_dict()
    head = "replay interrupted" if interrupted else "replay done"
    typer.echo(
        f"{head}: {doc['sent']:,} transactions and {doc['labels']:,} labels in "
        f"{doc['elapsed_s']:.1f} s ({doc['rate_per_s']:,.0f}/s); {doc['bad_rows']} bad rows; "
        f"event time {doc['first_ts']} .. {doc['last_ts']}",
        err=True,
    )
    if interrupted and stats.last_line:
        typer.echo(f"resume with: --from {stats.last_line + 1}", err=True)
