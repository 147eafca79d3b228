"""The reference feature store against windows computed by hand."""

from __future__ import annotations

import math

import pytest

from models.features import DAY, HANDBOOK_FEATURES, FeatureConfig, InMemoryFeatureStore
from models.records import Transaction
from tests.unit.models.reference_store import ListFeatureStore

T0 = 1_522_540_800.0  # 2018-04-01 00:00:00 UTC, a Sunday


def tx(tx_id: str, ts: float, amount: float = 10.0, card: str = "c1", term: str = "t1"):
    return Transaction(tx_id, ts, card, term, amount, "EUR")


def test_handbook_features_are_the_first_fifteen() -> None:
    assert HANDBOOK_FEATURES == (
        "amount", "is_weekend", "is_night",
        "card_count_1d", "card_count_7d", "card_count_30d",
        "card_mean_amount_1d", "card_mean_amount_7d", "card_mean_amount_30d",
        "terminal_count_1d", "terminal_count_7d", "terminal_count_30d",
        "terminal_risk_1d", "terminal_risk_7d", "terminal_risk_30d",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("offset", "weekend", "night"),
    [
        (0, 1.0, 1.0),  # Sunday 00:00
        (6 * 3600 + 3599, 1.0, 1.0),  # Sunday 06:59: hour 6 is still night
        (7 * 3600, 1.0, 0.0),  # Sunday 07:00
        (DAY + 12 * 3600, 0.0, 0.0),  # Monday noon
        (6 * DAY + 3600, 1.0, 1.0),  # Saturday 01:00
    ],
)
def test_calendar_flags(offset: float, weekend: float, night: float) -> None:
    values = InMemoryFeatureStore().update_one(tx("a", T0 + offset)).values
    assert (values["is_weekend"], values["is_night"]) == (weekend, night)


@pytest.mark.parametrize(
    ("back", "in_1d", "in_7d", "in_30d"),
    [
        (0.0, True, True, True),  # same instant
        (DAY - 1, True, True, True),
        (DAY, False, True, True),  # exactly one day back: out of the 1-day window
        (7 * DAY, False, False, True),  # exactly seven days back
        (30 * DAY - 1, False, False, True),
        (30 * DAY, False, False, False),  # exactly thirty days back
    ],
)
def test_card_window_boundaries(back: float, in_1d: bool, in_7d: bool, in_30d: bool) -> None:
    store = InMemoryFeatureStore()
    now = T0 + 40 * DAY
    store.update_one(tx("old", now - back, amount=30.0))
    values = store.update_one(tx("new", now, amount=10.0)).values
    for window, inside in (("1d", in_1d), ("7d", in_7d), ("30d", in_30d)):
        assert values[f"card_count_{window}"] == (2.0 if inside else 1.0)
        assert values[f"card_mean_amount_{window}"] == (20.0 if inside else 10.0)


def test_card_history_by_hand() -> None:
    store = InMemoryFeatureStore()
    store.update_one(tx("a", T0, 10.0, term="t1"))
    store.update_one(tx("b", T0 + 2 * DAY, 20.0, term="t2"))
    store.update_one(tx("c", T0 + 2 * DAY + 3600, 30.0, term="t2"))
    v = store.update_one(tx("d", T0 + 2 * DAY + 7200, 120.0, term="t3")).values
    assert v["card_count_1d"] == 3 and v["card_mean_amount_1d"] == pytest.approx(170 / 3)
    assert v["card_count_7d"] == 4 and v["card_mean_amount_7d"] == pytest.approx(45.0)
    assert v["card_amount_ratio_30d"] == pytest.approx(120 / 20)  # mean of 10, 20, 30
    assert v["card_hours_since_last"] == pytest.approx(1.0)
    assert v["card_distinct_terminals_7d"] == 3
    assert v["log_amount"] == pytest.approx(math.log1p(120.0))


def test_first_payment_of_a_card_has_neutral_history() -> None:
    v = InMemoryFeatureStore().update_one(tx("a", T0, 50.0)).values
    assert v["card_amount_ratio_30d"] == 1.0
    assert v["card_hours_since_last"] == 30 * 24
    assert v["card_count_30d"] == 1 and v["card_mean_amount_30d"] == 50.0


