"""The API's exception family; `api.app` turns each into its HTTP answer in one place."""

from __future__ import annotations

from models.errors import FraudstreamError


class ApiError(FraudstreamError):
    """Root of the API's errors: a status, a message for people, and extra response headers."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str = "a valid bearer token is required") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class InvalidInput(ApiError):
    """Input that passed the schema but means nothing here (a cursor this API never issued)."""

    status = 422


class RateLimited(ApiError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class Unavailable(ApiError):
    """A backing service (Kafka, Redis) cannot be reached right now."""

    status = 503


class ConfigError(FraudstreamError):
    """The API cannot start as configured (no Kafka address, a malformed token list)."""
