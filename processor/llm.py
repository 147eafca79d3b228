"""The narrator's adapter to an OpenAI-compatible chat API.

* :class:`NarratorSettings` — ``FRAUD_LLM_*`` plus ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.
* :class:`LLMMetrics` — the ``fraudstream_llm_*`` Prometheus series.
* :func:`stream_attempt` — one streamed chat completion through the official SDK, its deltas as
  they come, every failure turned into an :class:`LLMError` with a kind (timeout, stall, 429,
  5xx, 4xx, connection, malformed).
* :class:`LLMCaller` — attempts with retries: jittered exponential back-off, or the server's
  ``Retry-After`` (which also pauses every other call), on 429, 5xx, timeouts and connection
  errors, and only while no text has come out; the circuit breaker and the budget
  (:mod:`processor.guards`) are asked before every attempt. The SDK's own retries are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast

import openai
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processor.guards import Budget, CircuitBreaker

log = logging.getLogger("fraudstream.narrator")


class NarratorSettings(BaseSettings):
    """The narrator's knobs: each field is ``FRAUD_LLM_<FIELD>`` except the two OpenAI ones."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_LLM_", extra="ignore", frozen=True, populate_by_name=True
    )

    enabled: bool = Field(True, description="Run the narrator agent on the escalations topic.")
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "api_key"),
        description="OpenAI API key; unset means every narrative comes from the template.",
    )
    base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "base_url"),
        description="Any OpenAI-compatible server (default: the SDK's).",
    )
    model: str = Field("gpt-4o-mini", description="Chat model that writes narratives.")
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(300, ge=16, description="Completion tokens asked for per narrative.")
    max_chars: int = Field(2_000, ge=200, description="Narrative length cap (characters).")
    max_words: int = Field(150, ge=20, description="Length the prompt asks the model for.")
    untrusted_max_chars: int = Field(200, ge=16, description="Cap per payment-supplied field.")
    concurrency: int = Field(4, ge=1, description="LLM calls in flight at once.")
    queue_size: int = Field(256, ge=1, description="Escalations waiting for an LLM slot.")
    max_wait_s: float = Field(30.0, gt=0, description="Longest wait for an LLM slot or budget.")
    timeout_s: float = Field(30.0, gt=0, description="Whole call, request to last chunk.")
    first_token_timeout_s: float = Field(10.0, gt=0, description="Request to first chunk.")
    stall_timeout_s: float = Field(5.0, gt=0, description="Longest silence between chunks.")
    max_retries: int = Field(2, ge=0, description="Retries of a call that sent no text yet.")
    backoff_s: float = Field(0.5, gt=0, description="First retry delay (doubles, jittered).")
    backoff_max_s: float = Field(8.0, gt=0)
    retry_after_max_s: float = Field(30.0, gt=0, description="A longer Retry-After -> template.")
    requests_per_min: int = Field(60, ge=1)
    tokens_per_min: int = Field(100_000, ge=1)
    daily_tokens: int = Field(2_000_000, ge=1, description="Tokens per UTC day, then template.")
    cache_size: int = Field(1_024, ge=0, description="Narratives cached by prompt hash.")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open it.")
    breaker_cooldown_s: float = Field(30.0, gt=0, description="Open -> half-open after this.")
    history_size: int = Field(5, ge=0, description="Earlier escalations of a card in a prompt.")
    history_cards: int = Field(10_000, ge=1, description="Cards whose history is remembered.")
    chunk_words: int = Field(6, ge=1, description="Words per template chunk.")
    shutdown_grace_s: float = Field(5.0, ge=0, description="On stop, time to finish in flight.")

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("base_url", mode="before")
    @classmethod
    def _blank_url_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class LLMMetrics:
    """The narrator's Prometheus series (one set per registry; the module's is the default)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        kw: dict[str, Any] = {"registry": registry}
        self.calls = Counter(
            "fraudstream_llm_calls",
            "Narratives that went to the LLM, by outcome (ok, cached, failed, interrupted).",
            ["outcome"],
            **kw,
        )
        self.attempts = Counter("fraudstream_llm_attempts", "HTTP requests made to the LLM.", **kw)
        self.errors = Counter(
            "fraudstream_llm_errors", "Failed LLM attempts by kind.", ["kind"], **kw
        )
        self.tokens = Counter(
            "fraudstream_llm_tokens", "Tokens used, by kind (prompt, completion).", ["kind"], **kw
        )
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
        self.first_token = Histogram(
            "fraudstream_llm_first_token_seconds",
            "Request to first text delta.",
            buckets=buckets,
            **kw,
        )
        self.done = Histogram(
            "fraudstream_llm_done_seconds", "Request to the last chunk.", buckets=buckets, **kw
        )
        self.circuit = Gauge(
            "fraudstream_llm_circuit_state", "0 closed, 1 open, 2 half-open.", **kw
        )
        self.fallbacks = Counter(
            "fraudstream_llm_template_fallbacks",
            "Narratives (or their ends) written by the template, by reason.",
            ["reason"],
            **kw,
        )
        self.narratives = Counter(
            "fraudstream_llm_narratives", "Finished narratives by source.", ["source"], **kw
        )
        self.queue = Gauge("fraudstream_llm_queue_depth", "Escalations waiting for the LLM.", **kw)
        self.in_flight = Gauge("fraudstream_llm_in_flight", "LLM calls in flight.", **kw)


METRICS = LLMMetrics()


class LLMError(Exception):
    """A failed attempt: ``kind`` for metrics, ``retryable``, and the server's Retry-After."""

    def __init__(
        self, kind: str, *, retryable: bool, retry_after: float | None = None, status: int = 0
    ) -> None:
        super().__init__(kind if not status else f"{kind} (HTTP {status})")
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def parse_retry_after(headers: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000.0
            return value if math.isfinite(value) and value >= 0 else None
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - now())
    except (TypeError, ValueError):
        return None