def test_terminal_windows_are_shifted_by_the_label_delay() -> None:
    store = InMemoryFeatureStore(FeatureConfig(label_delay_days=7))
    now = T0 + 60 * DAY
    # ages: 6.9 days (inside the delay: invisible), 7 days (edge of every window), 7.5 days,
    # 8 days (outside the 1-day window), 36.9 days, 37 days (outside every window)
    ages = {"d1": 6.9, "d2": 7.0, "d3": 7.5, "d4": 8.0, "d5": 36.9, "d6": 37.0}
    for tx_id, age in ages.items():
        store.update_one(tx(tx_id, now - age * DAY, card=tx_id))
    for tx_id in ("d2", "d4", "d6"):
        assert store.record_label(tx_id, True)
    v = store.update_one(tx("now", now, card="x")).values
    assert v["terminal_count_1d"] == 2  # d2, d3
    assert v["terminal_risk_1d"] == pytest.approx(1 / 2)
    assert v["terminal_count_7d"] == 3  # d2, d3, d4
    assert v["terminal_risk_7d"] == pytest.approx(2 / 3)
    assert v["terminal_count_30d"] == 4  # d2, d3, d4, d5
    assert v["terminal_risk_30d"] == pytest.approx(2 / 4)


def test_no_history_gives_zero_risk() -> None:
    v = InMemoryFeatureStore().update_one(tx("a", T0)).values
    assert v["terminal_count_30d"] == 0 and v["terminal_risk_30d"] == 0.0


def test_a_redelivered_transaction_counts_once_and_keeps_its_features() -> None:
    store = InMemoryFeatureStore()
    first = store.update_one(tx("a", T0, 10.0))
    store.update_one(tx("b", T0 + 60, 30.0))
    again = store.update_one(tx("a", T0, 10.0))
    assert again.values == first.values
    v = store.update_one(tx("c", T0 + 120, 20.0)).values
    assert v["card_count_1d"] == 3 and v["card_mean_amount_1d"] == pytest.approx(20.0)


def test_a_redelivery_after_the_cache_recomputes_without_counting_again() -> None:
    store = InMemoryFeatureStore(FeatureConfig(dedup_seconds=60))
    store.update_one(tx("a", T0, 10.0))
    store.update_one(tx("b", T0 + 3600, 30.0))
    again = store.update_one(tx("a", T0, 10.0)).values
    assert again["card_count_1d"] == 1  # "b" is later than "a": not in its window
    assert store.update_one(tx("c", T0 + 7200, 20.0)).values["card_count_1d"] == 3


def test_late_arrivals_count_by_event_time() -> None:
    store = InMemoryFeatureStore()
    store.update_one(tx("late-first", T0 + 100))
    v = store.update_one(tx("early", T0)).values
    assert v["card_count_1d"] == 1  # the later payment is not in the earlier one's window
    assert store.update_one(tx("third", T0 + 200)).values["card_count_1d"] == 3


def test_known_card_frauds() -> None:
    store = InMemoryFeatureStore()
    store.update_one(tx("a", T0))
    store.record_label("a", True)
    assert store.update_one(tx("b", T0 + DAY)).values["card_known_frauds_30d"] == 1
    assert store.update_one(tx("c", T0 + 30 * DAY)).values["card_known_frauds_30d"] == 0


def test_memory_is_bounded_by_the_longest_retention() -> None:
    config = FeatureConfig()
    store = InMemoryFeatureStore(config)
    for i in range(200):
        store.update_one(tx(f"t{i}", T0 + i * DAY, card=f"c{i % 3}", term=f"m{i % 5}"))
    retention_days = config.label_delay_days + max(config.terminal_windows)
    assert len(store) <= retention_days + 1
    assert not store.record_label("t0", True)  # long gone


def test_labels_of_unknown_transactions_are_refused() -> None:
    assert not InMemoryFeatureStore().record_label("nope", True)


