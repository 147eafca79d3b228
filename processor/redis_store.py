"""The feature store in Redis: the reference store's features, one pipelined round trip per batch.

:class:`models.features.InMemoryFeatureStore` is the definition; this adapter gives the same
values on the same stream. Each transaction is two Lua calls (``processor/lua``), one on its card
and one on its terminal, plus a plain ``SET`` of its index entry, all in one pipeline per batch.
A call touches the keys of one entity only, all sharing its hash tag, so the layout works on Redis
Cluster. Scripts go by ``EVALSHA``; after ``NOSCRIPT`` (a restart, ``SCRIPT FLUSH``, a new node)
they are loaded again and the failed calls re-run. The scripts do none of the float arithmetic
the reference does: they return its exact inputs (prefix sums, counts, times) and
:meth:`RedisFeatureStore._vectors` does the same operations in the same order (on the handbook
data the values come out bit for bit). With a plain ``redis.asyncio.Redis`` the batch is packed
here and written on one pooled connection (redis-py's pipeline machinery costs twice the Python
time); any other client, ``RedisCluster`` included, gets a redis-py pipeline.

Key layout (``<p>`` is the prefix; ``{...}`` is the Cluster hash tag, one per entity):

=================================  ====  ======================================================
``<p>:{card:<card_id>}:tl``        ZSET  the card's transactions; score = event time; member =
                                         arrival sequence (ties sort by arrival, as in the
                                         reference), terminal, running amount sum (the
                                         reference's prefix sum), amount, tx_id
``<p>:{card:<card_id>}:fr``        ZSET  tx_ids of its fraud-labelled transactions, by time
``<p>:{card:<card_id>}:h``         HASH  tx_id -> its reply while in the dedup window and its
                                         member; ``''`` -> sequence and upkeep state
``<p>:{term:<merchant_id>}:tl``    ZSET  tx_ids of the terminal's transactions, by event time
``<p>:{term:<merchant_id>}:fr``    ZSET  tx_ids of its fraud-labelled transactions, by time
``<p>:{term:<merchant_id>}:c``     HASH  tx_id -> its reply while in the dedup window; ``''``
                                         -> upkeep state
``<p>:{tx:<tx_id>}``               STR   ``stamp|len(card_id)|card_id merchant_id``: how a
                                         label (it carries only the tx_id) finds both sides
=================================  ====  ======================================================

Time is event time. The store keeps the watermark (the newest event time counted) in the process,
as the reference does, and passes it to every call. Memory is bounded by it: a call trims its
entity below ``watermark - retention`` (``config.card_retention``; ``config.terminal_retention``)
once an eighth of the retention has piled up, and cached replies past ``dedup_seconds`` as
often.
Keys carry a TTL of their retention plus a quarter (a day at least), set again as the watermark
moves on: a safety net for entities that go quiet. A tx index entry lives
``max(card, terminal retention)`` plus that slack, like the reference's entries. Each worker
process keeps its own watermark; cards are partitioned between workers, terminals are shared, so
a worker far behind the others may find the oldest edge of a terminal window already trimmed.

Where this differs from the reference, and why: windows never reach below the watermark's
retention horizon. The reference drops old entries lazily (when an entry leaves its global
arrival queue), so what a *late* transaction's windows still see below that horizon depends on
when that happened to run; here the windows stop at the horizon, whenever trimming ran. The two
agree on any stream whose late arrivals (and late redeliveries) don't reach below it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError, ResponseError

from models.errors import FraudstreamError
from models.features import DAY, FeatureConfig
from models.records import FeatureVector, Transaction

__all__ = ["RedisFeatureStore", "RedisStoreError"]

_SCRIPTS = ("card_update", "terminal_update", "card_label", "terminal_label")
Command = tuple[Any, ...]
_PER_TX = 3  # calls per transaction in an update: card script, terminal script, index SET


class RedisStoreError(FraudstreamError):
    """Redis answered a feature-store call with an error (not a connection problem)."""


def ttl_for(retention: float) -> float:
    """Seconds of TTL for keys holding ``retention`` seconds of event time."""
    return retention + max(DAY, retention / 4)


def trim_slack_for(retention: float) -> float:
    """How far past its horizon an entity's oldest entry may be before a call trims it."""
    return retention / 8


def _lua(x: float | int) -> str:
    if isinstance(x, float) and math.isinf(x):
        return "math.huge" if x > 0 else "-math.huge"
    return repr(x)


