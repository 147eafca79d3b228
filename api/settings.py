"""Settings of the analyst API, read from ``FRAUD_*`` environment variables.

Names shared with the worker (``kafka_bootstrap``, ``redis_url``, the topics, ``redis_prefix``)
are the same variables, so one ConfigMap serves both deployables. The bearer tokens are a secret:
``FRAUD_API_TOKENS`` ("token:role[:name],...") and/or ``FRAUD_API_TOKENS_FILE`` (the same format,
one entry a line, for a mounted Kubernetes secret).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """The API's configuration; each field is the env var ``FRAUD_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore", frozen=True)

    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port...]."
    )
    redis_url: str | None = Field(None, description="Redis (or Valkey) URL.")
    topic_decisions: str = "decisions"
    topic_narratives: str = "narratives"
    topic_labels: str = "labels"
    redis_prefix: str = Field("fs", description="Prefix of every Redis key the API writes.")

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_tokens: SecretStr = Field(
        SecretStr(""), description='Bearer tokens: "token:role[:name],..." (viewer|analyst|admin).'
    )
    api_tokens_file: Path | None = Field(None, description="A file of tokens, one a line.")
    api_cors_origins: str = Field("", description="Comma-separated origins; empty: CORS off.")
    api_retention_events: int = Field(
        100_000, ge=1, description="Decisions kept in memory for resume, lookups and history."
    )
    api_retention_cases: int = Field(
        20_000, ge=1, description="Review/decline decisions kept for the queue, besides the above."
    )
    api_retention_narratives: int = Field(5_000, ge=1, description="Narratives kept in memory.")
    api_client_buffer: int = Field(1_000, ge=1, description="Pending events per SSE client.")
    api_heartbeat_s: float = Field(15.0, gt=0, description="Seconds between SSE heartbeats.")
    api_send_timeout_s: float = Field(
        30.0, gt=0, description="A client whose socket takes no bytes this long is cut off."
    )
    api_write_rate_per_min: int = Field(60, ge=1, description="Writes per token per minute.")
    api_verdict_ttl_days: float = Field(180.0, gt=0, description="How long verdicts are kept.")
    api_audit_maxlen: int = Field(1_000_000, ge=1, description="Audit stream length (about).")
    log_level: str = "INFO"
    log_json: bool | None = Field(None, description="JSON logs (default: when not a terminal).")

    @field_validator("kafka_bootstrap", "redis_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.api_cors_origins.split(",") if o.strip()]

    def public(self) -> dict[str, Any]:
        """Every setting that is not a secret (a password in the Redis URL is masked)."""
        doc = self.model_dump(mode="json", exclude={"api_tokens"})
        doc["redis_url"] = mask_url_password(self.redis_url) if self.redis_url else None
        return doc


def mask_url_password(url: str) -> str:
    """``redis://user:secret@host/0`` -> ``redis://user:***@host/0``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