@pytest.mark.parametrize(
    "kwargs", [{"card_windows": ()}, {"terminal_windows": (0,)}, {"label_delay_days": -1}]
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FeatureConfig(**kwargs)  # type: ignore[arg-type]


def brute_force(history: list[tuple[str, float, str, str, float]], frauds: set[str], now_tx):  # type: ignore[no-untyped-def]
    """The definition, spelled out over the whole history with no state at all."""
    tx_id, t, card, term, amount = now_tx
    out: dict[str, float] = {}
    mine = [h for h in history if h[2] == card and t - h[1] >= 0]
    for w in (1, 7, 30):
        inside = [h for h in mine if t - h[1] < w * DAY]
        out[f"card_count_{w}d"] = len(inside)
        out[f"card_mean_amount_{w}d"] = sum(h[4] for h in inside) / len(inside) if inside else 0
    at_term = [h for h in history if h[3] == term]
    for w in (1, 7, 30):
        inside = [h for h in at_term if 7 * DAY <= t - h[1] < (7 + w) * DAY]
        out[f"terminal_count_{w}d"] = len(inside)
        bad = sum(1 for h in inside if h[0] in frauds)
        out[f"terminal_risk_{w}d"] = bad / len(inside) if inside else 0.0
    others = [h for h in mine if h[0] != tx_id and t - h[1] < 30 * DAY]
    spent = sum(h[4] for h in others)
    out["card_amount_ratio_30d"] = amount / (spent / len(others)) if others and spent else 1.0
    out["card_known_frauds_30d"] = sum(1 for h in mine if h[0] in frauds and t - h[1] < 30 * DAY)
    out["card_distinct_terminals_7d"] = len({h[3] for h in mine if t - h[1] < 7 * DAY})
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_store_agrees_with_the_definition_on_a_random_stream(seed: int) -> None:
    import random

    rng = random.Random(seed)
    store = InMemoryFeatureStore()
    history: list[tuple[str, float, str, str, float]] = []
    frauds: set[str] = set()
    t = T0
    for i in range(600):
        t += rng.expovariate(1 / 9000)
        # labels become known exactly one delay after the transaction
        for h in history:
            if h[0] not in frauds and h[1] + 7 * DAY <= t and hash((seed, h[0])) % 5 == 0:
                frauds.add(h[0])
                store.record_label(h[0], True)
        now_tx = (f"t{i}", t, f"c{rng.randrange(8)}", f"m{rng.randrange(5)}", rng.uniform(1, 200))
        history.append(now_tx)
        got = store.update_one(Transaction(now_tx[0], t, now_tx[2], now_tx[3], now_tx[4], "EUR"))
        expected = brute_force(history, frauds, now_tx)
        for name, value in expected.items():
            assert got.values[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (i, name)


def _outcome(store: InMemoryFeatureStore | ListFeatureStore, t: Transaction) -> object:
    try:
        return list(store.update_one(t).values.items())
    except LookupError as exc:  # a redelivery whose card has been forgotten altogether
        return type(exc)


@pytest.mark.parametrize(
    "config",
    [
        FeatureConfig(),
        FeatureConfig(
            card_windows=(2, 1),
            terminal_windows=(1, 3),
            label_delay_days=1.0,
            distinct_terminals_days=3,
            dedup_seconds=3_600.0,
        ),
    ],
    ids=["default", "short-windows"],
)
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_the_store_gives_exactly_what_the_first_version_gave(
    config: FeatureConfig, seed: int
) -> None:
    """Bit for bit and in the same key order, on a stream with late and very late arrivals,
    redeliveries within and past the dedup cache, fraud labels and their withdrawal, and gaps
    long enough for everything to expire."""
    import random

    rng = random.Random(seed)
    tuned, first = InMemoryFeatureStore(config), ListFeatureStore(config)
    sent: list[Transaction] = []
    clock = T0
    for i in range(2_500):
        roll = rng.random()
        if sent and roll < 0.06:  # a redelivery, recent or old
            t = sent[-rng.randrange(1, min(len(sent), 40) + 1)] if roll < 0.04 else rng.choice(sent)
        else:
            clock += 0.0 if roll < 0.1 else rng.expovariate(1 / 2_400)
            if rng.random() < 0.005:
                clock += 45 * DAY  # a quiet spell: every window and cache empties
            ts = clock
            if roll > 0.97:  # late, sometimes by more than any window
                ts -= rng.uniform(0, 3 * DAY) if roll < 0.995 else rng.uniform(30 * DAY, 40 * DAY)
            amount = 0.0 if rng.random() < 0.02 else round(rng.uniform(1, 300), 2)
            card, term = f"c{rng.randrange(15)}", f"m{rng.randrange(10)}"
            t = Transaction(f"t{i}", ts, card, term, amount, "EUR")
            sent.append(t)
        assert _outcome(tuned, t) == _outcome(first, t), (i, t)
        if sent and rng.random() < 0.08:
            labelled = rng.choice(sent).tx_id
            is_fraud = rng.random() < 0.85
            assert tuned.record_label(labelled, is_fraud) == first.record_label(labelled, is_fraud)
        assert len(tuned) == len(first)
