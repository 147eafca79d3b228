"""The two SSE streams: live decisions (resumable by cursor) and one case's narrative."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Send

from api.auth import Principal, Role, require
from api.decisions import DecisionFilter, decode_cursor
from api.errors import InvalidInput
from api.state import ApiState
from models.records import Action, mask_pan

router = APIRouter(prefix="/v1")

_RETRY = b"retry: 3000\n\n"
_BATCH = 500
_SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An endless `text/event-stream`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
_LAST_ID_DOC = "Resume after this event id (the `Last-Event-ID` header wins when both are sent)."


def _gap(missed: int | None, reason: str) -> bytes:
    return b"event: gap\ndata: " + orjson.dumps({"missed": missed, "reason": reason}) + b"\n\n"


class _StreamResponse(EventSourceResponse):
    """The library's SSE response with a cheaper per-send timeout.

    With a thousand clients every fan-out round is a thousand sends; the library bounds each in
    an anyio cancel scope, which costs more than the write itself. ``asyncio.timeout`` bounds it
    the same way (a client whose socket takes nothing for ``send_timeout`` is cut off) for less.
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        try:
            async with asyncio.timeout(self.send_timeout):
                await send(message)
        except TimeoutError:
            raise SendTimeoutError() from None


def _response(state: ApiState, events: AsyncIterator[bytes]) -> EventSourceResponse:
    settings = state.settings
    return _StreamResponse(
        events,
        ping=settings.api_heartbeat_s,
        send_timeout=settings.api_send_timeout_s,
        sep="\n",
    )


@router.get(
    "/decisions/stream",
    response_class=EventSourceResponse,
    responses=_SSE_DOC,
    summary="Live decisions (SSE), resumable with Last-Event-ID",
    openapi_extra={"x-required-role": "viewer"},
)
async def stream_decisions(
    request: Request,
    _: Annotated[Principal, Depends(require(Role.VIEWER))],
    action: Annotated[list[Action] | None, Query(description="Only these actions.")] = None,
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    merchant: Annotated[str | None, Query(max_length=256)] = None,
    card: Annotated[str | None, Query(max_length=256)] = None,
    last_event_id: Annotated[
        str | None, Query(max_length=100_000, description=_LAST_ID_DOC)
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=100_000)
    ] = None,
) -> EventSourceResponse:
    """Each event is `event: decision`, `id: <cursor>`, `data: <decision JSON>`.

    A cursor older than what this replica holds first gets `event: gap` with
    `{"missed": n|null, "reason": "retention"}`; a client that does not keep up gets
    `{"missed": n, "reason": "slow"}` in place of the events it could not take.
    """
    state: ApiState = request.app.state.api
    wanted = DecisionFilter(
        actions=frozenset(a.value for a in action) if action else None,
        min_score=min_score,
        merchant=merchant,
        card=mask_pan(card) if card is not None else None,
    )
    raw = last_event_id_header or last_event_id
    cursor = None
    if raw is not None and raw.strip():
        try:
            cursor = decode_cursor(raw)
        except ValueError:
            raise InvalidInput("Last-Event-ID: not an event id this API issued") from None
    return _response(state, _decision_events(state, wanted, cursor))


async def _decision_events(
    state: ApiState, wanted: DecisionFilter, cursor: dict[int, int] | None
) -> AsyncIterator[bytes]:
    metrics = state.metrics
    streamed = metrics.events_streamed.labels("decisions")
    # Subscribing inside the generator: its `finally` is then sure to unsubscribe.
    subscriber, replay = state.decisions.subscribe(
        wanted, state.settings.api_client_buffer, cursor, metrics.events_dropped.inc
    )
    clients = metrics.sse_clients.labels("decisions")
    clients.inc()
    try:
        yield _RETRY
        if replay.gap:
            metrics.gaps.labels("retention").inc()
            yield _gap(replay.missed, "retention")
        entries = replay.entries
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            yield b"".join(e.frame for e in batch)
            streamed.inc(len(batch))
        del entries, replay
        while True:
            dropped, events = await subscriber.take()
            if dropped:  # counted in events_dropped as they were dropped
                metrics.gaps.labels("slow").inc()
                yield _gap(dropped, "slow")
            if events:
                if subscriber.plain:
                    yield state.decisions.joined(events)
                else:
                    yield b"".join(e.frame for e in events)
                streamed.inc(len(events))
    finally:
        state.decisions.unsubscribe(subscriber)
        clients.dec()


@router.get(
    "/narratives/{tx_id}/stream",
    response_class=EventSourceResponse,
    responses=_SSE_DOC,
    summary="One case's narrative (SSE), chunk by chunk, ending after the last",
    openapi_extra={"x-required-role": "viewer"},
)
async def stream_narrative(
    request: Request,
    _: Annotated[Principal, Depends(require(Role.VIEWER))],
    tx_id: Annotated[str, Path(min_length=1, max_length=128)],
    last_event_id: Annotated[str | None, Query(max_length=20, description=_LAST_ID_DOC)] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=20)
    ] = None,
) -> EventSourceResponse:
    """Each event is `event: chunk`, `id: <seq>`, `data: <chunk JSON>` (`tx_id`, `seq`, `delta`,
    `done`, `source`, `model`; the last one may carry the whole `text` and `usage`)."""
    state: ApiState = request.app.state.api
    raw = last_event_id_header or last_event_id
    after = -1
    if raw is not None and raw.strip():
        try:
            after = int(raw)
        except ValueError:
            raise InvalidInput("Last-Event-ID: expected a chunk number") from None
    return _response(state, _narrative_events(state, tx_id, after))


async def _narrative_events(state: ApiState, tx_id: str, after: int) -> AsyncIterator[bytes]:
    store = state.narratives
    streamed = state.metrics.events_streamed.labels("narratives")
    clients = state.metrics.sse_clients.labels("narratives")
    wakeup = store.watch(tx_id)
    clients.inc()
    try:
        yield _RETRY
        while True:
            wakeup.clear()
            chunks, done = store.after(tx_id, after)
            if chunks:
                after = chunks[-1][0]
                yield b"".join(
                    b"id: %d\nevent: chunk\ndata: %s\n\n" % (seq, data) for seq, data in chunks
                )
                streamed.inc(len(chunks))
            if done:
                return
            await wakeup.wait()
    finally:
        store.unwatch(tx_id, wakeup)
        clients.dec()
