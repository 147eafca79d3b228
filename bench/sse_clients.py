"""One process of SSE clients for :mod:`bench.sse`: raw asyncio sockets, a few byte scans a read.

``python -m bench.sse_clients --port P --clients N --partitions K --out PATH`` (token in
``BENCH_SSE_TOKEN``) opens N streams on ``GET /v1/decisions/stream``, prints ``ready`` once
every one has its ``retry:`` line (the server has subscribed it), then waits for ``expect <n>`` on
stdin, reads until every client has had n events (delivered or counted in a gap) or a timeout,
writes ``PATH.json`` (tallies) and ``PATH.npz`` (per delivered event: its ``seq`` and arrival
time) and prints ``done``.

The client side must cost little next to the API on a two-core machine, so only client 0 of a
process (the reference) parses every event; it checks that each partition's events come in
production order (``seq`` rising, partition ``seq % K``) and its sequence is the order the API
streams in. Every other client counts the events of each read and reads the ``seq`` of the last
one only: the read's events are then the run of the reference sequence ending there. A read that
does not continue exactly where the client's previous one ended is a discontinuity (expected
only after a gap); a read with a gap in it is parsed in full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import orjson

FIELDS_PREFIX = "bench_"
STREAM = "/v1/decisions/stream"
_GAP = re.compile(rb'event: gap\r?\ndata: \{"missed":(\d+|null)')
_DRAIN_S = 45.0


_SEQ = re.compile(rb'"bench_seq":(\d+)')
_LAST_SEQ = b'"bench_seq":'
_EVENT_LINE = b"event: decision\n"


class Tally:
    """What the process's clients received, in flat arrays: one row per read, not per event.

    A row is (client, arrival time, number of events, ``seq`` of the last); the reference client
    and reads with a gap in them get a row per event.
    """

    def __init__(self) -> None:
        self.by: array[int] = array("I")
        self.at: array[float] = array("d")
        self.count: array[int] = array("I")
        self.last: array[int] = array("q")

    def record(self, client: int, now: float, count: int, last: int) -> None:
        self.by.append(client)
        self.at.append(now)
        self.count.append(count)
        self.last.append(last)

    def events(self, partitions: int) -> dict[str, Any]:
        """Per delivered event its seq and arrival time, and the order checks' counts."""
        by = np.frombuffer(self.by, np.uint32)
        at = np.frombuffer(self.at)
        count = np.frombuffer(self.count, np.uint32).astype(np.int64)
        last = np.frombuffer(self.last, np.int64)
        reference = last[by == 0]  # client 0 has a row per event, in arrival order
        end = _positions(reference, last)
        start = end - count + 1
        known = end >= 0
        discontinuities = 0
        for client in np.unique(by):
            mine = np.flatnonzero((by == client) & known)
            discontinuities += int(np.sum(start[mine][1:] != end[mine][:-1] + 1))
            discontinuities += int(len(mine) > 0 and start[mine[0]] != 0)
        rows = np.flatnonzero(known)
        n = count[rows]
        first_of_row = np.repeat(np.cumsum(n) - n, n)
        index = np.arange(int(n.sum())) - first_of_row + np.repeat(start[rows], n)
        return {
            "seq": reference[index],
            "at": np.repeat(at[rows], n),
            "unresolved": int(count[~known].sum()),
            "discontinuities": discontinuities,
            "reference_out_of_order": _out_of_order(reference, partitions),
        }


