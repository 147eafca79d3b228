"""Checkpoints round-trip, and refuse what they cannot read."""

from __future__ import annotations

import json

import pytest

from models import checkpoint as ck
from models.errors import CheckpointError
from models.model import FraudModel, ModelConfig

X = {"amount": 120.0, "terminal_risk_7d": 0.4}


def trained(kind: str = "logreg") -> FraudModel:
    model = FraudModel(ModelConfig(kind=kind))
    for i in range(300):
        model.learn_one({"amount": float(i % 50), "terminal_risk_7d": (i % 7) / 7}, i % 7 == 0)
    return model


@pytest.mark.parametrize("kind", ["logreg", "hat", "blend"])
def test_round_trip_scores_the_same(kind: str) -> None:
    model = trained(kind)
    data = ck.dumps(ck.Checkpoint(3, 1000.0, model.trained_on, model))
    back = ck.loads(data)
    assert (back.version, back.created_at, back.trained_on) == (3, 1000.0, 300)
    assert back.model_version == f"{kind}-v3"
    assert back.model.score_one(X) == model.score_one(X)


def test_another_format_version_is_refused_clearly() -> None:
    data = ck.dumps(ck.Checkpoint(1, 0.0, 0, FraudModel()))
    end = data.index(b"\n", len(ck.MAGIC))
    header = json.loads(data[len(ck.MAGIC) : end])
    header["format"] = 0
    old = ck.MAGIC + json.dumps(header).encode() + data[end:]
    with pytest.raises(CheckpointError, match="format 0 is not supported"):
        ck.loads(old)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: b"garbage" + d, "bad magic"),
        (lambda d: d[:-10], "digest"),
        (lambda d: d[: len(ck.MAGIC) + 5], "no header"),
        (lambda d: ck.MAGIC + b"{not json\n" + d, "corrupt checkpoint header"),
    ],
)
def test_corrupt_checkpoints_are_refused(mangle, message: str) -> None:  # type: ignore[no-untyped-def]
    data = ck.dumps(ck.Checkpoint(1, 0.0, 0, FraudModel()))
    with pytest.raises(CheckpointError, match=message):
        ck.loads(mangle(data))
