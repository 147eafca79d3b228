"""One Kafka broker and one Redis server for the whole integration session.

`FRAUD_TEST_STACK` chooses what runs them:

- `apache` (default): Apache Kafka 4.x (KRaft) from Maven Central and Debian's `redis-server`,
  started here (`tests/services`);
- `embedded`: the Tansu broker and Valkey that `fraudstream up` runs (`processor.embedded`);
- external: with `FRAUD_TEST_KAFKA_BOOTSTRAP` and `FRAUD_TEST_REDIS_URL` set, nothing is started
  and the suites run against those (`redis_client` flushes that Redis database before each test
  that uses it: point it at a scratch one).

Every test here is marked `integration`. Tests keep to their own topics (`topic_factory`) and get
an empty Redis database (`redis_client`); fault tests reach the servers through `kafka_service` and
`redis_service` (None against an external stack).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.services.kafka import KafkaBroker, create_topics_sync
from tests.services.redis import RedisServer

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _stack() -> str:
    if os.environ.get("FRAUD_TEST_KAFKA_BOOTSTRAP") or os.environ.get("FRAUD_TEST_REDIS_URL"):
        missing = [
            name
            for name in ("FRAUD_TEST_KAFKA_BOOTSTRAP", "FRAUD_TEST_REDIS_URL")
            if not os.environ.get(name)
        ]
        if missing:
            raise pytest.UsageError(f"an external test stack needs {' and '.join(missing)} too")
        return "external"
    stack = os.environ.get("FRAUD_TEST_STACK", "apache")
    if stack not in ("apache", "embedded"):
        raise pytest.UsageError(f"FRAUD_TEST_STACK={stack!r}: expected 'apache' or 'embedded'")
    return stack


@pytest.fixture(scope="session")
def test_stack() -> str:
    """Which stack the session runs on: "apache", "embedded" or "external"."""
    return _stack()


@pytest.fixture(scope="session")
def kafka_service(test_stack: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's broker object (KafkaBroker or EmbeddedKafka), None when external."""
    if test_stack == "external":
        yield None
        return
    if test_stack == "embedded":
        from processor.embedded import EmbeddedKafka

        with EmbeddedKafka() as embedded:
            yield embedded
        return
    with KafkaBroker(data_dir=tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_service(test_stack: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's Redis object (RedisServer or EmbeddedValkey), None when external."""
    if test_stack == "external":
        yield None
        return
    if test_stack == "embedded":
        from processor.embedded import EmbeddedValkey

        with EmbeddedValkey() as embedded:
            yield embedded
        return
    with RedisServer(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_service: Any) -> str:
    if kafka_service is None:
        return os.environ["FRAUD_TEST_KAFKA_BOOTSTRAP"]
    return str(kafka_service.bootstrap)


@pytest.fixture(scope="session")
def redis_url(redis_service: Any) -> str:
    if redis_service is None:
        return os.environ["FRAUD_TEST_REDIS_URL"]
    return str(redis_service.url)


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """`topic_factory(partitions=1, prefix="t", config=None) -> name`: a new topic, leaders ready.

    Names are unique per call, so tests never see each other's records on the shared broker.
    """

    def create(partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        create_topics_sync(kafka_bootstrap, {name: partitions}, config=config)
        return name

    return create


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on the session's Redis database, flushed before the test."""
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()