def _positions(reference: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Where each of ``seqs`` stands in ``reference`` (-1 when it is not there)."""
    order = np.argsort(reference, kind="stable")
    ranked = reference[order]
    at = np.clip(np.searchsorted(ranked, seqs), 0, max(0, len(ranked) - 1))
    found = (ranked[at] == seqs) if len(ranked) else np.zeros(len(seqs), bool)
    return np.where(found, order[at] if len(ranked) else -1, -1)


def _out_of_order(seqs: np.ndarray, partitions: int) -> int:
    """Events that do not come after their partition's previous one."""
    faults = 0
    for p in range(partitions):
        mine = seqs[seqs % partitions == p]
        faults += int(np.sum(np.diff(mine) <= 0))
    return faults


class SseClient(asyncio.Protocol):
    """One stream: a row per read for the tally (client 0: a row per event); counts gaps."""

    def __init__(
        self, index: int, request: bytes, tally: Tally, opened: asyncio.Future[None]
    ) -> None:
        self.index = index
        self.request = request
        self.tally = tally
        self.opened = opened
        self.buf = b""
        self.received = self.missed = self.gaps = 0
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the stream opened: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            if buf.startswith(b"HTTP/1.1 ") and not buf.startswith(b"HTTP/1.1 200"):
                self._refused(buf)
            return
        block, self.buf = buf[:cut], buf[cut + 2 :]
        now = time.time()
        if not self.opened.done():
            if not block.startswith(b"HTTP/1.1 200"):
                self._refused(block)
                return
            if b"retry:" in block:
                self.opened.set_result(None)
        if b"event: gap" in block:
            for missed in _GAP.findall(block):
                self.gaps += 1
                self.missed += int(missed) if missed != b"null" else 0
            self._each(block, now)
        elif self.index == 0:
            self._each(block, now)
        else:
            count = block.count(_EVENT_LINE)
            if count:
                at = block.rindex(_LAST_SEQ) + len(_LAST_SEQ)
                last = int(block[at : block.index(b",", at)])
                self.tally.record(self.index, now, count, last)
                self.received += count

    def _each(self, block: bytes, now: float) -> None:
        for seq in _SEQ.findall(block):
            self.tally.record(self.index, now, 1, int(seq))
            self.received += 1

    def _refused(self, head: bytes) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"refused: {head[:300]!r}"))


async def open_clients(port: int, count: int, token: str, tally: Tally) -> list[SseClient]:
    """``count`` subscribed streams, opened 50 at a time (the server's accept queue stays short)."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def open_one(index: int) -> SseClient:
        opened: asyncio.Future[None] = loop.create_future()
        _, client = await loop.create_connection(
            lambda: SseClient(index, request, tally, opened), "127.0.0.1", port
        )
        await asyncio.wait_for(opened, 60.0)
        return client

    clients: list[SseClient] = []
    for start in range(0, count, 50):
        batch = range(start, min(start + 50, count))
        clients += await asyncio.gather(*(open_one(i) for i in batch))
    return clients


async def serve(port: int, count: int, partitions: int, out: str, token: str) -> None:
    """Open, report ready, take the expected count, drain, write the tallies and lags."""
    tally = Tally()
    clients = await open_clients(port, count, token, tally)
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    expected = int(line.split()[1])
    deadline = time.monotonic() + _DRAIN_S
    while time.monotonic() < deadline and any(
        c.received + c.missed < expected and not c.closed for c in clients
    ):
        await asyncio.sleep(0.1)
    cpu_seconds = time.process_time()  # before the tallies are worked out
    events = tally.events(partitions)
    summary = {
        "clients": len(clients),
        "received": sum(c.received for c in clients),
        "missed": sum(c.missed for c in clients),
        "gaps": sum(c.gaps for c in clients),
        "unresolved": events["unresolved"],
        "discontinuities": events["discontinuities"],
        "reference_out_of_order": events["reference_out_of_order"],
        "complete": sum(c.received + c.missed >= expected for c in clients),
        "closed": sum(c.closed for c in clients),
        "cpu_seconds": round(cpu_seconds, 2),
    }
    np.savez(out + ".npz", seq=events["seq"], at=events["at"])
    with open(out + ".json", "wb") as f:
        f.write(orjson.dumps(summary))
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    print("done", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_clients")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--out", required=True, help="path prefix of the .json and .npz files")
    args = parser.parse_args(argv)
    token = os.environ["BENCH_SSE_TOKEN"]
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.port, args.clients, args.partitions, args.out, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
