"""Worker settings come from FRAUD_* variables, with the topic layout the design names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from processor.settings import Settings


def test_defaults_name_the_designed_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FRAUD_KAFKA_BOOTSTRAP", "FRAUD_REDIS_URL", "FRAUD_PARTITIONS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.kafka_bootstrap is None and settings.redis_url is None
    topics = settings.topics()
    assert topics["transactions"] == topics["decisions"] == 4
    assert {"escalations", "narratives", "labels", "transactions.dlq"} <= set(topics)
    assert topics["labels"] == 1, "one learner: labels have one partition"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_KAFKA_BOOTSTRAP", "a:9092, b:9093")
    monkeypatch.setenv("FRAUD_PARTITIONS", "12")
    monkeypatch.setenv("FRAUD_TOPIC_DECISIONS", "prod.decisions")
    monkeypatch.setenv("FRAUD_LEARN", "false")
    settings = Settings()
    assert settings.broker_urls == ["kafka://a:9092", "kafka://b:9093"]
    assert settings.topics()["prod.decisions"] == 12
    assert settings.learn is False


def test_blank_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_REDIS_URL", "  ")
    assert Settings().redis_url is None
    with pytest.raises(ValueError, match="FRAUD_KAFKA_BOOTSTRAP"):
        Settings(kafka_bootstrap=None).broker_urls  # noqa: B018


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="partitions"):
        Settings()
