"""Narratives for escalated cases, streamed to ``narratives`` chunk by chunk.

``install_narrator`` adds the ``narrate`` agent: it reads ``escalations`` (decision JSON, keyed by
card), hands each case to a :class:`Narrator` and goes on at once, so a slow or broken LLM never
holds up the stream — and never the scoring agent, which only produces to ``escalations``. The
narrator only *reads* decisions: a narrative is advisory and never changes one.

Each narrative is a run of records on ``narratives`` (key: the card): ``tx_id``, ``seq`` (0, 1, …),
``delta``, ``done``, ``source`` (``llm`` or ``template``) and ``model``; the last has ``done:
true``, the whole ``text``, the token ``usage`` (None for the template), the prompt template
version and, when the template wrote part or all of it, ``fallback`` (why).

Where the text comes from:

* the LLM (``OPENAI_API_KEY`` set), streamed through the official SDK as it arrives, capped at
  ``FRAUD_LLM_MAX_CHARS``; an identical prompt seen before replays the cached narrative;
* the template (:func:`processor.prompts.template_narrative`), streamed the same way, when there is
  no API key, the circuit is open, the budget is spent, the case waited too long, or the LLM
  failed before its first words; when it fails *after* some words were published, those stay
  valid and the template completes the narrative after a note (``seq`` keeps increasing).

Guards: at most ``FRAUD_LLM_CONCURRENCY`` calls in flight; a whole-call timeout, a first-token
timeout and a stall timeout between chunks; retries with jittered exponential back-off that honour
``Retry-After`` (and pause every call for it) on 429, 5xx, timeouts and connection errors, only
while nothing was published; a circuit breaker; requests and tokens per minute and a daily token
cap (:mod:`processor.guards`). The prompt (:func:`processor.prompts.build_messages`) has the
decision's facts and the card's last escalations this worker saw (kept in memory: the scoring
path gets no extra Redis call), with the payment's own text delimited as untrusted data.

Back-pressure policy. Cases wait in a bounded in-memory queue (``FRAUD_LLM_QUEUE_SIZE``). A free
LLM slot, when the budget allows a call, takes the case with the **highest score**, the newest
among equals: under overload the freshest high-risk cases are the ones an analyst opens first.
The **lowest-score, oldest** cases get the template first: when the queue is full the lowest-score
case (the oldest among equals) is narrated by the template at once to make room, and any case that
has waited ``FRAUD_LLM_MAX_WAIT_S`` gets the template too, so every escalation gets a narrative
within a bounded time whatever the LLM does. While the circuit is open or the daily cap is reached,
the whole queue goes to the template. Narratives are best effort across a crash (cases in memory
are lost with the process); on a clean stop the queue is narrated by the template.

Logs carry the SHA-256 of the prompt and of the output and the prompt version, never the texts
and never the API key. Metrics (:class:`processor.llm.LLMMetrics`): ``fraudstream_llm_calls_total
{outcome}``, ``_attempts_total``, ``_errors_total{kind}``, ``_tokens_total{kind}``,
``_first_token_seconds``, ``_done_seconds``, ``_circuit_state``, ``_template_fallbacks_total
{reason}``, ``_narratives_total{source}``, ``_queue_depth``, ``_in_flight``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson

from processor import prompts
from processor.guards import Budget, CachedNarrative, CircuitBreaker, CircuitState, PromptCache
from processor.llm import (
    METRICS,
    GaveUp,
    Interrupted,
    LLMCaller,
    LLMMetrics,
    NarratorSettings,
    make_client,
)
from processor.prompts import NarrativeWriter, Publish
from processor.settings import Settings

log = logging.getLogger("fraudstream.narrator")


@dataclass
class Case:
    """An escalation waiting for (or getting) its narrative."""

    tx_id: str
    card_id: str
    score: float
    arrival: int
    queued_at: float
    record: dict[str, Any]
    history: tuple[dict[str, Any], ...] = ()
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt_key: str | None = None  # SHA-256 of model + messages: cache key, logged
    estimate: float = 0.0  # tokens the call may use: the prompt's, and all it may answer

    @property
    def priority(self) -> tuple[float, int]:
        return (self.score, self.arrival)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Narrator:
    """The narrator's core: queue, policy, LLM calls and template, publishing via ``publish``."""

    def __init__(
        self,
        settings: NarratorSettings,
        publish: Publish,
        *,
        metrics: LLMMetrics = METRICS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.publish = publish
        self.metrics = metrics
        self.clock = clock
        self.client = make_client(settings)
        self.model = settings.model if self.client is not None else prompts.TEMPLATE_VERSION
        self.breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_cooldown_s,
            clock=clock,
            on_change=lambda state: metrics.circuit.set(int(state)),
        )
        self.budget = Budget(
            settings.requests_per_min, settings.tokens_per_min, settings.daily_tokens, clock=clock
        )
        self.cache = PromptCache(settings.cache_size)
        self.caller = (
            LLMCaller(self.client, settings, metrics, self.breaker, self.budget, clock)
            if self.client is not None
            else None
        )
        self._pending: list[Case] = []
        self._active: set[str] = set()  # tx_ids queued or being narrated
        self._done: OrderedDict[str, None] = OrderedDict()  # recently narrated tx_ids
        self._history: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._arrivals = itertools.count()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False

    # --- intake ----------------------------------------------------------------------------

    async def submit(self, raw: bytes | Mapping[str, Any]) -> None:
        """Take one escalation; returns at once unless the template narrates it right here."""
        try:
            record = orjson.loads(raw) if isinstance(raw, bytes | str) else dict(raw)
            if not isinstance(record, dict):
                raise TypeError(type(record).__name__)
            tx_id, card_id = str(record["tx_id"]), str(record["card_id"])
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            log.warning("escalation skipped: not a decision", extra={"error": str(exc)[:200]})
            return
        if tx_id in self._active or tx_id in self._done:
            return  # a redelivered escalation: its narrative is out or on its way
        score = record.get("score")
        case = Case(
            tx_id=tx_id,
            card_id=card_id,
            score=float(score) if isinstance(score, int | float) else 0.0,
            arrival=next(self._arrivals),
            queued_at=self.clock(),
            record=record,
            history=self._remember(card_id, record),
        )
        self._active.add(tx_id)
        self._idle.clear()
        if self.client is None or self._closing:
            await self._template(case, "no_api_key" if self.client is None else "shutdown")
            return
        case.messages = prompts.build_messages(
            record,
            case.history,
            max_words=self.settings.max_words,
            untrusted_limit=self.settings.untrusted_max_chars,
        )
        case.prompt_key = _sha(orjson.dumps([self.settings.model, case.messages]).decode())
        chars = sum(len(m["content"]) for m in case.messages)
        case.estimate = chars / 4 + self.settings.max_tokens
        cached = self.cache.get(case.prompt_key)
        if cached is not None:
            await self._replay_cached(case, cached)
            return
        self._ensure_dispatcher()
        self._pending.append(case)
        if len(self._pending) > self.settings.queue_size:
            victim = min(self._pending, key=lambda c: c.priority)
            self._pending.remove(victim)
            await self._template(victim, "queue_full")
        self.metrics.queue.set(len(self._pending))
        self._wake.set()

    def _remember(self, card_id: str, record: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """The card's earlier escalations (newest first), then this one joins them."""
        size = self.settings.history_size
        if size == 0:
            return ()
        seen = self._history.get(card_id)
        if seen is None:
            seen = self._history[card_id] = deque(maxlen=size)
            while len(self._history) > self.settings.history_cards:
                self._history.popitem(last=False)
        self._history.move_to_end(card_id)
        earlier = tuple(reversed(seen))
        seen.append(prompts.history_entry(record))
        return earlier

    # --- dispatch --------------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="narrator-dispatch")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._logged(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _logged(coro: Awaitable[None]) -> None:
        try:
            await coro
        except Exception:  # a failed publish loses one narrative, never the narrator
            log.exception("narrative failed")

    async def _dispatch(self) -> None:
        while True:
            sleep_for = self._dispatch_once()
            self._wake.clear()
            try:
                async with asyncio.timeout(sleep_for):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _dispatch_once(self) -> float | None:
        """Start what can start; returns how long to sleep unless woken (None: until woken)."""
        now = self.clock()
        max_wait = self.settings.max_wait_s
        for case in [c for c in self._pending if now - c.queued_at >= max_wait]:
            self._pending.remove(case)
            self._spawn(self._template(case, "waited_too_long"))
        sleep_for: float | None = None
        while self._pending and self._in_flight < self.settings.concurrency:
            case = max(self._pending, key=lambda c: c.priority)
            wait = self.budget.wait_s(case.estimate)
            if wait is None:
                self._drain_to_template("daily_cap")
                break
            if wait > 0:
                sleep_for = wait
                break
            if not self.breaker.allow():
                if self.breaker.state is CircuitState.OPEN:
                    self._drain_to_template("circuit_open")
                break  # half-open: the probe is out, wait for its verdict
            self._pending.remove(case)
            reservation = self.budget.reserve(case.estimate)
            self._in_flight += 1
            self.metrics.in_flight.set(self._in_flight)
            self._spawn(self._run_llm(case, reservation))
        self.metrics.queue.set(len(self._pending))
        if self._pending:
            oldest = min(c.queued_at for c in self._pending)
            until_expiry = max(0.0, oldest + max_wait - now)
            sleep_for = until_expiry if sleep_for is None else min(sleep_for, until_expiry)
        return sleep_for

    def _drain_to_template(self, reason: str) -> None:
        for case in self._pending:
            self._spawn(self._template(case, reason))
        self._pending.clear()

    # --- narrating -------------------------------------------------------------------------

    async def _run_llm(self, case: Case, reservation: list[float]) -> None:
        try:
            await self._narrate_llm(case, reservation)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)
            self._finished(case)
            self._wake.set()

    async def _narrate_llm(self, case: Case, reservation: list[float]) -> None:
        assert self.caller is not None
        writer = NarrativeWriter(self.publish, case.tx_id, case.card_id, self.settings.max_chars)
        usage: dict[str, int] | None = None
        deltas = self.caller.stream(
            case.messages,
            estimate=case.estimate,
            reservation=reservation,
            queued_at=case.queued_at,
            log_extra={"tx_id": case.tx_id},
        )
        try:
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    usage = delta.usage or usage
                    await writer.emit(prompts.printable(delta.text), "llm", self.model)
        except Interrupted as exc:
            await self._complete_with_template(writer, case, exc.kind)
            return
        except GaveUp as exc:
            await self._template(case, exc.reason, writer=writer, finished=False)
            return
        assert case.prompt_key is not None
        self.cache.put(case.prompt_key, CachedNarrative("".join(writer.text), usage))
        await self._finish(writer, case, "llm", usage=usage)

    async def _replay_cached(self, case: Case, cached: CachedNarrative) -> None:
        """An identical prompt was answered before: stream that answer again, no call."""
        try:
            self.metrics.calls.labels("cached").inc()
            writer = NarrativeWriter(
                self.publish, case.tx_id, case.card_id, self.settings.max_chars
            )
            for piece in prompts.split_chunks(cached.text, self.settings.chunk_words):
                await writer.emit(piece, "llm", self.model)
            await self._finish(writer, case, "llm", usage=cached.usage, cached=True)
        finally:
            self._finished(case)

    async def _complete_with_template(self, writer: NarrativeWriter, case: Case, kind: str) -> None:
        self.metrics.fallbacks.labels("llm_interrupted").inc()
        await writer.emit(prompts.INTERRUPTED_NOTE, "template", prompts.TEMPLATE_VERSION)
        await self._stream_template(writer, case)
        await self._finish(writer, case, "template", fallback=f"llm_interrupted:{kind}")

    async def _template(
        self,
        case: Case,
        reason: str,
        *,
        writer: NarrativeWriter | None = None,
        finished: bool = True,
    ) -> None:
        """The whole narrative from the template (the case is released unless ``finished``
        is False, i.e. the LLM task that called this releases it)."""
        try:
            self.metrics.fallbacks.labels(reason).inc()
            writer = writer or NarrativeWriter(
                self.publish, case.tx_id, case.card_id, self.settings.max_chars
            )
            await self._stream_template(writer, case)
            await self._finish(writer, case, "template", fallback=reason)
        finally:
            if finished:
                self._finished(case)

    async def _stream_template(self, writer: NarrativeWriter, case: Case) -> None:
        text = prompts.template_narrative(case.record, case.history)
        for piece in prompts.split_chunks(text, self.settings.chunk_words):
            await writer.emit(piece, "template", prompts.TEMPLATE_VERSION)

    async def _finish(
        self,
        writer: NarrativeWriter,
        case: Case,
        source: str,
        *,
        usage: dict[str, int] | None = None,
        cached: bool = False,
        fallback: str | None = None,
    ) -> None:
        model = self.model if source == "llm" else prompts.TEMPLATE_VERSION
        extra: dict[str, Any] = {"usage": usage, "prompt_version": prompts.PROMPT_VERSION}
        if cached:
            extra["cached"] = True
        if fallback:
            extra["fallback"] = fallback
        text = await writer.finish(source, model, **extra)
        self.metrics.narratives.labels(source).inc()
        log.info(
            "narrative published",
            extra={
                "tx_id": case.tx_id,
                "source": source,
                "fallback": fallback,
                "cached": cached,
                "chunks": writer.seq,
                "prompt_version": prompts.PROMPT_VERSION,
                "prompt_sha256": case.prompt_key,
                "output_sha256": _sha(text),
                "prompt_tokens": usage["prompt_tokens"] if usage else None,
                "completion_tokens": usage["completion_tokens"] if usage else None,
            },
        )

    def _finished(self, case: Case) -> None:
        self._active.discard(case.tx_id)
        self._done[case.tx_id] = None
        while len(self._done) > max(1_000, self.settings.queue_size * 4):
            self._done.popitem(last=False)
        if not self._active:
            self._idle.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until every case taken so far has its narrative published (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        """Narrate the queue with the template, give calls in flight a grace period, stop."""
        self._closing = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        self._drain_to_template("shutdown")
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.settings.shutdown_grace_s)
            for task in late:
                task.cancel()
        if self.client is not None:
            await self.client.close()


