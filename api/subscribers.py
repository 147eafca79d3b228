"""The live clients of the decision stream, as the buffer's fan-out sees them.

A client with no filter (the console's usual stream) is a :class:`PlainSubscriber`: it reads the
buffer's ring and holds only the number of the next record it is owed. A client with a filter (or
a cursor ahead of this replica) is a :class:`Subscriber` with a bounded queue of its own. Both
drop what overflows their bound and count it, so a slow client costs bounded memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from api.decisions import DecisionEntry, DecisionFilter

if TYPE_CHECKING:
    from api.buffer import DecisionBuffer

__all__ = ["PlainSubscriber", "Subscriber"]


class Subscriber:
    """A live client with a filter (or a cursor ahead of this replica): a bounded queue of its own.

    When the queue overflows, the pending events are dropped and counted. ``offer`` only queues:
    waking the client's task is the buffer's job, once per fan-out round, not once per event.
    """

    plain = False

    def __init__(
        self,
        wanted: DecisionFilter,
        capacity: int,
        skip_below: Mapping[int, int] | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.wanted = wanted
        self.on_drop = on_drop
        self.capacity = capacity
        # Partitions where the client's cursor is ahead of this replica (it came from a faster
        # one): live records below these offsets were already delivered.
        self.skip_below = dict(skip_below or {})
        self.pending: deque[DecisionEntry] = deque()
        self.dropped = 0
        self.noted = False  # already on the buffer's list of clients to wake
        self.wakeup = asyncio.Event()

    def offer(self, entry: DecisionEntry) -> bool:
        """Queue ``entry`` if the client wants it; True when the client now has news."""
        if not self.wanted.matches(entry):
            return False
        if self.skip_below and entry.offset < self.skip_below.get(entry.partition, -1):
            return False
        pending = self.pending
        if len(pending) >= self.capacity:
            self.dropped += len(pending)
            if self.on_drop is not None:
                self.on_drop(len(pending))
            pending.clear()
        pending.append(entry)
        return True

    async def take(self) -> tuple[int, list[DecisionEntry]]:
        """Wait for news: (events dropped since the last call, events pending now)."""
        while not self.pending and not self.dropped:
            self.wakeup.clear()
            await self.wakeup.wait()
        dropped, self.dropped = self.dropped, 0
        events = list(self.pending)
        self.pending.clear()
        return dropped, events


class PlainSubscriber:
    """A live client that wants every record: it reads the buffer's ring instead of a queue.

    What it is owed is always the newest records, so it keeps only the number of the next one;
    taking in a record costs nothing per such client, and clients woken in the same round share
    one list of entries and one joined frame. The bound is the same as a queue's: past
    ``capacity`` pending, the pending events are dropped (counted when the client next looks).
    """

    plain = True

    def __init__(
        self,
        buffer: DecisionBuffer,
        capacity: int,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.buffer = buffer
        self.wanted = DecisionFilter()
        self.capacity = capacity
        self.on_drop = on_drop
        self.next_number = buffer.added
        self.round = -1  # the fan-out round it last took in
        self.dropped = 0

    def _settle(self) -> int:
        """Apply the overflow rule to what is owed; the number of events left pending."""
        owed = self.buffer.added - self.next_number
        lost = (owed - 1) // self.capacity * self.capacity if owed > self.capacity else 0
        # Records no longer held for plain clients are lost too (not after the rule above).
        lost = max(lost, owed - self.buffer.held_for_plain)
        if lost > 0:
            self._drop(lost)
            owed -= lost
        return owed

    def _drop(self, lost: int) -> None:
        self.next_number += lost
        self.dropped += lost
        if self.on_drop is not None:
            self.on_drop(lost)

    @property
    def pending(self) -> list[DecisionEntry]:
        """The events owed now (the overflow rule applied)."""
        return self.buffer.newest(self._settle())

    async def take(self) -> tuple[int, list[DecisionEntry]]:
        """Wait for news: (events dropped since the last call, events pending now).

        At most once a round: a client that took in this round waits for the next one even if
        more has come, so a client that was slow to send does not write again at once.
        """
        buffer = self.buffer
        while not self.dropped and (
            buffer.added == self.next_number or self.round == buffer.rounds
        ):
            await buffer.next_round(has_news=buffer.added != self.next_number)
        events = buffer.newest(self._settle())
        self.next_number = buffer.added
        self.round = buffer.rounds
        dropped, self.dropped = self.dropped, 0
        return dropped, events
