"""Topics made ready on any broker: created with their partition counts, led, then used.

:func:`ensure_topics` works on Apache Kafka and on the embedded Tansu broker alike (both answer
CreateTopics). The worker calls it at start-up (``fraudstream worker`` and ``up``), the tests and
benchmarks before they produce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from models.errors import FraudstreamError

__all__ = ["TopicsError", "ensure_topics"]

log = logging.getLogger(__name__)


class TopicsError(FraudstreamError):
    """Topics could not be created, or did not get leaders in time."""


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout: float = 20.0,
    *,
    replication_factor: int = 1,
) -> None:
    """Create the missing ``topics`` (name → partition count) and wait until each has leaders.

    Works on Tansu and Apache Kafka (both answer CreateTopics). A topic that already exists is
    left as it is, even with another partition count: repartitioning would move keys between
    partitions and break per-card ordering, so that is an operator's decision; it is logged.
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout * 1000))
    )
    pending: set[str] = set(topics)
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in topics if name not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(name, topics[name], replication_factor) for name in missing]
                )
                for topic, code, message in _topic_errors(response):
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        raise TopicsError(
                            f"cannot create topic {topic!r} on {bootstrap}: "
                            f"error {code} {message or ''}".rstrip()
                        )
            while pending:
                for meta in await admin.describe_topics(sorted(pending)):
                    name, partitions = meta["topic"], meta["partitions"]
                    if meta["error_code"] != 0 or not partitions:
                        continue
                    if any(p["error_code"] != 0 or p["leader"] < 0 for p in partitions):
                        continue
                    if name in existing and len(partitions) != topics[name]:
                        log.warning(
                            "topic %s has %d partitions, not %d; left as it is",
                            name,
                            len(partitions),
                            topics[name],
                        )
                    if name in existing or len(partitions) >= topics[name]:
                        pending.discard(name)
                if pending:
                    await asyncio.sleep(0.1)
    except TimeoutError:
        raise TopicsError(
            f"topics not ready on {bootstrap} after {timeout:g}s: {', '.join(sorted(pending))}"
        ) from None
    except KafkaError as exc:
        raise TopicsError(f"cannot create topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()


_TOPIC_ALREADY_EXISTS = 36


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    """``(topic, error_code, error_message)`` from any CreateTopics response version."""
    return [(row[0], row[1], row[2] if len(row) > 2 else None) for row in response.topic_errors]
