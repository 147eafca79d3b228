"""The ``fraudstream`` command: one entry point for every part of the system."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from api import commands as api_commands
from models.errors import FraudstreamError
from processor import worker as worker_commands
from replay import commands as replay_commands
from replay import producer as replay_producer

app = typer.Typer(
    name="fraudstream",
    help=(
        "Real-time fraud detection: windowed features, an online River model, decisions with "
        "reason codes. `backtest` measures detection quality on a file; `simulate` writes "
        "synthetic card payments to try it on."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("up")(worker_commands.up)
app.command("worker")(worker_commands.worker)
app.command("replay")(replay_producer.replay)
app.command("backtest")(replay_commands.backtest)
app.command("simulate")(replay_commands.simulate)
app.command("api")(api_commands.api)


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr and a non-zero exit: the CLI's answer to bad input."""
    typer.secho(f"fraudstream: {message}", fg=typer.colors.RED, err=True)
    raise SystemExit(code)


def main() -> None:
    try:
        app()
    except FraudstreamError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.stderr.close()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
