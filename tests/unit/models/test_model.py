"""The online model: learns to rank fraud, explains itself, and stays pure."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from models.model import FraudModel, ModelConfig, bands

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


def stream(n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    for _ in range(n):
        fraud = rng.random() < 0.05
        amount = rng.uniform(150, 400) if fraud else rng.uniform(5, 120)
        risk = rng.uniform(0.3, 1.0) if fraud and rng.random() < 0.5 else rng.uniform(0, 0.05)
        yield (
            {"amount": amount, "terminal_risk_7d": risk, "is_night": float(rng.random() < 0.2)},
            fraud,
        )


@pytest.mark.parametrize("kind", ["logreg", "hat", "blend"])
def test_learns_to_rank_fraud_above_legit(kind: str) -> None:
    model = FraudModel(ModelConfig(kind=kind))
    for x, y in stream(3000):
        model.learn_one(x, y)
    held_out = list(stream(500, seed=1))
    fraud = [model.score_one(x) for x, y in held_out if y]
    legit = [model.score_one(x) for x, y in held_out if not y]
    pairs = sum(f > g for f in fraud for g in legit) / (len(fraud) * len(legit))
    assert pairs > 0.9
    assert model.trained_on == 3000


def test_a_fresh_model_scores_the_base_rate() -> None:
    assert FraudModel().score_one({"amount": 500.0}) == pytest.approx(0.01)


def test_explanations_name_what_raised_the_score() -> None:
    model = FraudModel()
    for x, y in stream(3000):
        model.learn_one(x, y)
    top = model.explain_one({"amount": 380.0, "terminal_risk_7d": 0.9, "is_night": 0.0}, top=3)
    names = [name for name, _ in top]
    assert names and all(c > 0 for _, c in top)
    assert any(n.startswith("amount") for n in names) and "terminal_risk_7d" in names


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"amount": 0.0}, {"amount_band_0": 1.0}),
        ({"amount": 230.0}, {"amount_band_200": 1.0}),
        ({"amount": 5000.0}, {"amount_band_1000": 1.0}),
        ({"terminal_risk_1d": 0.0, "is_night": 1.0}, {"terminal_risk_1d_band_0": 1.0}),
        ({"terminal_risk_7d": 1.0}, {"terminal_risk_7d_band_0.99": 1.0}),
        (
            {"amount": 10.0, "card_amount_ratio_30d": 5.2},
            {"amount_band_10": 1.0, "card_amount_ratio_30d_band_4": 1.0},
        ),
    ],
)
def test_bands(features: dict[str, float], expected: dict[str, float]) -> None:
    assert bands(features) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "oracle"}, {"optimizer": "newton"}, {"learning_rate": 0}, {"fraud_weight": -1}],
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_the_core_imports_no_io_library() -> None:
    banned = {"faust", "redis", "openai", "fastapi", "aiokafka", "httpx", "requests"}
    for path in MODELS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & banned, f"{path.name} imports {names}"
