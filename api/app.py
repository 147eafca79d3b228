"""The FastAPI app: ``create_app()`` wires settings, routes, errors, metrics and the console.

``uvicorn --factory api.app:create_app`` builds it from ``FRAUD_*``; tests pass settings in.
Open without a token: ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/openapi.json``,
``/`` and ``/static/*``. Everything under ``/v1`` needs a bearer token (``api.auth``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sse_starlette.sse import SendTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import routes, streams
from api.errors import ApiError
from api.schemas import Health, Readiness
from api.settings import ApiSettings
from api.state import ApiState

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("fraudstream.api.http")

# Polled by probes and scrapers every few seconds: logged at DEBUG only.
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The analyst API for ``settings`` (default: read from the environment)."""
    state = ApiState(settings or ApiSettings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="fraudstream analyst API",
        version="1",
        description=(
            "Live decisions and narratives over Server-Sent Events, the review queue, and "
            "analysts' verdicts. Send `Authorization: Bearer <token>` on every /v1 route."
        ),
        lifespan=lifespan,
    )
    app.state.api = state
    app.include_router(streams.router, tags=["streams"])
    app.include_router(routes.router, tags=["cases"])
    _add_service_routes(app, state)
    _add_error_handlers(app)
    if state.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
    app.add_middleware(RequestLog, state=state)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def _add_service_routes(app: FastAPI, state: ApiState) -> None:
    @app.get("/", include_in_schema=False)
    async def console() -> Response:
        index = STATIC / "index.html"
        if not index.is_file():
            return JSONResponse({"detail": "the console is not installed"}, status_code=404)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=Health, tags=["service"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Kafka or Redis unreachable."}},
        tags=["service"],
        summary="Kafka answers metadata requests and Redis answers PING",
    )
    async def readyz() -> JSONResponse:
        kafka, redis = await asyncio.gather(state.feed.check(), state.check_redis())
        ready = kafka is None and redis is None
        body = {
            "status": "ready" if ready else "unavailable",
            "kafka": kafka or "ok",
            "redis": redis or "ok",
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        state.metrics.buffered.set(len(state.decisions))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("redis unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
        return JSONResponse({"detail": "Redis is unavailable; try again"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in errors
        )
        # The offending input is echoed back as sent; nothing else (no headers) is.
        return JSONResponse(
            {"detail": jsonable_encoder(errors), "message": summary}, status_code=422
        )


class RequestLog:
    """Counts every request by route template and status, and logs one line per request.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so SSE streams pass through untouched.
    The line names the principal (by token name) and never carries a header.
    """

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app = app
        self.metrics = state.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except SendTimeoutError:
            log.warning("client cut off: it took no data for too long", extra=_where(scope))
        finally:
            route = _route(scope)
            seconds = time.perf_counter() - began
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            principal = scope.get("state", {}).get("principal")
            log.log(
                logging.DEBUG if route in _QUIET else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "ms": round(seconds * 1000, 1),
                    "who": principal.name if principal else None,
                },
            )


def _route(scope: Scope) -> str:
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    return "/static" if scope.get("path", "").startswith("/static/") else "unmatched"


def _where(scope: Scope) -> dict[str, Any]:
    return {"route": _route(scope), "method": scope.get("method")}