def _sources(config: FeatureConfig) -> dict[str, str]:
    """Each script with the feature configuration prepended as Lua constants."""
    card = [w * DAY for w in config.card_windows]
    term = [w * DAY for w in config.terminal_windows]
    common: dict[str, float | int | list[float]] = {
        "DEDUP": config.dedup_seconds,
        "CW": card,
        "LONGEST": max(card),
        "DW": config.distinct_terminals_days * DAY,
        "NIGHT": config.night_last_hour,
        "RC": config.card_retention,
        "TW": term,
        "DELAY": config.label_delay_days * DAY,
        "RT": config.terminal_retention,
    }
    out = {}
    for name in _SCRIPTS:
        retention = config.card_retention if name.startswith("card") else config.terminal_retention
        values: dict[str, float | int | list[float]] = {
            **common,
            "TTL": round(ttl_for(retention) * 1000),
            "TTL_EVERY": (ttl_for(retention) - retention) / 2,
            "TRIM_SLACK": trim_slack_for(retention),
            # Cached replies go in the same sweeps: most entities see a transaction or two a day.
            "SWEEP_SLACK": trim_slack_for(retention),
        }
        header = "".join(
            f"local {key} = {{{', '.join(map(_lua, v))}}}\n"
            if isinstance(v, list)
            else f"local {key} = {_lua(v)}\n"
            for key, v in values.items()
        )
        body = resources.files("processor").joinpath("lua", f"{name}.lua").read_text("utf-8")
        out[name] = header + body
    return out


