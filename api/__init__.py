"""The analyst-facing HTTP service."""

__all__: list[str] = []
