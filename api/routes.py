"""The /v1 resources: one decision, the review queue, a card's history, verdicts, settings."""

from __future__ import annotations

import base64
import binascii
import bisect
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.auth import Principal, Role, require
from api.decisions import DecisionEntry, case_key
from api.errors import Conflict, InvalidInput, NotFound, RateLimited
from api.schemas import CardHistory, CasesPage, DecisionDetail, Problem, StoredVerdict
from api.schemas import VerdictRequest as VerdictBody
from api.state import ApiState

log = logging.getLogger("fraudstream.api.verdicts")

router = APIRouter(prefix="/v1")

TxId = Annotated[str, Path(min_length=1, max_length=128, description="The payment's tx_id.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No valid bearer token."},
    403: {"model": Problem, "description": "The token's role may not do this."},
}


def _state(request: Request) -> ApiState:
    return request.app.state.api  # type: ignore[no-any-return]


def _json(body: bytes, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type="application/json")


def _items(entries: list[DecisionEntry]) -> bytes:
    return b"[" + b",".join(e.data for e in entries) + b"]"


def _unknown(tx_id: str, state: ApiState) -> NotFound:
    return NotFound(
        f"no decision for tx_id {tx_id!r} among the last "
        f"{state.settings.api_retention_events} decisions (and open cases) this service holds"
    )


@router.get(
    "/decisions/{tx_id}",
    response_model=DecisionDetail,
    responses={**_ERRORS, 404: {"model": Problem, "description": "Unknown tx_id."}},
    summary="One decision and its verdict, if any",
    openapi_extra={"x-required-role": "viewer"},
)
async def get_decision(
    request: Request,
    tx_id: TxId,
    _: Annotated[Principal, Depends(require(Role.VIEWER))],
) -> Response:
    state = _state(request)
    entry = state.decisions.get(tx_id)
    if entry is None:
        raise _unknown(tx_id, state)
    verdict = await state.verdicts.get(tx_id)
    return _json(b'{"decision":' + entry.data + b',"verdict":' + orjson.dumps(verdict) + b"}")


def _encode_case_cursor(entry: DecisionEntry) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([entry.score, entry.tx_id])).decode().rstrip("=")


def _decode_case_cursor(text: str) -> tuple[float, str]:
    try:
        score, tx_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise TypeError
        return (-float(score), str(tx_id))
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise InvalidInput("cursor: not a cursor this API issued") from None


@router.get(
    "/cases",
    response_model=CasesPage,
    responses={**_ERRORS, 422: {"model": Problem, "description": "A cursor not issued here."}},
    summary="The review queue: review and decline decisions without a verdict, highest score first",
    openapi_extra={"x-required-role": "viewer"},
)
async def list_cases(
    request: Request,
    _: Annotated[Principal, Depends(require(Role.VIEWER))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> Response:
    state = _state(request)
    cases = state.decisions.open_cases()
    i = 0
    if cursor:
        i = bisect.bisect_right(cases, _decode_case_cursor(cursor), key=case_key)
    page: list[DecisionEntry] = []
    while len(page) < limit and i < len(cases):
        chunk = cases[i : i + 2 * (limit - len(page)) + 8]
        verdicts = await state.verdicts.get_many([e.tx_id for e in chunk])
        for entry, verdict in zip(chunk, verdicts, strict=True):
            i += 1
            if verdict is not None:
                entry.verdict_seen = True
                continue
            page.append(entry)
            if len(page) == limit:
                break
    more = len(page) == limit and i < len(cases)
    next_cursor = _encode_case_cursor(page[-1]) if more else None
    body = b'{"items":' + _items(page) + b',"next_cursor":' + orjson.dumps(next_cursor) + b"}"
    return _json(body)


@router.get(
    "/cards/{card_id}/history",
    response_model=CardHistory,
    responses=_ERRORS,
    summary="A card's recent decisions, newest first",
    openapi_extra={"x-required-role": "viewer"},
)
async def card_history(
    request: Request,
    card_id: Annotated[str, Path(min_length=1, max_length=256)],
    _: Annotated[Principal, Depends(require(Role.VIEWER))],
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> Response:
    state = _state(request)
    entries = state.decisions.card_history(card_id, limit)
    shown = entries[0].card_id if entries else card_id
    return _json(b'{"card_id":' + orjson.dumps(shown) + b',"items":' + _items(entries) + b"}")


@router.post(
    "/decisions/{tx_id}/verdict",
    status_code=201,
    response_model=StoredVerdict,
    responses={
        **_ERRORS,
        404: {"model": Problem, "description": "Unknown tx_id."},
        409: {"model": Problem, "description": "A verdict exists; send change: true."},
        429: {"model": Problem, "description": "Too many writes; see Retry-After."},
        503: {"model": Problem, "description": "Redis or Kafka unreachable."},
    },
    summary="Give a verdict on a payment (analyst): stored, audited, sent on as a label",
    openapi_extra={"x-required-role": "analyst"},
)
async def post_verdict(
    request: Request,
    tx_id: TxId,
    body: VerdictBody,
    who: Annotated[Principal, Depends(require(Role.ANALYST))],
) -> Response:
    state = _state(request)
    try:
        await state.limiter.check(who)
    except RateLimited:
        state.metrics.rate_limited.inc()
        raise
    entry = state.decisions.get(tx_id)
    if entry is None:
        raise _unknown(tx_id, state)
    stored, current, previous = await state.verdicts.record(
        tx_id, body.verdict, body.note, who, body.change
    )
    if not stored:
        raise Conflict(
            f"tx_id {tx_id!r} already has the verdict {current['verdict']!r} "
            f"(by {current['by']} at {current['at']}); send change: true to replace it"
        )
    entry.verdict_seen = True
    state.metrics.verdicts.labels(body.verdict).inc()
    log.info(
        "verdict stored",
        extra={
            "tx_id": tx_id,
            "verdict": body.verdict,
            "who": who.name,
            "role": who.role.label,
            "change": body.change,
            "previous": previous["verdict"] if previous else None,
        },
    )
    await state.labels.publish(tx_id, body.verdict, time.time())
    return _json(orjson.dumps({**current, "previous": previous}), 201)


@router.get(
    "/settings",
    responses=_ERRORS,
    summary="The service's settings, secrets left out (admin)",
    openapi_extra={"x-required-role": "admin"},
)
async def get_settings(
    request: Request,
    _: Annotated[Principal, Depends(require(Role.ADMIN))],
) -> dict[str, Any]:
    return _state(request).settings.public()
