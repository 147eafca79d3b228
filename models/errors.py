"""The exception family of the core: one root, and a class per kind of failure."""

from __future__ import annotations


class FraudstreamError(Exception):
    """Root of every error raised by fraudstream's core."""


class InvalidRecord(FraudstreamError):
    """A record failed validation: skip it (dead-letter it), never stop the stream for it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CheckpointError(FraudstreamError):
    """A model checkpoint cannot be read: wrong format version, corrupt or truncated bytes."""


class PolicyError(FraudstreamError):
    """A decision policy file is malformed: unknown feature, operator or action."""
