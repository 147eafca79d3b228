"""Faust's Kafka transport with its message hand-off made cheaper.

faust-streaming's consumer hands every fetched message to the streams with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: two new tasks and an
``asyncio.wait`` per message, so that a rebalance that suspends the flow interrupts a hand-off
blocked on a full stream buffer. That was about a fifth of the worker's CPU per payment
(``bench/worker.md``). :class:`Consumer` awaits the hand-off directly and checks the flow before
each message instead: a message fetched while the flow is suspended is not handed off, as Faust
drops it; the rebalance's seek to the committed offsets fetches it again for whoever owns its
partition next.

A hand-off already blocked on a full buffer when a rebalance begins completes once the agent has
made room, possibly after the rebalance. The streams skip such a message of the old generation,
and the loop then leaves the read offset where the rebalance's seek put it: advancing it to the
stale message's offset would make the loop drop the re-fetched messages below it as read
already, and their partition would stall (never decided, its commits stuck) until the next
rebalance. Faust's own loop records the read offset before the seek, so it never had to.

:class:`App` is ``faust.App`` with this transport for consuming; producing is Faust's own.
The loop below is faust-streaming 0.15's ``Consumer._drain_messages`` (BSD-3-Clause, Robinhood
Markets and contributors) with those changes; ``tests/unit/processor/test_transport.py``
fails when the upstream loop changes, so an upgrade re-reads it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TransportT
from mode import ServiceT

__all__ = ["App", "Consumer", "Transport"]


class Consumer(faust_kafka.Consumer):
    """Faust's aiokafka consumer, handing each message to the streams without extra tasks."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # type: ignore[attr-defined]
        flow_suspended = self.suspend_flow.is_set
        app = self.app

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                # getmany may return at once many times in a row: let the loop run.
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if not flow_suspended():  # the change: awaited directly
                                await callback(message)
                                if message.generation_id != app.consumer_generation_id:
                                    continue  # handed off across a rebalance: see above
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(faust_kafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer


class App(faust.App):
    """``faust.App`` consuming through :class:`Transport`."""

    def _new_transport(self) -> TransportT:
        transport: Any = Transport(self.conf.broker_consumer, self)
        return transport  # type: ignore[no-any-return]