def classify(exc: BaseException) -> LLMError:
    """An SDK or transport exception as an :class:`LLMError`."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        if status == 429:
            return LLMError("429", retryable=True, retry_after=retry_after, status=status)
        if status >= 500:
            return LLMError("5xx", retryable=True, retry_after=retry_after, status=status)
        return LLMError(
            "4xx", retryable=status in (408, 409), retry_after=retry_after, status=status
        )
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return LLMError("timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError | ConnectionError | OSError):
        return LLMError("connection", retryable=True)
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return LLMError("5xx", retryable=True)
    if isinstance(exc, json.JSONDecodeError | ValueError | AttributeError | TypeError | KeyError):
        return LLMError("malformed", retryable=True)
    return LLMError("malformed", retryable=False)


@dataclass
class Delta:
    """A piece of streamed text, or (``text`` empty) the usage the last chunk reported."""

    text: str
    usage: dict[str, int] | None = None


def _chunk_delta(chunk: Any) -> Delta:
    usage = getattr(chunk, "usage", None)
    usage_doc = None
    if usage is not None:
        usage_doc = {
            "prompt_tokens": int(usage.prompt_tokens or 0),
            "completion_tokens": int(usage.completion_tokens or 0),
            "total_tokens": int(usage.total_tokens or 0),
        }
    choices = chunk.choices
    if not isinstance(choices, list):
        raise ValueError("chunk without choices")
    text = ""
    if choices:
        content = choices[0].delta.content
        if content is not None and not isinstance(content, str):
            raise ValueError("delta content is not text")
        text = content or ""
    return Delta(text, usage_doc)


async def stream_attempt(
    client: openai.AsyncOpenAI,
    settings: NarratorSettings,
    messages: Sequence[dict[str, str]],
    *,
    started: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[Delta, None]:
    """One streamed chat completion; raises :class:`LLMError` (``stall`` once text flowed)."""
    deadline = started + settings.timeout_s
    first_by = min(deadline, started + settings.first_token_timeout_s)
    stream = None
    got_text = False
    try:
        try:
            async with asyncio.timeout_at(_loop_time(first_by, clock)):
                stream = await client.chat.completions.create(
                    model=settings.model,
                    messages=cast(Any, list(messages)),
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=settings.max_tokens,
                    temperature=settings.temperature,
                    timeout=settings.timeout_s,
                )
        except TimeoutError:
            raise LLMError("timeout", retryable=True) from None
        chunks = stream.__aiter__()
        while True:
            now = clock()
            limit = first_by if not got_text else min(deadline, now + settings.stall_timeout_s)
            try:
                async with asyncio.timeout_at(_loop_time(limit, clock)):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                overall = clock() >= deadline - 1e-3
                kind = "stall" if got_text and not overall else "timeout"
                raise LLMError(kind, retryable=True) from None
            delta = _chunk_delta(chunk)
            if delta.text:
                got_text = True
            yield delta
    except LLMError:
        raise
    except (openai.OpenAIError, OSError, ValueError, AttributeError, TypeError, KeyError) as exc:
        raise classify(exc) from exc
    finally:
        if stream is not None:
            # Closing a broken connection may fail again; there is nothing left to save.
            with contextlib.suppress(Exception):
                await stream.close()


def _loop_time(at: float, clock: Callable[[], float]) -> float:
    """``at`` on ``clock`` as the running loop's time."""
    return asyncio.get_running_loop().time() + (at - clock())


