"""Model distribution through Redis: the learner publishes checkpoints, scorers pick them up.

Key layout (every key carries the ``{model}`` hash tag, so they share one Redis Cluster slot and
the publish script may touch them all):

* ``<prefix>:{model}:latest`` — hash: ``version``, ``created_at``, ``trained_on``, ``kind``,
  ``model_version``, ``published_at`` and ``blob`` (the checkpoint bytes, see
  :mod:`models.checkpoint`);
* ``<prefix>:{model}:v:<version>`` — the bytes of the last ``keep`` versions, for audit and
  rollback; older ones are deleted by the publish script.

Publishing is one Lua call, so a scorer never sees a header without its bytes, and a version never
goes backwards: a learner that publishes an older version than the one stored is refused.
Scorers poll ``version`` (one ``HGET``) and fetch the bytes only when it grew.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as redis

from models import checkpoint as checkpoints
from models.checkpoint import Checkpoint
from models.errors import CheckpointError

log = logging.getLogger("fraudstream.checkpoints")

_PUBLISH = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local version = tonumber(ARGV[1])
if version <= current then return {0, current} end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'created_at', ARGV[2], 'trained_on', ARGV[3],
    'kind', ARGV[4], 'model_version', ARGV[5], 'published_at', ARGV[6], 'blob', ARGV[7])
redis.call('SET', KEYS[2], ARGV[7])
local old = version - tonumber(ARGV[8])
if old > 0 then redis.call('DEL', KEYS[3]) end
return {1, version}
"""


class RedisCheckpointStore:
    """Publishes and fetches model checkpoints under ``<prefix>:{model}:*``."""

    def __init__(self, client: redis.Redis, *, prefix: str = "fs", keep: int = 10) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.client = client
        self.prefix = prefix
        self.keep = keep
        self.latest_key = f"{prefix}:{{model}}:latest"
        self._publish = client.register_script(_PUBLISH)

    def version_key(self, version: int) -> str:
        return f"{self.prefix}:{{model}}:v:{version}"

    async def publish(self, checkpoint: Checkpoint) -> bool:
        """Store ``checkpoint`` as the newest; False if a newer one is already there."""
        blob = checkpoints.dumps(checkpoint)
        version = checkpoint.version
        accepted, stored = await self._publish(
            keys=[
                self.latest_key,
                self.version_key(version),
                self.version_key(version - self.keep),
            ],
            args=[
                version,
                repr(checkpoint.created_at),
                checkpoint.trained_on,
                checkpoint.model.kind,
                checkpoint.model_version,
                repr(time.time()),
                blob,
                self.keep,
            ],
        )
        published = bool(accepted)
        if published:
            log.info(
                "model checkpoint published",
                extra={
                    "model_version": checkpoint.model_version,
                    "trained_on": checkpoint.trained_on,
                    "bytes": len(blob),
                },
            )
        else:
            log.warning(
                "model checkpoint refused: a newer version is stored",
                extra={"model_version": checkpoint.model_version, "stored_version": int(stored)},
            )
        return published

    async def latest_version(self) -> int:
        """The newest published version, 0 when none."""
        value = await self.client.hget(self.latest_key, "version")
        return int(value) if value is not None else 0

    async def info(self) -> dict[str, Any] | None:
        """The newest checkpoint's header fields, without its bytes."""
        fields = ("version", "created_at", "trained_on", "kind", "model_version", "published_at")
        values = await self.client.hmget(self.latest_key, list(fields))
        if values[0] is None:
            return None
        raw = dict(zip(fields, values, strict=True))
        return {
            "version": int(raw["version"]),
            "created_at": float(raw["created_at"]),
            "trained_on": int(raw["trained_on"]),
            "kind": _text(raw["kind"]),
            "model_version": _text(raw["model_version"]),
            "published_at": float(raw["published_at"]),
        }

    async def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None when nothing was published yet."""
        blob = await self.client.hget(self.latest_key, "blob")
        if blob is None:
            return None
        return checkpoints.loads(blob)

    async def load_newer(self, than: int) -> Checkpoint | None:
        """The newest checkpoint if its version is above ``than`` (one HGET when it is not)."""
        if await self.latest_version() <= than:
            return None
        try:
            return await self.load_latest()
        except CheckpointError:
            log.exception("the newest model checkpoint cannot be read; keeping the current one")
            return None

    async def load_version(self, version: int) -> Checkpoint | None:
        blob = await self.client.get(self.version_key(version))
        return checkpoints.loads(blob) if blob is not None else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
