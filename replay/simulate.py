"""Seeded simulator of card transactions, after the open fraud-detection handbook.

It follows the "Transaction data simulator" chapter of *Reproducible Machine Learning for Credit
Card Fraud Detection — Practical Handbook* (Le Borgne et al.): customers and terminals on a
100 x 100 grid, each customer paying at the terminals within ``radius`` of home, a Poisson number
of payments a day around midday, and three fraud scenarios layered on top (1: amount above 220;
2: two terminals compromised each day for 28 days; 3: three cards compromised each day for 14
days, a third of their payments multiplied by 5). Later scenarios overwrite the code of earlier
ones, as in the handbook.

The handbook seeds NumPy's legacy global state per customer and per day; here one
``numpy.random.Generator`` stream per stage is spawned from ``seed``, so the output has the
handbook's distributions, not its exact rows. The same config gives the same bytes, and changing a
fraud parameter leaves the genuine population unchanged. The CSV has the columns and number
formats of the handbook's published dataset.
"""

from __future__ import annotations

import datetime
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "COLUMNS",
    "SimulatedTransactions",
    "SimulationConfig",
    "SimulationSummary",
    "simulate",
    "simulate_to_file",
    "write_csv",
]

COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)

SECONDS_PER_DAY = 86_400
GRID_SIZE = 100.0
# Payments cluster around midday, as in the handbook; draws outside the day are dropped.
TIME_OF_DAY_MEAN = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD = 20_000.0
# Bounds the distance matrix built per block of customers to a few tens of MB.
_DISTANCE_BLOCK_CELLS = 2_000_000
_CSV_CHUNK_ROWS = 100_000

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """Simulation parameters; the defaults are the handbook's."""

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    start: datetime.date = datetime.date(2018, 4, 1)
    radius: float = 5.0
    seed: int = 0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_cards_per_day: int = 3
    card_compromise_days: int = 14
    large_amount_threshold: float = 220.0
    card_fraud_share: float = 1 / 3
    card_fraud_multiplier: float = 5.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.customers >= 1, f"customers must be >= 1, got {self.customers}"),
            (self.terminals >= 1, f"terminals must be >= 1, got {self.terminals}"),
            (self.days >= 1, f"days must be >= 1, got {self.days}"),
            (
                isinstance(self.start, datetime.date)
                and not isinstance(self.start, datetime.datetime),
                f"start must be a datetime.date, got {self.start!r}",
            ),
            (
                math.isfinite(self.radius) and self.radius > 0,
                f"radius must be > 0, got {self.radius}",
            ),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (
                0 <= self.compromised_terminals_per_day <= self.terminals,
                "compromised_terminals_per_day must be in [0, terminals], "
                f"got {self.compromised_terminals_per_day}",
            ),
            (
                self.terminal_compromise_days >= 1,
                f"terminal_compromise_days must be >= 1, got {self.terminal_compromise_days}",
            ),
            (
                0 <= self.compromised_cards_per_day <= self.customers,
                "compromised_cards_per_day must be in [0, customers], "
                f"got {self.compromised_cards_per_day}",
            ),
            (
                self.card_compromise_days >= 1,
                f"card_compromise_days must be >= 1, got {self.card_compromise_days}",
            ),
            (
                math.isfinite(self.large_amount_threshold) and self.large_amount_threshold > 0,
                f"large_amount_threshold must be > 0, got {self.large_amount_threshold}",
            ),
            (
                0 < self.card_fraud_share <= 1,
                f"card_fraud_share must be in (0, 1], got {self.card_fraud_share}",
            ),
            (
                math.isfinite(self.card_fraud_multiplier) and self.card_fraud_multiplier >= 1,
                f"card_fraud_multiplier must be >= 1, got {self.card_fraud_multiplier}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True, slots=True, eq=False)
class SimulatedTransactions:
    """One array per CSV column, rows sorted by time and ``transaction_id == arange(n)``."""

    transaction_id: IntArray
    tx_datetime: npt.NDArray[np.datetime64]
    customer_id: IntArray
    terminal_id: IntArray
    tx_amount: FloatArray
    tx_time_seconds: IntArray
    tx_time_days: IntArray
    tx_fraud: npt.NDArray[np.int8]
    tx_fraud_scenario: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.transaction_id)


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What ``simulate_to_file`` wrote; ``by_scenario`` counts frauds for scenarios 1, 2 and 3."""

    path: Path
    transactions: int
    frauds: int
    by_scenario: dict[int, int]
    customers: int
    terminals: int
    days: int


def simulate(config: SimulationConfig) -> SimulatedTransactions:
    """Simulate ``config.days`` days of payments with their fraud labels."""
    # One independent stream per stage, so e.g. more compromised cards leave the genuine payments
    # (and the terminal compromises) exactly as they were.
    profile_seq, payment_seq, terminal_seq, card_seq = np.random.SeedSequence(config.seed).spawn(4)
    profile_rng = np.random.default_rng(profile_seq)

    customer_xy = profile_rng.uniform(0, GRID_SIZE, size=(config.customers, 2))
    mean_amount = profile_rng.uniform(5, 100, size=config.customers)
    mean_tx_per_day = profile_rng.uniform(0, 4, size=config.customers)
    terminal_xy = profile_rng.uniform(0, GRID_SIZE, size=(config.terminals, 2))
    offsets, counts, nearby = _terminals_within_radius(customer_xy, terminal_xy, config.radius)

    customer_id, seconds, amount, terminal_id = _draw_payments(
        np.random.default_rng(payment_seq),
        config.days,
        mean_amount,
        mean_tx_per_day,
        offsets,
        counts,
        nearby,
    )
    order = np.argsort(seconds, kind="stable")
    customer_id, seconds = customer_id[order], seconds[order]
    amount, terminal_id = amount[order], terminal_id[order]
    day = seconds // SECONDS_PER_DAY

    scenario = np.zeros(len(seconds), dtype=np.int8)
    scenario[amount > config.large_amount_threshold] = 1
    _mark_compromised_terminals(
        np.random.default_rng(terminal_seq), config, terminal_id, day, scenario
    )
    _mark_compromised_cards(
        np.random.default_rng(card_seq), config, customer_id, day, amount, scenario
    )

    start = np.datetime64(config.start.isoformat(), "s")
    return SimulatedTransactions(
        transaction_id=np.arange(len(seconds), dtype=np.int64),
        tx_datetime=start + seconds.astype("timedelta64[s]"),
        customer_id=customer_id,
        terminal_id=terminal_id,
        tx_amount=amount,
        tx_time_seconds=seconds,
        tx_time_days=day,
        tx_fraud=(scenario > 0).astype(np.int8),
        tx_fraud_scenario=scenario,
    )


def _terminals_within_radius(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[IntArray, IntArray, IntArray]:
    """Each customer's terminals (strictly) within ``radius``, as CSR offsets, counts and ids."""
    block = max(1, _DISTANCE_BLOCK_CELLS // len(terminal_xy))
    ids: list[IntArray] = []
    counts: list[IntArray] = []
    for lo in range(0, len(customer_xy), block):
        part = customer_xy[lo : lo + block]
        distance = np.hypot(
            part[:, 0, None] - terminal_xy[None, :, 0], part[:, 1, None] - terminal_xy[None, :, 1]
        )
        rows, cols = np.nonzero(distance < radius)
        ids.append(cols.astype(np.int64))
        counts.append(np.bincount(rows, minlength=len(part)).astype(np.int64))
    count = np.concatenate(counts)
    offsets = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64)
    return offsets, count, np.concatenate(ids)


