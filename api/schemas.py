"""Request and response bodies of the HTTP API (they are what ``/openapi.json`` documents)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Decision(BaseModel):
    """A decision as on the ``decisions`` topic (card number masked); other fields pass through."""

    model_config = ConfigDict(extra="allow")

    tx_id: str
    card_id: str
    merchant_id: str
    score: float
    action: Literal["approve", "review", "decline"]


class VerdictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Literal["fraud", "legit"]
    note: str = Field("", max_length=1000, description="Why; at most 1000 characters.")
    change: bool = Field(False, description="Replace a verdict that is already there.")


class Verdict(BaseModel):
    tx_id: str
    verdict: Literal["fraud", "legit"]
    note: str
    by: str = Field(description="The name of the token that gave it (never the token).")
    role: str
    at: str = Field(description="When, RFC 3339 UTC.")


class StoredVerdict(Verdict):
    previous: Verdict | None = Field(None, description="The verdict this one replaced.")


class DecisionDetail(BaseModel):
    decision: Decision
    verdict: Verdict | None


class CasesPage(BaseModel):
    items: list[Decision]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class CardHistory(BaseModel):
    card_id: str
    items: list[Decision]


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    kafka: str
    redis: str
