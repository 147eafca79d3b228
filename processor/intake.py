"""Events waiting to be scored, gathered while the batch before them is being scored.

Faust's ``take_events`` stops adding to its buffer while the agent works on the batch it gave
out, so a worker alternated between taking events in (Faust's per-event work) and scoring them
(mostly waiting for Redis): neither overlapped the other. With an :class:`Intake` the agent's
stream loop puts events in while a separate task takes batches out, so the next batch is taken
in while Redis counts the current one.

A batch is taken as soon as ``size`` events wait, or ``wait`` seconds after the first of them
arrived in an idle intake; at most ``2 * size`` events wait, beyond that :meth:`put` waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

__all__ = ["Intake"]

T = TypeVar("T")


class Intake(Generic[T]):
    """A bounded buffer of events, put in one at a time and taken out in batches."""

    def __init__(self, size: int, wait: float) -> None:
        if size < 1 or wait < 0:
            raise ValueError("size must be at least 1 and wait not negative")
        self.size = size
        self.wait = wait
        self._items: list[T] = []
        self._arrived = asyncio.Event()  # something waits
        self._full = asyncio.Event()  # a whole batch waits
        self._room = asyncio.Event()  # fewer than 2 * size wait
        self._room.set()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Add ``item``; waits while two whole batches are waiting already."""
        if not self._room.is_set():
            await self._room.wait()
        items = self._items
        items.append(item)
        n = len(items)
        if n == 1:
            self._arrived.set()
        if n >= self.size:
            self._full.set()
            if n >= 2 * self.size:
                self._room.clear()

    async def take(self) -> list[T]:
        """The next batch: up to ``size`` items, waiting for the first and then at most
        ``wait`` seconds for the batch to fill."""
        await self._arrived.wait()
        if not self._full.is_set() and self.wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.wait):
                    await self._full.wait()
        items = self._items
        batch = items[: self.size]
        del items[: self.size]
        n = len(items)
        if not n:
            self._arrived.clear()
        if n < self.size:
            self._full.clear()
        if n < 2 * self.size:
            self._room.set()
        return batch
