"""Fault cases under load on real Apache Kafka and a persistent Redis: crashes, restarts,
rebalances, a stalling LLM, poison messages and a slow SSE client."""
