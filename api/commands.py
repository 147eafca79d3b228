"""``fraudstream api``: the analyst API and console under uvicorn."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from api.settings import ApiSettings
from processor import logs
from processor.gctune import keep_collections_short

log = logging.getLogger("fraudstream.api")


def api(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default FRAUD_API_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default FRAUD_API_PORT).")
    ] = None,
) -> None:
    """Serve the analyst API and console: live decisions and narratives, cases, verdicts.

    Reads FRAUD_KAFKA_BOOTSTRAP, FRAUD_REDIS_URL, FRAUD_API_TOKENS or FRAUD_API_TOKENS_FILE
    ("token:role[:name],...", roles viewer, analyst, admin) and the other FRAUD_API_* settings.
    """
    import uvicorn

    from api.app import create_app

    settings = ApiSettings()
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    logs.configure(settings.log_level, settings.log_json)
    for name in ("aiokafka", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app = create_app(settings)  # fails here, before listening, on a bad configuration
    keep_collections_short()
    local = settings.api_host in ("0.0.0.0", "::", "127.0.0.1")
    shown = "localhost" if local else settings.api_host
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
        loop="auto",
        http="auto",
    )
    server = uvicorn.Server(config)
    typer.echo(f"fraudstream console: http://{shown}:{settings.api_port}/  (API docs: /docs)")
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it drained on: a clean stop here
        log.info("api stopped")
