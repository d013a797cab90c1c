"""The open connections of one listener, so that shutdown and reload can drain them."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .handler import Successor

log = logging.getLogger(__name__)


class Drainable(Protocol):
    def drain(self) -> None: ...

    def hand_over(self, successor: Successor) -> None: ...

    def abort(self) -> None: ...


class ConnectionTracker:
    """The open connections of one listener, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.open: set[Drainable] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self.draining = False
        """``drain`` has begun: a connection handed over from a predecessor closes instead."""

    def add(self, connection: Drainable) -> None:
        self.open.add(connection)
        self._all_closed.clear()

    def remove(self, connection: Drainable) -> None:
        self.open.discard(connection)
        if not self.open:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        await self._all_closed.wait()

    def begin_drain(self, successor: Successor | None = None) -> None:
        """Have each connection answer what it has received, then close or go on with
        ``successor``."""
        self.draining = True
        for connection in list(self.open):
            if successor is None:
                connection.drain()
            else:
                connection.hand_over(successor)

    async def drain(self, grace: float) -> None:
        """``begin_drain`` (if not begun); abort the connections still open after ``grace``."""
        if not self.draining:
            self.begin_drain()
        if not self.open:
            return
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
        except TimeoutError:
            log.warning("%d connection(s) still busy at the shutdown deadline", len(self.open))
            for connection in list(self.open):
                connection.abort()
