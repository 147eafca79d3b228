"""The online model: learns to rank fraud, explains itself, and stays pure."""

from __future__ import annotations

import ast
import math
import pickle
import random
from bisect import bisect_right
from collections.abc import Mapping
from pathlib import Path

import pytest

from models import model as model_module
from models.features import FeatureConfig
from models.model import FraudModel, ModelConfig, bands

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


def stream(n: int, seed: int = 0, fraud_rate: float = 0.05):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    for _ in range(n):
        fraud = rng.random() < fraud_rate
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


@pytest.mark.parametrize("kind", ["logreg", "hat", "blend"])
def test_learns_at_the_fraud_rates_of_card_payments(kind: str) -> None:
    # Under 1% fraud: a Hoeffding tree left at River's max_share_to_split (0.99) never splits.
    model = FraudModel(ModelConfig(kind=kind))
    for x, y in stream(20_000, fraud_rate=0.004):
        model.learn_one(x, y)
    held_out = list(stream(5_000, seed=1, fraud_rate=0.004))
    fraud = [model.score_one(x) for x, y in held_out if y]
    legit = [model.score_one(x) for x, y in held_out if not y]
    assert fraud and sum(f > g for f in fraud for g in legit) / (len(fraud) * len(legit)) > 0.9


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


def bands_by_definition(features: Mapping[str, float]) -> dict[str, float]:
    """The band indicators spelled out, edge by edge, with no precomputed names."""
    out: dict[str, float] = {}
    for name, value in features.items():
        if name == "amount":
            edges = model_module._AMOUNT_BANDS
        elif name.startswith("card_amount_ratio"):
            edges = model_module._RATIO_BANDS
        elif name.startswith("terminal_risk"):
            edges = model_module._RISK_BANDS
        else:
            continue
        edge = edges[max(bisect_right(edges, value) - 1, 0)]
        out[f"{name}_band_{edge:g}"] = 1.0
    return out


# Every edge, just below and above it, below the first and past the last, and NaN.
ALL_EDGES = (*model_module._AMOUNT_BANDS, *model_module._RATIO_BANDS, *model_module._RISK_BANDS)
EDGE_VALUES = sorted(
    {v for e in ALL_EDGES for v in (e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf))}
    | {-1.0, 0.0, 1e6}
)


@pytest.mark.parametrize("value", [*EDGE_VALUES, math.nan])
def test_bands_agree_with_the_definition_at_every_edge(value: float) -> None:
    features = {name: value for name in FeatureConfig().names}
    assert list(bands(features).items()) == list(bands_by_definition(features).items())


def test_bands_follow_each_layout() -> None:
    rng = random.Random(5)
    names = list(FeatureConfig().names)
    for _ in range(200):
        layout = rng.sample(names, rng.randrange(len(names) + 1))
        features = {name: rng.uniform(-1.0, 1200.0) for name in layout}
        assert list(bands(features).items()) == list(bands_by_definition(features).items())
    assert len(model_module._BAND_PLANS) <= model_module._MAX_BAND_PLANS


def test_the_linear_input_is_the_scaled_features_then_their_bands() -> None:
    """What score_one and learn_one feed the regression, key order included (it sets the order
    of the sums): the scaler's output, then the bands, as the uncached path built it."""
    model = FraudModel()
    for x, y in stream(500):
        model.learn_one(x, y)
    rng = random.Random(3)
    for _ in range(100):
        x = {name: rng.uniform(0.0, 500.0) for name in FeatureConfig().names}
        expected = model._scaler.transform_one(x)
        expected.update(bands_by_definition(x))
        assert list(model._linear_input(x).items()) == list(expected.items())


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


@pytest.mark.parametrize("lr", [0.1, "inverse-scaling"])
def test_our_adagrad_updates_the_weights_exactly_as_rivers(lr: object) -> None:
    from river import linear_model, optim

    def rate() -> float | optim.schedulers.InverseScaling:
        return optim.schedulers.InverseScaling(0.5, power=0.3) if lr != 0.1 else 0.1

    ours = linear_model.LogisticRegression(optimizer=model_module.AdaGrad(rate()))
    river = linear_model.LogisticRegression(optimizer=optim.AdaGrad(rate()))
    rng = random.Random(3)
    for _ in range(2_000):
        x = {f"f{i}": rng.gauss(0, 3) for i in range(rng.randint(1, 12))}
        y = rng.random() < 0.1
        ours.learn_one(x, y)
        river.learn_one(x, y)
    assert ours.weights == river.weights  # bit for bit, not approximately
    assert ours.intercept == river.intercept


