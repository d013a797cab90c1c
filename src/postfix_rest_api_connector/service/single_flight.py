"""Single-flight: concurrent asks for one key share the first asker's work.

The first asker does the work inline, with no task or extra coroutine of its own, and publishes
the result; a future is made only when a second asker comes, which is rare on the common path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    __slots__ = ("_flights",)

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V] | None] = {}
        """The keys being worked on; the future exists once a second asker waits for one."""

    def join(self, key: K) -> asyncio.Future[V] | None:
        """``None``: the caller leads, must do the work and then ``finish``. Otherwise the
        leader's future; await it shielded (``asyncio.shield``), so that a waiter that is
        cancelled does not cancel the others' result."""
        if key not in self._flights:
            self._flights[key] = None
            return None
        shared = self._flights[key]
        if shared is None:
            shared = self._flights[key] = asyncio.get_running_loop().create_future()
        return shared

    def finish(self, key: K, result: V) -> None:
        """The leader's result, for everyone who joined meanwhile; the next ask leads anew."""
        waiting = self._flights.pop(key)
        if waiting is not None:
            waiting.set_result(result)