def _draw_payments(
    rng: np.random.Generator,
    days: int,
    mean_amount: FloatArray,
    mean_tx_per_day: FloatArray,
    offsets: IntArray,
    counts: IntArray,
    nearby: IntArray,
) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
    """All genuine payments, in customer-then-day order: customer, seconds, amount, terminal."""
    per_cell = rng.poisson(mean_tx_per_day[:, None], size=(len(mean_tx_per_day), days))
    cell = np.repeat(np.arange(per_cell.size, dtype=np.int64), per_cell.ravel())
    customer, day = np.divmod(cell, days)
    # int() in the handbook truncates towards zero; astype does the same.
    time_of_day = rng.normal(TIME_OF_DAY_MEAN, TIME_OF_DAY_STD, size=len(cell)).astype(np.int64)
    # A customer with no terminal in reach pays nothing, as in the handbook.
    keep = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY) & (counts[customer] > 0)
    customer, day, time_of_day = customer[keep], day[keep], time_of_day[keep]

    mean = mean_amount[customer]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    amount = np.round(amount, 2)

    terminal = nearby[offsets[customer] + rng.integers(0, counts[customer])]
    return customer, day * SECONDS_PER_DAY + time_of_day, amount, terminal


def _compromise_start_days(config: SimulationConfig) -> range:
    # The handbook loops over range(TX_TIME_DAYS.max()): no compromise starts on the last day.
    return range(config.days - 1)


