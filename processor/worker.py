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
from processor import logs, metrics
from processor.feed import FeedKind
from processor.gctune import keep_collections_short
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
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app, runtime = create_app(settings)
    heartbeat = metrics.Heartbeat(settings.liveness_stall_s)
    heartbeat.start(loop)  # stamps from the loop's first turn, in start-up as well
    metrics.serve(settings, runtime, heartbeat)
    keep_collections_short()
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
    from processor.topics import ensure_topics

    assert settings.kafka_bootstrap
    await ensure_topics(settings.kafka_bootstrap, settings.topics(), timeout=timeout)


def up(
    run_dir: Annotated[
        Path, typer.Option(help="Where the embedded services keep their logs.")
    ] = Path(".run"),
    api: Annotated[
        bool, typer.Option("--api/--no-api", help="Run the analyst API and console.")
    ] = True,
    feed: Annotated[
        FeedKind,
        typer.Option(help="Payments to send: none, a simulated month, or a file (--feed-file)."),
    ] = FeedKind.NONE,
    feed_file: Annotated[Path | None, typer.Option(help="The file `--feed replay` sends.")] = None,
    feed_speed: Annotated[
        str, typer.Option(help="Pace of the feed: auto (about 30 payments/s), e.g. 60x, or max.")
    ] = "auto",
    warmup_days: Annotated[
        float,
        typer.Option(
            help="Days of the feed sent unpaced first, so the model learns before you look."
        ),
    ] = 7.0,
    label_delay: Annotated[
        float,
        typer.Option(
            help="With a feed: days until a fraud's label is sent (and the learner's delay)."
        ),
    ] = 1.0,
) -> None:
    """Start the local stack: embedded broker, Valkey, topics, a worker, the API and console, and
    optionally a live feed of payments; Ctrl-C (or SIGTERM) stops it all.

    FRAUD_KAFKA_BOOTSTRAP / FRAUD_REDIS_URL, when set, are used instead of the embedded ones.
    """
    from processor.embedded import EmbeddedKafka, EmbeddedValkey
    from processor.feed import feed_command, start_console

    settings = Settings()
    logs.configure(settings.log_level, settings.log_json)
    # SIGTERM is Ctrl-C from the start: a stop during start-up still stops what was started.
    signal.signal(signal.SIGTERM, _interrupt)
    run_dir.mkdir(parents=True, exist_ok=True)
    services: list[EmbeddedKafka | EmbeddedValkey] = []
    children: list[subprocess.Popen[bytes]] = []
    feeders: list[subprocess.Popen[bytes]] = []  # a feed that ends leaves the stack running
    try:
        feed_args = None
        if feed is not FeedKind.NONE:
            feed_args = feed_command(
                feed,
                feed_file,
                speed=feed_speed,
                warmup_days=warmup_days,
                label_delay=label_delay,
                run_dir=run_dir,
            )
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
        env.update(_worker_metrics_env(settings))
        if feed_args is not None and "FRAUD_LABEL_DELAY_DAYS" not in os.environ:
            # The learner takes "no fraud reported" as legit after the delay the feed keeps.
            env["FRAUD_LABEL_DELAY_DAYS"] = f"{label_delay:g}"
        # The children log to files: on the terminal, the address and token stay in view.
        worker_log = run_dir / "worker.log"
        with open(worker_log, "wb") as out:  # one run per file
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "processor.cli", "worker"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        console = None
        if api:
            console = start_console(env, run_dir)
            children.append(console.process)
            console.wait_ready()
        if feed_args is not None:
            feeders.append(subprocess.Popen(feed_args, env=env, stdin=subprocess.DEVNULL))
        lines = ["fraudstream is up; Ctrl-C stops it"]
        if console is not None:
            lines.append(f"  console   {console.url}")
            if console.token is not None:
                # Printed here once, for the person at this terminal; never logged.
                lines.append(f"  token     {console.token}   (analyst, made for this run)")
                lines.append(f"  sign in   {console.url}#token={console.token}")
            else:
                lines.append("  sign in   with a token from FRAUD_API_TOKENS")
        if feed_args is not None:
            source = "a simulated month" if feed is FeedKind.SIMULATE else str(feed_file)
            pace = "about 30 payments a second" if feed_speed == "auto" else feed_speed
            lines.append(
                f"  feed      {source}: {warmup_days:g} days at full speed, then {pace}; "
                f"fraud labels {label_delay:g} day{'' if label_delay == 1 else 's'} late"
            )
        if env.get("FRAUD_METRICS_PORT", "0") != "0":
            shown = metrics.shown_host(env["FRAUD_METRICS_HOST"])
            lines.append(f"  metrics   http://{shown}:{env['FRAUD_METRICS_PORT']}/metrics (worker)")
        lines.append(f"  kafka     FRAUD_KAFKA_BOOTSTRAP={env['FRAUD_KAFKA_BOOTSTRAP']}")
        lines.append(f"  redis     FRAUD_REDIS_URL={env['FRAUD_REDIS_URL']}")
        logs_shown = [str(worker_log)] + ([str(console.log_path)] if console else [])
        lines.append(f"  logs      {'  '.join(logs_shown)}")
        typer.echo("\n".join(lines), err=True)
        try:
            _supervise(children)
        except FraudstreamError:
            for child in children:
                if child.poll() is not None:
                    name = str(child.args[-1])
                    tail = (run_dir / f"{name}.log").read_text(errors="replace").splitlines()
                    typer.echo(f"--- the end of {run_dir / name}.log:", err=True)
                    typer.echo("\n".join(tail[-30:]), err=True)
            raise
    except KeyboardInterrupt:
        pass
    finally:
        _stop_children([*feeders, *children])
        for service in reversed(services):
            service.stop()
        log.info("stopped")


def _worker_metrics_env(settings: Settings) -> dict[str, str]:
    """Where the worker child serves ``/metrics``: loopback unless FRAUD_METRICS_HOST is set,
    on FRAUD_METRICS_PORT or, when another process (another stack's worker) has it, a free one.
    """
    if settings.metrics_port == 0:
        return {"FRAUD_METRICS_PORT": "0"}
    host = settings.metrics_host if os.environ.get("FRAUD_METRICS_HOST") else "127.0.0.1"
    port = metrics.pick_port(host, settings.metrics_port)
    return {"FRAUD_METRICS_HOST": host, "FRAUD_METRICS_PORT": str(port)}


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
