"""The optional admin listener: Prometheus ``/metrics``, ``/healthz`` (alive), ``/readyz``."""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)

from ..config import MetricsConfig
from ..runtime import listeners
from .metrics import ConnectorCollector, Observed

log = logging.getLogger(__name__)


class AdminServer:
    """The HTTP listener of the ``metrics`` config section."""

    def __init__(
        self, config: MetricsConfig, daemon: Observed, *, shared_port: bool = False
    ) -> None:
        self.config = config
        self._shared_port = shared_port
        self._daemon = daemon
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(ConnectorCollector(daemon))
        ProcessCollector(registry=self._registry)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on ``sockets``, or bind new ones; an ``OSError`` reaches the caller."""
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
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._daemon.ready:
            return web.Response(text="ready\n")
        down = [e.config.name for e in self._daemon.endpoints if not e.is_serving]
        reason = f"not listening: {', '.join(down)}" if down else "stopping"
        return web.Response(status=503, text=f"not ready: {reason}\n")
