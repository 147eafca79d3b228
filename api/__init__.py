"""The analyst-facing HTTP service: live decisions and narratives over Server-Sent Events, the
review queue, analysts' verdicts (stored in Redis, audited, sent on as labels), health, metrics
and the console's static files. ``create_app`` in ``api.app`` builds it; ``fraudstream api`` runs
it. It imports ``models`` (records) and ``processor.logs`` only.
"""

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so `import api.settings` does not pull in FastAPI.
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(name)