class RedisFeatureStore:
    """The feature store on Redis (or Valkey, or a Redis Cluster), for the asyncio worker."""

    def __init__(
        self, client: redis.Redis, config: FeatureConfig | None = None, *, prefix: str = "fs"
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix {prefix!r}: expected non-empty text without braces")
        self.client = client
        self.config = cfg = config or FeatureConfig()
        self.names = cfg.names
        self.prefix = prefix
        self.entry_retention = max(cfg.card_retention, cfg.terminal_retention)
        self._index_ttl_ms = round(ttl_for(self.entry_retention) * 1000)
        self._sources = _sources(cfg)
        self._sha = {
            name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for name, source in self._sources.items()
        }
        self._loaded = False
        self._watermark = -math.inf
        self._n_card = len(cfg.card_windows)
        self._n_term = len(cfg.terminal_windows)
        self._longest_at = cfg.card_windows.index(max(cfg.card_windows))
        self._longest = max(cfg.card_windows) * DAY
        self._tag_starts = tuple(f"{prefix}:{{{kind}:".encode() for kind in ("card", "term", "tx"))
        # A plain client gets the batch packed here and sent on one of its connections: a third
        # of redis-py's pipeline cost. A cluster client (or any other) goes through its pipeline.
        self._direct = type(client) is redis.Redis and client.connection is None

    @property
    def watermark(self) -> float:
        """The newest event time this store has counted (``-inf`` before the first)."""
        return self._watermark

    def card_key(self, card_id: str) -> str:
        """The common start of a card's keys (then ``tl``, ``fr`` or ``h``)."""
        return f"{self.prefix}:{{card:{card_id}}}:"

    def terminal_key(self, merchant_id: str) -> str:
        """The common start of a terminal's keys (then ``tl``, ``fr`` or ``c``)."""
        return f"{self.prefix}:{{term:{merchant_id}}}:"

    def index_key(self, tx_id: str) -> str:
        return f"{self.prefix}:{{tx:{tx_id}}}"

    async def update_many(self, txs: Sequence[Transaction]) -> list[FeatureVector]:
        """Count each transaction (once) and return its features, in order, in one round trip."""
        if not txs:
            return []
        commands, w = self._update_commands(txs)
        replies = await self._execute(commands)
        if w > self._watermark:  # only once counted, so a retried batch sees the same watermark
            self._watermark = w
        return self._vectors(txs, replies)

    async def update_stream(
        self, txs: Sequence[Transaction], skip: int = 0
    ) -> AsyncIterator[FeatureVector]:
        """:meth:`update_many`, yielding each transaction's features as soon as Redis answers.

        The batch still goes in one write, and Redis runs it in order; the caller scores one
        transaction while Redis counts the next, instead of waiting for the whole batch. The
        first ``skip`` vectors are not yielded (a caller retrying after a lost connection has
        them already; being idempotent, the calls give the same values again).
        """
        if not txs:
            return
        commands, w = self._update_commands(txs)
        if not self._direct:
            for vector in self._vectors(txs, await self._execute(commands))[skip:]:
                yield vector
        else:
            if not self._loaded:
                await self.load_scripts()
            async for vector in self._stream_direct(txs, commands, skip):
                yield vector
        if w > self._watermark:
            self._watermark = w

    async def _stream_direct(
        self, txs: Sequence[Transaction], commands: list[Command], skip: int
    ) -> AsyncIterator[FeatureVector]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        rest: list[Any] = []
        done = 0
        try:
            await conn.send_packed_command(_pack(commands), check_health=False)
            async with asyncio.timeout(conn.socket_timeout):
                for i, tx in enumerate(txs):
                    replies = [await _read(conn) for _ in range(_PER_TX)]
                    if any(isinstance(r, ResponseError) for r in replies):
                        # Scripts lost (or an error): read the rest, then let the batch path
                        # reload and re-run what failed and raise what cannot be re-run.
                        rest = replies + [await _read(conn) for _ in commands[_PER_TX * (i + 1) :]]
                        done = i
                        break
                    if i >= skip:
                        yield self._vector(tx, replies[0], replies[1])
                else:
                    done = len(txs)
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            await pool.release(conn)
        if done < len(txs):
            replies = await self._repair(commands[_PER_TX * done :], rest)
            for j, tx in enumerate(txs[done:], start=done):
                if j >= skip:
                    k = _PER_TX * (j - done)
                    yield self._vector(tx, replies[k], replies[k + 1])

    def _update_commands(self, txs: Sequence[Transaction]) -> tuple[list[Command], float]:
        """Each transaction's calls (card, terminal, index: ``_PER_TX``) and the new watermark."""
        card_sha, term_sha = self._sha["card_update"], self._sha["terminal_update"]
        index_ttl = self._index_ttl_ms
        p = self.prefix
        w = self._watermark
        w_s = repr(w)
        commands: list[Command] = []
        add = commands.append
        for tx in txs:
            ts, tx_id, card_id, merchant_id = tx.ts, tx.tx_id, tx.card_id, tx.merchant_id
            before = w_s
            if ts > w:
                w = ts
                w_s = repr(w)
            ts_s = repr(ts)
            card = f"{p}:{{card:{card_id}}}:"
            term = f"{p}:{{term:{merchant_id}}}:"
            add(("EVALSHA", card_sha, 3, card + "tl", card + "fr", card + "h",
                 tx_id, ts_s, repr(tx.amount), merchant_id, before, w_s))  # fmt: skip
            add(("EVALSHA", term_sha, 3, term + "tl", term + "fr", term + "c",
                 tx_id, ts_s, before, w_s))  # fmt: skip
            index = f"{w_s}|{len(card_id)}|{card_id}{merchant_id}"
            add(("SET", f"{p}:{{tx:{tx_id}}}", index, "NX", "PX", index_ttl))
        return commands, w

    async def update_one(self, tx: Transaction) -> FeatureVector:
        """Count ``tx`` (once) and return its features as of its event time."""
        return (await self.update_many((tx,)))[0]

    async def record_labels(self, labels: Sequence[tuple[str, bool]]) -> list[bool]:
        """Record ``(tx_id, is_fraud)`` pairs in order; False where the store no longer holds it.

        Two round trips: the tx index tells each transaction's card and terminal, then one
        pipeline marks both. As in the reference, a transaction is held for
        ``max(card, terminal retention)`` of event time after the watermark it was counted at.
        """
        if not labels:
            return []
        found = await self._execute([("GET", self.index_key(tx_id)) for tx_id, _ in labels])
        horizon = self._watermark - self.entry_retention
        card_sha, term_sha = self._sha["card_label"], self._sha["terminal_label"]
        held: list[bool] = []
        commands: list[Command] = []
        for (tx_id, is_fraud), raw in zip(labels, found, strict=True):
            if raw is None:
                held.append(False)
                continue
            text = raw.decode() if isinstance(raw, bytes) else raw
            stamp, size, rest = text.split("|", 2)
            if float(stamp) < horizon:
                held.append(False)
                continue
            held.append(True)
            card = self.card_key(rest[: int(size)])
            term = self.terminal_key(rest[int(size) :])
            flag = "1" if is_fraud else "0"
            commands.append(("EVALSHA", card_sha, 3, card + "tl", card + "fr", card + "h",
                             tx_id, flag))  # fmt: skip
            commands.append(("EVALSHA", term_sha, 2, term + "tl", term + "fr", tx_id, flag))
        if commands:
            await self._execute(commands)
        return held

    async def record_label(self, tx_id: str, is_fraud: bool) -> bool:
        """Record what became known about ``tx_id``; False if the store no longer holds it."""
        return (await self.record_labels(((tx_id, is_fraud),)))[0]

    async def memory_keys(self) -> int:
        """How many keys the store holds (cards, terminals, tx index), by ``SCAN``."""
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix) + ":{*"
        starts = self._tag_starts
        count = 0
        async for key in self.client.scan_iter(match=pattern, count=1000):
            name = key if isinstance(key, bytes) else key.encode()
            count += name.startswith(starts)
        return count

    async def load_scripts(self) -> None:
        """Load the Lua scripts (done on first use and again after ``NOSCRIPT``)."""
        for name, source in self._sources.items():
            sha = await self.client.script_load(source)
            sha = sha.decode() if isinstance(sha, bytes) else sha
            if sha != self._sha[name]:
                raise RedisStoreError(f"{name}: the server's script digest {sha} is not ours")
        self._loaded = True

    async def _execute(self, commands: list[Command]) -> list[Any]:
        if not self._loaded:
            await self.load_scripts()
        send = self._send_direct if self._direct else self._send_pipeline
        return await self._repair(commands, await send(commands))

    async def _repair(self, commands: list[Command], replies: list[Any]) -> list[Any]:
        """Re-run the calls that met ``NOSCRIPT``; raise on any other error reply."""
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # The server lost the scripts: load them and re-run what failed, in order. A call
            # that ran already is not repeated, and each is idempotent on its tx_id anyway.
            await self.load_scripts()
            send = self._send_direct if self._direct else self._send_pipeline
            again = await send([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                raise RedisStoreError(f"{commands[i][0]!r} failed: {reply}") from reply
        return replies

    async def _send_pipeline(self, commands: list[Command]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _send_direct(self, commands: list[Command]) -> list[Any]:
        pool = self.client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(_pack(commands), check_health=False)
            replies: list[Any] = []
            # One deadline for the whole batch: a deadline per reply (redis-py's default) costs
            # a timer per command, which was a tenth of the worker's time.
            async with asyncio.timeout(conn.socket_timeout):
                for _ in commands:
                    replies.append(await _read(conn))
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            await pool.release(conn)
        return replies

    def _vectors(self, txs: Sequence[Transaction], replies: list[Any]) -> list[FeatureVector]:
        vector = self._vector
        return [
            vector(tx, replies[_PER_TX * i], replies[_PER_TX * i + 1]) for i, tx in enumerate(txs)
        ]

    def _vector(self, tx: Transaction, card: Any, term: Any) -> FeatureVector:
        """Features from the scripts' replies, with the reference's arithmetic in its order."""
        k = self._n_card
        k2 = 2 * k
        n_term = self._n_term
        sep: Any = b"," if isinstance(card, bytes) else ","
        f = card.split(sep)
        amount = float(f[1])
        t = float(f[2])
        top = float(f[5 + k2]) + float(f[6 + k2])  # the reference's cum[end]
        counts = [int(x) for x in f[5 : 5 + k]]
        sums = [
            top - float(first) if n else 0.0
            for n, first in zip(counts, f[5 + k : 5 + k2], strict=True)
        ]
        values = [amount, float(f[3]), float(f[4])]
        values += [float(n) for n in counts]
        values += [s / n if n else 0.0 for s, n in zip(sums, counts, strict=True)]
        g = term.split(sep)
        term_counts = [int(x) for x in g[1 : 1 + n_term]]
        values += [float(n) for n in term_counts]
        values += [
            int(nf) / n if n else 0.0 for nf, n in zip(g[1 + n_term :], term_counts, strict=True)
        ]
        at = self._longest_at
        previous = counts[at] - 1
        spent = sums[at] - amount
        values.append(amount / (spent / previous) if previous and spent > 0 else 1.0)
        before = f[7 + k2]
        longest = self._longest
        values.append(min(t - float(before) if before else longest, longest) / 3_600.0)
        values.append(float(f[8 + k2]))
        values.append(float(f[9 + k2]))
        values.append(math.log1p(amount))
        return FeatureVector(tx.tx_id, dict(zip(self.names, values, strict=True)))


async def _read(conn: Any) -> Any:
    """One reply; an error reply is returned, not raised (the caller sorts them out)."""
    try:
        return await conn.read_response(timeout=math.inf)  # the caller holds one deadline
    except ResponseError as exc:
        return exc


def _pack(commands: list[Command]) -> bytes:
    """The commands in the Redis protocol (RESP), ready to send in one write."""
    parts: list[bytes] = []
    add = parts.append
    for command in commands:
        add(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = b"%d" % arg
            add(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)
