"""Model checkpoints published to and loaded from a real Redis."""

from __future__ import annotations

import pytest

from models.checkpoint import Checkpoint, dumps
from models.errors import CheckpointError
from models.model import FraudModel
from processor.checkpoints import RedisCheckpointStore


def make(version: int) -> Checkpoint:
    model = FraudModel()
    model.learn_one({"amount": 10.0 * version}, is_fraud=version % 2 == 0)
    return Checkpoint(
        version=version, created_at=1_000.0 + version, trained_on=version, model=model
    )


async def test_publish_and_load(redis_client) -> None:
    store = RedisCheckpointStore(redis_client, prefix="ck", keep=2)
    assert await store.latest_version() == 0
    assert await store.load_latest() is None
    assert await store.publish(make(1))
    assert await store.publish(make(2))
    loaded = await store.load_latest()
    assert loaded is not None and loaded.version == 2 and loaded.trained_on == 2
    info = await store.info()
    assert info is not None and info["model_version"] == "logreg-v2"
    assert await store.load_newer(2) is None
    newer = await store.load_newer(1)
    assert newer is not None and newer.version == 2


async def test_versions_never_go_back(redis_client) -> None:
    store = RedisCheckpointStore(redis_client, prefix="ck")
    assert await store.publish(make(5))
    assert not await store.publish(make(4))
    assert not await store.publish(make(5))
    assert await store.latest_version() == 5


async def test_old_versions_are_pruned(redis_client) -> None:
    store = RedisCheckpointStore(redis_client, prefix="ck", keep=2)
    for version in range(1, 6):
        assert await store.publish(make(version))
    assert await store.load_version(5) is not None
    assert await store.load_version(4) is not None
    assert await store.load_version(3) is None
    keys = [k async for k in redis_client.scan_iter(match="ck:*")]
    assert all(b"{model}" in k for k in keys)


async def test_a_corrupt_checkpoint_is_refused_and_the_current_model_kept(redis_client) -> None:
    store = RedisCheckpointStore(redis_client, prefix="ck")
    assert await store.publish(make(1))
    blob = bytearray(dumps(make(2)))
    blob[-5] ^= 0xFF
    await redis_client.hset(store.latest_key, mapping={"version": 2, "blob": bytes(blob)})
    with pytest.raises(CheckpointError, match="digest"):
        await store.load_latest()
    assert await store.load_newer(1) is None