def make_client(settings: NarratorSettings) -> openai.AsyncOpenAI | None:
    """The SDK client, or None when no API key is set (the template narrates)."""
    if settings.api_key is None:
        return None
    return openai.AsyncOpenAI(
        api_key=settings.api_key.get_secret_value(),
        base_url=settings.base_url,
        max_retries=0,
        timeout=settings.timeout_s,
    )


class GaveUp(Exception):
    """No text came out and none will: ``reason`` says why the template takes over."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupted(Exception):
    """The LLM failed after some text came out (``kind`` as in :class:`LLMError`)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class LLMCaller:
    """Streams one narrative from the LLM, retrying and accounting as the guards say."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        settings: NarratorSettings,
        metrics: LLMMetrics,
        breaker: CircuitBreaker,
        budget: Budget,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.breaker = breaker
        self.budget = budget
        self.clock = clock

    async def stream(
        self,
        messages: Sequence[dict[str, str]],
        *,
        estimate: float,
        reservation: list[float],
        queued_at: float,
        log_extra: dict[str, Any],
    ) -> AsyncGenerator[Delta, None]:
        """The deltas of the first attempt that works (its caller took the first reservation).

        Raises :class:`Interrupted` when an attempt fails after text came out, :class:`GaveUp`
        when retrying is over (not retryable, out of retries, out of time, budget or circuit).
        The caller reads to the end: the output is bounded by ``max_tokens`` anyway, and a
        finished stream is what counts as a success for the breaker and the budget.
        """
        settings, metrics = self.settings, self.metrics
        attempt = 0
        while True:
            started = self.clock()
            usage: dict[str, int] | None = None
            sent = False
            metrics.attempts.inc()
            deltas = stream_attempt(
                self.client, settings, messages, started=started, clock=self.clock
            )
            try:
                async with contextlib.aclosing(deltas):
                    async for delta in deltas:
                        if delta.usage is not None:
                            usage = delta.usage
                        if delta.text and not sent:
                            sent = True
                            metrics.first_token.observe(self.clock() - started)
                        yield delta
            except LLMError as exc:
                metrics.errors.labels(exc.kind).inc()
                self.breaker.record_failure()
                self.budget.settle(reservation, reservation[1] if sent else 0)
                if exc.retry_after:
                    self.budget.pause(min(exc.retry_after, settings.retry_after_max_s))
                log.warning(
                    "llm attempt failed",
                    extra={
                        **log_extra,
                        "kind": exc.kind,
                        "status": exc.status,
                        "attempt": attempt,
                        "after_text": sent,
                    },
                )
                if sent:
                    metrics.calls.labels("interrupted").inc()
                    raise Interrupted(exc.kind) from None
                delay = self._retry_delay(exc, attempt, queued_at)
                if delay is None:
                    metrics.calls.labels("failed").inc()
                    raise GaveUp("llm_failed") from None
                await asyncio.sleep(delay)
                attempt += 1
                granted = await self._reserve_retry(estimate, queued_at)
                if isinstance(granted, str):
                    metrics.calls.labels("failed").inc()
                    raise GaveUp(granted) from None
                reservation = granted
                continue
            self.breaker.record_success()
            metrics.done.observe(self.clock() - started)
            metrics.calls.labels("ok").inc()
            self.budget.settle(reservation, usage["total_tokens"] if usage else reservation[1])
            if usage:
                metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
                metrics.tokens.labels("completion").inc(usage["completion_tokens"])
            return

    def _retry_delay(self, exc: LLMError, attempt: int, queued_at: float) -> float | None:
        """How long to wait before the next attempt, or None: give up."""
        settings = self.settings
        if not exc.retryable or attempt >= settings.max_retries:
            return None
        if exc.retry_after is not None:
            if exc.retry_after > settings.retry_after_max_s:
                return None
            delay = exc.retry_after
        else:
            delay = min(settings.backoff_max_s, settings.backoff_s * 2**attempt)
            delay *= random.uniform(0.5, 1.0)  # jitter: workers don't retry in lockstep
        if self.clock() - queued_at + delay > settings.max_wait_s + settings.timeout_s:
            return None
        return delay

    async def _reserve_retry(self, estimate: float, queued_at: float) -> list[float] | str:
        """A budget reservation for the next attempt, or why the template takes over."""
        while True:
            wait = self.budget.wait_s(estimate)
            if wait is None:
                return "daily_cap"
            if self.clock() + wait - queued_at > 2 * self.settings.max_wait_s:
                return "budget"
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not self.breaker.allow():
                return "circuit_open"
            return self.budget.reserve(estimate)
