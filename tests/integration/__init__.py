"""Integration suites: real Kafka, real Redis, real HTTP, started once per session (conftest)."""
