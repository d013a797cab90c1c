"""The daemon: start every endpoint, wait for a signal, drain and stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable

from .config import Config
from .endpoint import Endpoint
from .systemd import notify

log = logging.getLogger(__name__)


class StartupError(Exception):
    """An endpoint could not start (usually: its port is taken); nothing is left running."""


class Daemon:
    """All endpoints of one config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.endpoints = [Endpoint(endpoint, config.user_agent) for endpoint in config.endpoints]
        self._stop = asyncio.Event()

    async def start(self) -> None:
        for index, endpoint in enumerate(self.endpoints):
            try:
                await endpoint.start()
            except OSError as error:
                await self.stop()
                where = endpoint.config.listen_description
                raise StartupError(
                    f"endpoints[{index}] ({endpoint.config.name}): cannot listen on {where}:"
                    f" {error.strerror or error}"
                ) from None

    async def run(self, announce: Callable[[Daemon], None] | None = None) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain; a second signal exits at once.

        The handlers are in place before the first listener opens, so a signal during start-up
        still drains instead of killing the process. ``announce`` runs once all are listening.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.start()
            if announce is not None:
                announce(self)
            gc.collect()
            gc.freeze()  # start-up objects live forever: keep them out of every later collection
            notify(f"READY=1\nSTATUS=serving {len(self.endpoints)} endpoint(s)")
            await self._stop.wait()
            for endpoint in self.endpoints:
                endpoint.stop_accepting()
            notify("STOPPING=1")
            log.info("stopping: answering requests already received, then closing")
            await self.stop()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("stopped")

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning("second %s: exiting without waiting", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("received %s", signal.Signals(signum).name)
        self._stop.set()

    async def stop(self) -> None:
        """Close every listener at once, then drain each endpoint's connections."""
        for endpoint in self.endpoints:
            endpoint.stop_accepting()
        timeout = self.config.shutdown_timeout / 1000
        await asyncio.gather(*(endpoint.stop(timeout) for endpoint in self.endpoints))
