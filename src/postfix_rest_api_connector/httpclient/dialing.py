"""Reaching a host: its addresses raced in the resolver's order (happy eyeballs, simply)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from .native_connection import PooledConnection

FALLBACK_DELAY = 0.3
"""Seconds before the next address is tried alongside (hyper waits 300 ms too)."""

AddressInfo = tuple[Any, Any, Any, Any, Any]
"""One ``getaddrinfo`` entry: family, type, protocol, canonical name, address."""


async def first_to_connect(
    loop: asyncio.AbstractEventLoop,
    addresses: Sequence[AddressInfo],
    new_connection: Callable[[], PooledConnection],
) -> PooledConnection:
    """RFC 8305 section 5, simply: the addresses in the resolver's order, each started
    ``FALLBACK_DELAY`` after the one before or as soon as it fails, none cut short; the first
    connection made wins and any other is closed."""
    attempts: set[asyncio.Task[PooledConnection]] = set()
    waiting = list(addresses)
    error: BaseException = OSError("no address could be reached")
    try:
        while True:
            if waiting:
                family, _, _, _, address = waiting.pop(0)
                attempts.add(
                    loop.create_task(
                        _connect_to(loop, new_connection, family, address[0], address[1])
                    )
                )
            done, attempts = await asyncio.wait(
                attempts,
                timeout=FALLBACK_DELAY if waiting else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            connected = [attempt.result() for attempt in done if attempt.exception() is None]
            for attempt in done:
                error = attempt.exception() or error
            for extra in connected[1:]:
                extra.close()  # two made it in the same round: one is enough
            if connected:
                return connected[0]
            if not attempts and not waiting:
                raise error
    finally:
        for attempt in attempts:
            attempt.cancel()
            attempt.add_done_callback(_close_if_connected)


async def _connect_to(
    loop: asyncio.AbstractEventLoop,
    new_connection: Callable[[], PooledConnection],
    family: int,
    host: Any,
    port: Any,
) -> PooledConnection:
    _, connection = await loop.create_connection(new_connection, host, port, family=family)
    return connection


def _close_if_connected(attempt: asyncio.Task[PooledConnection]) -> None:
    """A losing attempt that connected all the same is closed, never leaked."""
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()
