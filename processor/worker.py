"""``fraudstream worker`` (one Faust worker) and ``fraudstream up`` (the embedded local stack)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import faust
import typer

from models.errors import FraudstreamError
from processor import logs
from processor.settings import Settings

log = logging.getLogger("fraudstream.up")


class _Worker(faust.Worker):
    """A Faust worker that logs the way the rest of fraudstream does."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self._fraud_settings = settings
        super().__init__(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)

    def _setup_logging(self) -> None:
        settings = self._fraud_settings
        logs.configure(settings.log_level, settings.log_json)
        # Faust and aiokafka are chatty at INFO about every rebalance step.
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGINT/SIGTERM; offsets of handled batches are committed on exit."""
    from processor.app import create_app

    if not settings.kafka_bootstrap or not settings.redis_url:
        raise FraudstreamError(
            "set FRAUD_KAFKA_BOOTSTRAP and FRAUD_REDIS_URL (or use `fraudstream up` for the "
            "embedded local stack)"
        )
    logs.configure(settings.log_level, settings.log_json)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app, _ = create_app(settings)
    worker = _Worker(app, settings)
    logging.getLogger("fraudstream.worker").info(
        "worker starting",
        extra={
            "group": settings.group,
            "transactions": settings.topic_transactions,
            "bootstrap": settings.kafka_bootstrap,
            "learn": settings.learn,
        },
    )
    worker.execute_from_commandline()


def worker(
    learn: Annotated[
        bool | None,
        typer.Option("--learn/--no-learn", help="Run the learner here (default FRAUD_LEARN)."),
    ] = None,
) -> None:
    """Run one worker: score transactions, publish decisions, learn from labels.

    Reads FRAUD_KAFKA_BOOTSTRAP, FRAUD_REDIS_URL and the other FRAUD_* settings (see the README).
    """
    settings = Settings()
    if learn is not None:
        settings = settings.model_copy(update={"learn": learn})
    run_worker(settings)


async def create_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create every topic the worker uses, with its partition count, if missing."""
    from processor.embedded import ensure_topics

    assert settings.kafka_bootstrap
    await ensure_topics(settings.kafka_bootstrap, settings.topics(), timeout=timeout)


def up(
    run_dir: Annotated[
        Path, typer.Option(help="Where the embedded services keep their logs.")
    ] = Path(".run"),
) -> None:
    """Start the local stack: embedded broker, Valkey, topics and a worker; Ctrl-C stops it.

    FRAUD_KAFKA_BOOTSTRAP / FRAUD_REDIS_URL, when set, are used instead of the embedded ones.
    """
    from processor.embedded import EmbeddedKafka, EmbeddedValkey

    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    run_dir.mkdir(parents=True, exist_ok=True)
    services: list[EmbeddedKafka | EmbeddedValkey] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(os.environ)
        if not settings.kafka_bootstrap:
            kafka = EmbeddedKafka().start()
            services.append(kafka)
            env["FRAUD_KAFKA_BOOTSTRAP"] = kafka.bootstrap
            log.info("embedded broker (Tansu) started", extra={"bootstrap": kafka.bootstrap})
        if not settings.redis_url:
            valkey = EmbeddedValkey().start()
            services.append(valkey)
            env["FRAUD_REDIS_URL"] = valkey.url
            log.info("embedded Valkey started", extra={"url": valkey.url})
        settings = settings.model_copy(
            update={
                "kafka_bootstrap": env["FRAUD_KAFKA_BOOTSTRAP"],
                "redis_url": env["FRAUD_REDIS_URL"],
            }
        )
        asyncio.run(create_topics(settings))
        log.info("topics ready", extra={"topics": ",".join(settings.topics())})
        children.append(
            subprocess.Popen([sys.executable, "-m", "processor.cli", "worker"], env=env)
        )
        typer.echo(
            f"fraudstream is up: FRAUD_KAFKA_BOOTSTRAP={env['FRAUD_KAFKA_BOOTSTRAP']} "
            f"FRAUD_REDIS_URL={env['FRAUD_REDIS_URL']} (Ctrl-C stops it)",
            err=True,
        )
        _supervise(children)
    except KeyboardInterrupt:
        pass
    finally:
        _stop_children(children)
        for service in reversed(services):
            service.stop()
        log.info("stopped")


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    """Wait until a child exits or we are interrupted; SIGTERM is handled like Ctrl-C."""
    signal.signal(signal.SIGTERM, _interrupt)
    while True:
        for child in children:
            if child.poll() is not None:
                raise FraudstreamError(f"{child.args[-1]} exited with code {child.returncode}")
        time.sleep(0.5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_children(children: list[subprocess.Popen[bytes]], grace: float = 15.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # SIGINT may be ignored in a background job
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
