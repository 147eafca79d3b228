"""What ``fraudstream up`` adds to the stack for people: a live feed of payments and the console.

**The feed** (``--feed``) shows payments paced so that a person can watch them.

It replays a file — the handbook's, or a month the simulator writes — through the same producer
and the same event-time merge of transactions and fraud labels as ``fraudstream replay``, with two
changes made for a screen. The first ``warmup`` days go as fast as the broker takes them, so the
model has learned from some labels before anyone looks (a fresh model approves everything). Then
the pace is set so that about ``rate`` payments a second arrive on average (``--speed auto``
measures the file's first day), which keeps a few rows a second on the console without flooding.

Run as ``python -m processor.feed`` by ``fraudstream up``; it reads ``FRAUD_KAFKA_BOOTSTRAP`` and
the topic names from the environment. SIGINT or SIGTERM stop it after a flush.

**The console** (``--api``) is ``fraudstream api`` as a child process. Unless ``FRAUD_API_TOKENS``
(or ``FRAUD_API_TOKENS_FILE``) is set, ``up`` makes one analyst token for the run, hands it to the
API in its environment and prints it once on the terminal; it is never logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from models.errors import FraudstreamError
from processor import logs
from replay.producer import (
    DAY,
    ReplayStats,
    events,
    parse_speed,
    run_until_stopped,
    send_record,
    start_producer,
)
from replay.readers import BadRow, Row

__all__ = [
    "Console",
    "FeedKind",
    "auto_speed",
    "feed_async",
    "feed_command",
    "simulated_file",
    "start_console",
]

log = logging.getLogger("fraudstream.feed")

# The simulated month: the handbook's world at 2/5 of its size, about 4,000 payments a day.
SIM_DAYS = 30
SIM_CUSTOMERS = 2_000
SIM_TERMINALS = 4_000
CONSOLE_PORT = 8000
_LOG_TAIL_LINES = 30


class FeedKind(StrEnum):
    """What ``fraudstream up --feed`` sends: nothing, a simulated month, or a file."""

    NONE = "none"
    SIMULATE = "simulate"
    REPLAY = "replay"


def simulated_file(run_dir: Path, days: int = SIM_DAYS, seed: int = 0) -> Path:
    """A simulated month of payments in ``run_dir``, written once (a seed gives the same bytes)."""
    from replay.simulate import SimulationConfig, simulate_to_file

    path = run_dir / f"simulated-{days}d-{SIM_CUSTOMERS}c-seed{seed}.csv"
    if not path.is_file():
        config = SimulationConfig(
            customers=SIM_CUSTOMERS, terminals=SIM_TERMINALS, days=days, seed=seed
        )
        partial = path.with_suffix(".partial.csv")
        summary = simulate_to_file(config, partial)
        partial.replace(path)
        log.info(
            "simulated payments written",
            extra={
                "path": str(path),
                "transactions": summary.transactions,
                "frauds": summary.frauds,
            },
        )
    return path


def auto_speed(rows: Iterable[Row | BadRow], rate: float) -> tuple[float, Iterator[Row | BadRow]]:
    """The speed at which the file's first day arrives at ``rate`` payments a second, and the
    rows (the first day is read ahead, then handed back in front of the rest)."""
    it = iter(rows)
    ahead: list[Row | BadRow] = []
    first: float | None = None
    count = 0
    for row in it:
        ahead.append(row)
        if isinstance(row, BadRow):
            continue
        if first is None:
            first = row.tx.ts
        if row.tx.ts - first >= DAY or count >= 500_000:
            break
        count += 1
    per_event_second = count / DAY if count else 1.0
    speed = min(100_000.0, max(1.0, rate / per_event_second))
    return speed, itertools.chain(ahead, it)


async def feed_async(
    rows: Iterable[Row | BadRow],
    *,
    bootstrap: str,
    topic: str,
    labels_topic: str,
    speed: float | None,
    warmup: float = 0.0,
    label_delay: float = DAY,
    stats: ReplayStats | None = None,
) -> ReplayStats:
    """Send ``rows`` and their fraud labels in event-time order: the first ``warmup`` seconds of
    event time unpaced, then at ``speed`` (None: unpaced throughout)."""
    stats = stats or ReplayStats()
    # At least once: the feature store counts a repeated tx_id once, and probing for an
    # idempotent producer makes Tansu log an error.
    producer = await start_producer(bootstrap, False)
    warm_until: float | None = None
    wall0: float | None = None
    event0 = 0.0
    in_flight: list[asyncio.Future[Any]] = []
    try:
        for event_ts, record, line in events(rows, label_delay=label_delay, stats=stats):
            if warm_until is None:
                warm_until = event_ts + warmup
                if warmup > 0:
                    log.info("fast-forwarding", extra={"days": round(warmup / DAY, 2)})
            if speed is not None and event_ts >= warm_until:
                if wall0 is None:
                    await asyncio.gather(*in_flight)
                    in_flight.clear()
                    wall0, event0 = time.monotonic(), event_ts
                    log.info(
                        "feed is live",
                        extra={
                            "speed": f"{speed:.0f}x",
                            "sent": stats.sent,
                            "labels": stats.labels,
                        },
                    )
                ahead = wall0 + (event_ts - event0) / speed - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                stats.lag = max(0.0, -ahead)
            in_flight.append(await send_record(producer, record, line, stats, topic, labels_topic))
            if len(in_flight) >= 5_000:
                await asyncio.gather(*in_flight)
                in_flight.clear()
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()  # flushes what is buffered
    return stats


def feed_command(
    kind: FeedKind,
    file: Path | None,
    *,
    speed: str,
    warmup_days: float,
    label_delay: float,
    run_dir: Path,
) -> list[str]:
    """The command line of the feed child for ``up --feed``."""
    if kind is FeedKind.REPLAY:
        if file is None:
            raise FraudstreamError("--feed replay needs --feed-file FILE")
        if not file.is_file():
            raise FraudstreamError(f"--feed-file: no such file: {file}")
        source = str(file)
    else:
        source = "simulate"
    return [
        sys.executable,
        "-m",
        "processor.feed",
        source,
        "--speed",
        speed,
        "--warmup-days",
        f"{warmup_days:g}",
        "--label-delay",
        f"{label_delay:g}",
        "--run-dir",
        str(run_dir),
    ]


@dataclass
class Console:
    """The API child of ``up``: where it listens, its log, and the token made for this run."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    token: str | None  # None: the tokens come from the user's FRAUD_API_TOKENS(_FILE)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once ``/readyz`` says Kafka and Redis answer; raise with the log's tail if the
        API exits first or does not get ready in time."""
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per probe otherwise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FraudstreamError(
                    f"the API exited with code {self.process.returncode}; {self.log_path} ends "
                    f"with:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise FraudstreamError(
            f"the API at {self.url} is not ready after {timeout:.0f}s; {self.log_path} ends "
            f"with:\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_console(env: Mapping[str, str], run_dir: Path) -> Console:
    """Start ``fraudstream api`` on FRAUD_API_HOST:FRAUD_API_PORT (default 127.0.0.1, port 8000
    or, when that is taken, a free one), logging to ``run_dir/api.log``."""
    child_env = dict(env)
    host = child_env.get("FRAUD_API_HOST") or "127.0.0.1"
    if child_env.get("FRAUD_API_PORT"):
        port = int(child_env["FRAUD_API_PORT"])
    else:
        port = CONSOLE_PORT if _free(host, CONSOLE_PORT) else _any_free_port(host)
    child_env["FRAUD_API_HOST"] = host
    child_env["FRAUD_API_PORT"] = str(port)
    token = None
    if not child_env.get("FRAUD_API_TOKENS") and not child_env.get("FRAUD_API_TOKENS_FILE"):
        token = secrets.token_urlsafe(24)
        child_env["FRAUD_API_TOKENS"] = f"{token}:analyst:local-analyst"
    log_path = run_dir / "api.log"
    with open(log_path, "wb") as log_file:  # one run per file
        process = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "api"],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return Console(process, f"http://{shown}:{port}/", log_path, token)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(
    source: Annotated[
        str, typer.Argument(help="A file of transactions, or 'simulate' for a simulated month.")
    ],
    speed: Annotated[
        str, typer.Option(help="Event seconds per wall second (60x), max, or auto.")
    ] = "auto",
    rate: Annotated[float, typer.Option(help="Payments a second that auto aims at.")] = 30.0,
    warmup_days: Annotated[float, typer.Option(help="Days sent unpaced first.")] = 7.0,
    label_delay: Annotated[float, typer.Option(help="Days until a fraud's label is sent.")] = 1.0,
    run_dir: Annotated[Path, typer.Option(help="Where a simulated file is written.")] = Path(
        ".run"
    ),
    bootstrap: Annotated[str | None, typer.Option(envvar="FRAUD_KAFKA_BOOTSTRAP")] = None,
    topic: Annotated[str, typer.Option(envvar="FRAUD_TOPIC_TRANSACTIONS")] = "transactions",
    labels_topic: Annotated[str, typer.Option(envvar="FRAUD_TOPIC_LABELS")] = "labels",
    log_level: Annotated[str, typer.Option(envvar="FRAUD_LOG_LEVEL")] = "INFO",
    log_json: Annotated[bool | None, typer.Option(envvar="FRAUD_LOG_JSON")] = None,
) -> None:
    """Feed the local stack with paced payments (``fraudstream up --feed``)."""
    from replay.commands import open_rows

    logs.configure(log_level, log_json)
    signal.signal(signal.SIGTERM, _stop)
    if not bootstrap:
        raise FraudstreamError("set FRAUD_KAFKA_BOOTSTRAP")
    stats = ReplayStats()
    try:
        file = simulated_file(run_dir) if source == "simulate" else Path(source)
        if not file.is_file():
            raise FraudstreamError(f"feed: no such file: {file}")
        rows: Iterable[Row | BadRow] = open_rows(file, None, None)
        if speed.strip().lower() == "auto":
            pace: float | None
            pace, rows = auto_speed(rows, rate)
        else:
            pace = parse_speed(speed)
        log.info(
            "feed starting",
            extra={
                "file": str(file),
                "speed": f"{pace:.0f}x" if pace else "max",
                "warmup_days": warmup_days,
                "label_delay_days": label_delay,
            },
        )
        stopped = run_until_stopped(
            feed_async(
                rows,
                bootstrap=bootstrap,
                topic=topic,
                labels_topic=labels_topic,
                speed=pace,
                warmup=warmup_days * DAY,
                label_delay=label_delay * DAY,
                stats=stats,
            )
        )
    except KeyboardInterrupt:  # a stop before the feed got going
        stopped = True
    if stopped:
        log.info("feed stopped", extra=stats.to_dict())
    else:
        log.info("feed finished: the file is sent", extra=stats.to_dict())


def run() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    try:
        app()
    except FraudstreamError as exc:
        typer.secho(f"fraudstream feed: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run()