def test_our_scaler_learns_and_scales_in_one_walk_exactly_as_rivers() -> None:
    from river import preprocessing

    ours = model_module.StandardScaler()
    river = preprocessing.StandardScaler()
    rng = random.Random(5)
    for step in range(3_000):
        # New features appear as the stream goes on, some stay constant (variance 0).
        x = {f"f{i}": rng.gauss(i, 1 + i) for i in range(rng.randint(1, 6 + step // 500))}
        x["constant"] = 7.0
        river.learn_one(x)
        assert list(ours.learn_transform_one(x).items()) == list(river.transform_one(x).items())
    assert (ours.counts, ours.means, ours.vars) == (river.counts, river.means, river.vars)


def test_a_model_keeps_learning_with_the_scaler_of_an_older_checkpoint() -> None:
    """Checkpoints made before the one-walk scaler hold River's own: they learn the same."""
    from river import preprocessing

    current, older = FraudModel(), FraudModel()
    older._scaler = preprocessing.StandardScaler()
    older = pickle.loads(pickle.dumps(older))  # as such a checkpoint loads
    for x, y in stream(1_000):
        current.learn_one(x, y)
        older.learn_one(x, y)
    assert current.weights() == older.weights()
    x = next(stream(1, seed=9))[0]
    assert current.score_one(x) == older.score_one(x)


def layout_stream(n: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Every feature the store computes, with values across the bands and some constant."""
    rng = random.Random(seed)
    names = FeatureConfig().names
    for _ in range(n):
        fraud = rng.random() < 0.1
        x = {name: rng.uniform(0, 3) for name in names}
        x["amount"] = rng.choice([0.0, 10.0, rng.uniform(0, 1_500)])
        x["card_amount_ratio_30d"] = rng.uniform(0, 12) if fraud else rng.uniform(0, 2)
        x["terminal_risk_7d"] = rng.choice([0.0, 1.0, rng.random()])
        x["is_weekend"] = 0.0  # no variance: scaled to 0
        yield x, fraud


def rivers_score(model: FraudModel, x: Mapping[str, float]) -> float:
    """River's own prediction on the model's input, the definition a score is held to."""
    assert model._linear is not None
    return float(model._linear.predict_proba_one(model._linear_input(x))[True])


def test_direct_learning_leaves_the_model_exactly_as_rivers_learn_one() -> None:
    direct, river = FraudModel(), FraudModel()
    river._direct = False  # the scaler's learn_transform_one, then River's learn_one
    assert direct._direct
    for x, y in layout_stream(3_000):
        direct.learn_one(x, y)
        river.learn_one(x, y)
    assert pickle.dumps(direct) == pickle.dumps(river)  # bit for bit: weights, g2, scaler
    assert direct.weights() == river.weights() and direct.weights()


@pytest.mark.parametrize(
    ("config", "direct"),
    [
        (ModelConfig(), True),
        (ModelConfig(features=("amount", "is_night")), True),
        (ModelConfig(optimizer="adam"), False),
        (ModelConfig(l2=0.01), False),
        (ModelConfig(kind="hat"), False),
    ],
)
def test_direct_learning_is_used_only_where_it_is_rivers(config: ModelConfig, direct: bool) -> None:
    assert FraudModel(config)._direct is direct


def test_scores_are_rivers_bit_for_bit_while_learning_and_from_a_checkpoint() -> None:
    from models import checkpoint

    model = FraudModel()
    data = list(layout_stream(2_000, seed=4))
    for i, (x, y) in enumerate(data):
        assert model.score_one(x) == rivers_score(model, x)  # the plan follows every lesson
        model.learn_one(x, y)
        if i % 500 == 499:
            frozen = checkpoint.loads(
                checkpoint.dumps(checkpoint.Checkpoint(1, 0.0, i, model))
            ).model
            for other, _ in data[:300]:
                assert frozen.score_one(other) == rivers_score(frozen, other)
            assert frozen._plans  # what scoring between lessons reuses


def test_a_subset_of_features_scores_as_river_does() -> None:
    model = FraudModel(ModelConfig(features=("amount", "terminal_risk_7d", "log_amount")))
    for x, y in layout_stream(500, seed=2):
        model.learn_one(x, y)
    for x, _ in layout_stream(200, seed=3):
        assert model.score_one(x) == rivers_score(model, model._select(x))
