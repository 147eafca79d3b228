"""The ceiling of a consume-and-produce loop: plain aiokafka, no processing, its own process.

``bench_ceiling`` runs ``python -m bench.ceiling`` over a pre-loaded topic: one consumer in a
group, batches as the worker takes them, each record's value sent on to an output topic (padded
to a given size, if asked), offsets committed every second after a flush, as Faust does.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.probes import APPEND_TIME, cpu_seconds, rate_between, read_all, wait_for_count
from tests.integration.harness import ROOT
from tests.services.kafka import create_topics

if TYPE_CHECKING:
    from bench.worker import Bench

__all__ = ["bench_ceiling", "ceiling_loop"]


async def ceiling_loop(
    bootstrap: str,
    source: str,
    sink: str,
    group: str,
    batch: int,
    wait_ms: int,
    count: int,
    size: int = 0,
) -> None:
    """What aiokafka alone does: consume ``source`` in a group and send each value to ``sink``."""
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    done, committed = 0, time.monotonic()
    try:
        while done < count:
            for messages in (
                await consumer.getmany(timeout_ms=wait_ms, max_records=batch)
            ).values():
                for m in messages:
                    value = m.value + b" " * (size - len(m.value)) if size else m.value
                    await producer.send(sink, value, key=m.key)
                done += len(messages)
            if time.monotonic() - committed >= 1.0:  # as Faust: commit what was handed over
                await producer.flush()
                await consumer.commit()
                committed = time.monotonic()
        await producer.flush()
        await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


async def bench_ceiling(
    bench: Bench, source: str, n: int, batch: int, wait_ms: int, size: int = 0
) -> dict[str, Any]:
    """The consume-and-produce loop in its own process over the pre-loaded ``source`` topic;
    with ``size``, each value is padded to that many bytes (JSON allows trailing blanks)."""
    sink = f"{source}.ceiling-{size}"
    await create_topics(bench.bootstrap, {sink: 4}, config=APPEND_TIME)
    argv = [
        sys.executable,
        "-m",
        "bench.ceiling",
        bench.bootstrap,
        source,
        sink,
        f"{source}.ceiling-{size}-group",
        str(batch),
        str(wait_ms),
        str(n),
        str(size),
    ]
    log = (bench.work / f"ceiling-{size}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    started = time.time()
    try:
        await wait_for_count(bench.bootstrap, sink, 4, 1, alive=lambda: proc.poll() is None)
        cpu0 = cpu_seconds(proc.pid)
        await wait_for_count(bench.bootstrap, sink, 4, n, alive=lambda: proc.poll() is None)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    stamps = [ts for ts, _ in await read_all(bench.bootstrap, sink, 4)]
    span = (max(stamps) - min(stamps)) / 1000.0
    return {
        "value_bytes": size or "as pre-loaded",
        "records": len(stamps),
        "join_s": round(min(stamps) / 1000.0 - started, 2),
        "seconds": round(span, 2),
        "records_per_s": round((len(stamps) - 1) / span),
        "records_per_s_10_90": round(rate_between(stamps, 0.1, 0.9)),
        "cpu_share": round(cpu / span, 2),
        "cpu_us_per_record": round(cpu / len(stamps) * 1e6, 1),
    }


def main(argv: list[str]) -> int:
    """``python -m bench.ceiling BOOTSTRAP SOURCE SINK GROUP BATCH WAIT_MS COUNT SIZE``."""
    bootstrap, source, sink, group, batch, wait_ms, count, size = argv
    asyncio.run(
        ceiling_loop(
            bootstrap, source, sink, group, int(batch), int(wait_ms), int(count), int(size)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