def _mark_compromised_terminals(
    rng: np.random.Generator,
    config: SimulationConfig,
    terminal_id: IntArray,
    day: IntArray,
    scenario: npt.NDArray[np.int8],
) -> None:
    """Scenario 2: every payment at a terminal during its compromise window is fraud."""
    if config.compromised_terminals_per_day == 0:
        return
    cells: list[IntArray] = []
    for start in _compromise_start_days(config):
        hit = rng.choice(config.terminals, size=config.compromised_terminals_per_day, replace=False)
        # (terminal, day) cells as one integer key, so the lookup is a single vectorised isin;
        # the window is cut at the last day, or its tail would alias the next terminal's days.
        window = np.arange(start, min(start + config.terminal_compromise_days, config.days))
        cells.append((hit[:, None] * config.days + window[None, :]).ravel())
    if cells:
        keys = np.unique(np.concatenate(cells))
        scenario[np.isin(terminal_id * config.days + day, keys)] = 2


def _mark_compromised_cards(
    rng: np.random.Generator,
    config: SimulationConfig,
    customer_id: IntArray,
    day: IntArray,
    amount: FloatArray,
    scenario: npt.NDArray[np.int8],
) -> None:
    """Scenario 3: a share of the pooled payments of the day's cards, over the window, inflated."""
    if config.compromised_cards_per_day == 0:
        return
    # Rows grouped by card keep their time order (stable sort), so each card's window is a slice.
    by_card = np.argsort(customer_id, kind="stable")
    card_bounds = np.searchsorted(customer_id[by_card], np.arange(config.customers + 1))
    day_by_card = day[by_card]
    for start in _compromise_start_days(config):
        cards = rng.choice(config.customers, size=config.compromised_cards_per_day, replace=False)
        slices: list[IntArray] = []
        for card in cards:
            lo, hi = card_bounds[card], card_bounds[card + 1]
            first, last = np.searchsorted(
                day_by_card[lo:hi], (start, start + config.card_compromise_days)
            )
            slices.append(by_card[lo + first : lo + last])
        pool = np.sort(np.concatenate(slices))
        n_fraud = int(len(pool) * config.card_fraud_share)
        if n_fraud == 0:
            continue
        chosen = rng.choice(pool, size=n_fraud, replace=False)
        # Not re-rounded, like the handbook: its dataset holds amounts such as 85.64999999999999.
        amount[chosen] *= config.card_fraud_multiplier
        scenario[chosen] = 3


def write_csv(data: SimulatedTransactions, path: Path) -> None:
    """Write ``data`` as CSV (gzip when ``path`` ends with .gz), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw:
        if path.suffix == ".gz":
            # mtime=0 and no file name in the header: the same data gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                _write_rows(data, gz.write)
        else:
            _write_rows(data, raw.write)


def _write_rows(data: SimulatedTransactions, write: Callable[[bytes], object]) -> None:
    write((",".join(COLUMNS) + "\n").encode("ascii"))
    for lo in range(0, len(data), _CSV_CHUNK_ROWS):
        write(_format_rows(data, slice(lo, lo + _CSV_CHUNK_ROWS)).encode("ascii"))


def _format_rows(data: SimulatedTransactions, rows: slice) -> str:
    stamps = np.datetime_as_string(data.tx_datetime[rows], unit="s")
    # ISO puts a "T" at index 10; the handbook's dataset has a space there.
    chars = stamps.view("<U1").reshape(len(stamps), -1)
    chars[:, 10] = " "
    columns = zip(
        data.transaction_id[rows].tolist(),
        stamps.tolist(),
        data.customer_id[rows].tolist(),
        data.terminal_id[rows].tolist(),
        # repr() writes floats as pandas did for the handbook: 146.0, 57.16.
        map(repr, data.tx_amount[rows].tolist()),
        data.tx_time_seconds[rows].tolist(),
        data.tx_time_days[rows].tolist(),
        data.tx_fraud[rows].tolist(),
        data.tx_fraud_scenario[rows].tolist(),
        strict=True,
    )
    return "".join(map("%d,%s,%d,%d,%s,%d,%d,%d,%d\n".__mod__, columns))


def simulate_to_file(config: SimulationConfig, path: Path) -> SimulationSummary:
    """Simulate with ``config``, write the CSV to ``path`` and summarise what was written."""
    data = simulate(config)
    write_csv(data, path)
    counts = np.bincount(data.tx_fraud_scenario, minlength=4)
    return SimulationSummary(
        path=Path(path),
        transactions=len(data),
        frauds=int(data.tx_fraud.sum()),
        by_scenario={scenario: int(counts[scenario]) for scenario in (1, 2, 3)},
        customers=config.customers,
        terminals=config.terminals,
        days=config.days,
    )
