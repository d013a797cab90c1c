"""An aiohttp application served on 127.0.0.1, over TLS or not, that ends only once every
connection it accepted has closed.

uvloop finishes a TLS transport's close_notify exchange (or reads a client's handshake alert)
after the test is done with the connection, and a test whose event loop closed before that
saw "unclosed transport" warnings at teardown on a busy machine. uvloop's ``Server`` counts the
transports it accepted, and a ``wait_closed()`` begun before ``close()`` returns only once the
last of them is gone; leaving the context awaits that, within a deadline.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

CLOSE_DEADLINE = 10.0
"""Seconds every accepted connection has to close once the server stops."""

TLS_SHUTDOWN_TIMEOUT = 2.0
"""Seconds the server waits for a client's close_notify before it drops the connection."""


@asynccontextmanager
async def serving(
    app: web.Application, ssl_context: ssl.SSLContext | None, port: int = 0
) -> AsyncIterator[str]:
    """Yields the base URL (``https://127.0.0.1:PORT`` with ``ssl_context``); ``port`` 0 is a
    free one."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    if ssl_context is None:
        server = await loop.create_server(runner.server, "127.0.0.1", port)
    else:
        server = await loop.create_server(
            runner.server,
            "127.0.0.1",
            port,
            ssl=ssl_context,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
    bound = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{bound}"
    finally:
        every_connection_gone = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0)  # one loop turn: the wait is registered before close()
        server.close()
        await runner.cleanup()
        await asyncio.wait_for(every_connection_gone, CLOSE_DEADLINE)
