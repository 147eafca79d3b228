"""Guards of the LLM calls, free of any I/O: a circuit breaker, a budget, a prompt cache.

* :class:`CircuitBreaker` — opens after N consecutive failed attempts, half-opens (one probe)
  after a cool-down; a probe's success closes it, its failure re-opens it.
* :class:`Budget` — requests and tokens per sliding minute, a daily token cap (UTC day), and a
  pause that a server's ``Retry-After`` imposes on every call.
* :class:`PromptCache` — finished narratives by prompt hash, least recently used out first.

Clocks are passed in, so tests drive time by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Closed until ``failures`` attempts in a row fail; then open for ``cooldown_s``; then one
    probe is let through (half-open): its success closes the circuit, its failure re-opens it."""

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        if on_change:
            on_change(self._state)

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change:
                self._on_change(state)

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._set(CircuitState.HALF_OPEN)
            self._probing = False
        return self._state

    def blocked(self) -> bool:
        """True while no call may go: open, or half-open with its probe out."""
        state = self.state
        return state is CircuitState.OPEN or (state is CircuitState.HALF_OPEN and self._probing)

    def allow(self) -> bool:
        """May a call go now? In half-open, only the first caller (the probe) may."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive = 0
        self._probing = False
        self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._state is CircuitState.HALF_OPEN or self._consecutive >= self.failures:
            self._opened_at = self._clock()
            self._probing = False
            self._set(CircuitState.OPEN)


class Budget:
    """Requests and tokens per sliding minute, tokens per UTC day, and a Retry-After pause.

    A call reserves its estimate (prompt + the completion it asks for) before it goes and
    settles with the real usage after; a refused reservation says how long to wait, or None when
    the daily cap (or a single call above the per-minute budget) makes waiting pointless.
    """

    def __init__(
        self,
        requests_per_min: int,
        tokens_per_min: int,
        daily_tokens: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.daily_tokens = daily_tokens
        self._clock = clock
        self._wall = wall
        self._window: deque[list[float]] = deque()  # [start time, tokens] per call
        self._day = ""
        self._day_tokens = 0.0
        self._paused_until = 0.0

    def _prune(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - 60.0:
            self._window.popleft()
        day = datetime.fromtimestamp(self._wall(), UTC).date().isoformat()
        if day != self._day:
            self._day, self._day_tokens = day, 0.0

    def pause(self, seconds: float) -> None:
        """No call starts for ``seconds`` (a server's Retry-After applies to every call)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def day_tokens(self) -> float:
        self._prune(self._clock())
        return self._day_tokens

    def wait_s(self, estimate: float) -> float | None:
        """Seconds until a call of ``estimate`` tokens fits (0: now), None if not today."""
        now = self._clock()
        self._prune(now)
        if self._day_tokens + estimate > self.daily_tokens or estimate > self.tokens_per_min:
            return None
        wait = max(0.0, self._paused_until - now)
        if len(self._window) >= self.requests_per_min:
            wait = max(wait, self._window[-self.requests_per_min][0] + 60.0 - now)
        used = sum(tokens for _, tokens in self._window)
        if used + estimate > self.tokens_per_min:
            freed = used
            for start, tokens in self._window:
                freed -= tokens
                if freed + estimate <= self.tokens_per_min:
                    wait = max(wait, start + 60.0 - now)
                    break
        return wait

    def reserve(self, estimate: float) -> list[float]:
        entry = [self._clock(), float(estimate)]
        self._window.append(entry)
        self._day_tokens += estimate
        return entry

    def settle(self, entry: list[float], actual: float) -> None:
        """Replace a reservation's estimate by what the call really used."""
        self._day_tokens += actual - entry[1]
        entry[1] = float(actual)


@dataclass(frozen=True, slots=True)
class CachedNarrative:
    text: str
    usage: dict[str, int] | None


class PromptCache:
    """Finished LLM narratives by prompt hash, least recently used out first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, CachedNarrative] = OrderedDict()

    def get(self, key: str) -> CachedNarrative | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, item: CachedNarrative) -> None:
        if self.size <= 0:
            return
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
