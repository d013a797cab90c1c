"""The open connections of one listener, so that shutdown and reload can drain them."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Drainable(Protocol):
    def drain(self) -> None: ...

    def abort(self) -> None: ...


class ConnectionTracker:
    """The open connections of one listener, so that shutdown can drain them."""

    def __init__(self) -> None:
        self.open: set[Drainable] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def add(self, connection: Drainable) -> None:
        self.open.add(connection)
        self._all_closed.clear()

    def remove(self, connection: Drainable) -> None:
        self.open.discard(connection)
        if not self.open:
            self._all_closed.set()

    async def wait_all_closed(self) -> None:
        await self._all_closed.wait()

    async def drain(self, grace: float) -> None:
        """Answer what each connection has received, then close; abort the rest after ``grace``."""
        if not self.open:
            return
        for connection in list(self.open):
            connection.drain()
        try:
            await asyncio.wait_for(self._all_closed.wait(), grace)
        except TimeoutError:
            log.warning("%d connection(s) still busy at the shutdown deadline", len(self.open))
            for connection in list(self.open):
                connection.abort()