def install_narrator(
    app: faust.App,
    settings: Settings,
    runtime: Any,
    narrator_settings: NarratorSettings | None = None,
) -> None:
    """Add the ``narrate`` agent (escalations -> narratives) unless ``FRAUD_LLM_ENABLED=false``."""
    llm_settings = narrator_settings or NarratorSettings()
    if not llm_settings.enabled:
        log.info("narrator disabled (FRAUD_LLM_ENABLED=false)")
        return
    topics = settings.topics()
    escalations = app.topic(
        settings.topic_escalations, partitions=topics[settings.topic_escalations]
    )
    narratives = app.topic(settings.topic_narratives, partitions=topics[settings.topic_narratives])

    async def publish(key: bytes, value: bytes) -> None:
        await narratives.send(key=key, value=value)

    @app.agent(escalations, name="narrate")
    async def narrate(stream: faust.StreamT) -> None:
        narrator = Narrator(llm_settings, publish)
        app.fraud_narrator = narrator  # type: ignore[attr-defined]
        log.info(
            "narrator ready",
            extra={
                "source": "llm" if narrator.client is not None else "template",
                "model": narrator.model,
                "base_url": llm_settings.base_url,
                "prompt_version": prompts.PROMPT_VERSION,
            },
        )
        try:
            async for event in stream.events():
                await narrator.submit(event.message.value)
        finally:
            await narrator.close()
