"""The optional admin listener: Prometheus ``/metrics``, ``/healthz`` (alive), ``/readyz``."""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..config import MetricsConfig
from ..runtime import listeners
from .view import Alone

log = logging.getLogger(__name__)


class AdminServer:
    """The HTTP listener of the ``metrics`` config section, showing ``view``: one process's
    figures, or (``shared_port``: every worker listens on the port) all workers' merged."""

    def __init__(self, config: MetricsConfig, view: Alone, *, shared_port: bool = False) -> None:
        self.config = config
        self._shared_port = shared_port
        self._view = view
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on ``sockets``, or bind new ones; an ``OSError`` reaches the caller."""
        await self._view.start()  # the first listener only; the view outlives it
        if sockets is None:
            sockets = listeners.bind_tcp(
                self.config.bind_address, self.config.bind_port, shared=self._shared_port
            )
        await self._runner.setup()
        try:
            for sock in sockets:
                await web.SockSite(self._runner, sock).start()
        except OSError:
            listeners.close_all(sockets)
            await self._runner.cleanup()
            raise
        where = ", ".join(f"{host}:{port}" for host, port in self.addresses)
        log.info("metrics, healthz and readyz on http://%s", where)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(address[0], address[1]) for address in self._runner.addresses]

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await self._view.metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        problems = await self._view.problems()
        if not problems:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {'; '.join(problems)}\n")
