"""Real servers for the integration suites: an Apache Kafka broker and a Redis server.

Each class starts the real program as a child process on 127.0.0.1 free ports, waits until a real
client can talk to it, and can stop, kill and restart it on the same port and data directory, so
fault tests can take a service away and bring it back: `kafka.KafkaBroker` (with `create_topics`)
and `redis.RedisServer`. `tests/integration/conftest.py` turns them into session fixtures;
`python -m tests.services.kafka fetch` fetches the broker's jars ahead of time (`make services`).
"""

__all__ = ["kafka", "ports", "redis"]
