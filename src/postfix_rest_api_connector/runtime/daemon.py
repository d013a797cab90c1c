"""The daemon: start every endpoint, serve, reload on SIGHUP, drain and stop on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache.shared import SharedCacheSettings, SharedTier
from ..config import (
    Config,
    ConfigError,
    EndpointConfig,
    MetricsConfig,
    config_digest,
    config_from_bytes,
    read_config_file,
)
from ..config.settings import shared_cache_settings
from ..core.stats import SharedTierStats
from . import listeners
from . import reload as reloading
from .endpoint import Endpoint
from .listeners import SystemdSockets
from .notify import notify, reload_result

if TYPE_CHECKING:
    from ..admin.server import AdminServer
    from ..admin.view import Alone

log = logging.getLogger(__name__)

DAEMON_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
GC_ALLOCATIONS = 50_000
"""Allocations between young-generation collections (CPython's default is 700)."""


class StartupError(Exception):
    """An endpoint could not start (usually: its port is taken); nothing is left running."""


@dataclass(frozen=True, slots=True)
class Worker:
    """Which worker this process is: index 0 also serves the unix-socket endpoints."""

    index: int
    count: int
    peers: str | None = None
    """The directory of every worker's private unix socket (named by its index), over which the
    worker that gets a scrape asks the others for their figures; ``None`` for one process."""


class Daemon:
    """All endpoints of one config, and the admin listener if the config has one."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        worker: Worker | None = None,
        systemd: SystemdSockets | None = None,
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._worker = worker or Worker(0, 1)
        self._systemd = systemd or SystemdSockets()
        """The sockets systemd passed, by endpoint name; held (not owned) until exit."""
        self._tiers: dict[SharedCacheSettings, SharedTier] = {}
        """The shared cache tier of the running config, and of a reload under way."""
        self.endpoints = [self.endpoint(endpoint, config) for endpoint in self.served(config)]
        self._view: Alone | None = None
        """What the admin listeners show; made with the first, kept while the daemon runs."""
        self.admin = self.admin_for(config)
        self.reloads: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._reload_pending = False
        self._background: set[asyncio.Task[object]] = set()

    def served(self, config: Config) -> list[EndpointConfig]:
        """The endpoints this process serves: all, except unix sockets in workers after the
        first (a unix socket cannot be shared out by the kernel as a TCP port can), unless
        systemd passed it: every worker then accepts from its one queue."""
        if self._worker.index == 0:
            return list(config.endpoints)
        return [
            endpoint
            for endpoint in config.endpoints
            if endpoint.bind_path is None or self._systemd.passes(endpoint.name)
        ]

    def systemd_sockets(self, config: EndpointConfig) -> list[socket.socket] | None:
        return self._systemd.for_endpoint(config.name)

    def endpoint(self, config: EndpointConfig, whole: Config) -> Endpoint:
        return Endpoint(
            config,
            whole.user_agent,
            shared_port=self._worker.count > 1,
            shared_tier=self.shared_tier(whole),
        )

    def shared_tier(self, config: Config) -> SharedTier | None:
        """One per process and per ``shared-cache`` settings (the password re-read)."""
        if config.shared_cache is None:
            return None
        settings = shared_cache_settings(config.shared_cache)
        tier = self._tiers.get(settings)
        if tier is None:
            tier = self._tiers[settings] = SharedTier(settings)
        return tier

    @property
    def shared_tier_stats(self) -> list[SharedTierStats]:
        return [tier.stats for tier in self._tiers.values()]

    async def _close_unused_tiers(self) -> None:
        used = {endpoint.shared_tier for endpoint in self.endpoints}
        for settings, tier in list(self._tiers.items()):
            if tier not in used:
                del self._tiers[settings]
                await tier.close()

    def admin_for(self, config: Config) -> AdminServer | None:
        """Every worker listens on the configured port; each shows all workers' figures."""
        if config.metrics is None:
            return None
        return self.admin_on(config.metrics)

    def admin_on(self, config: MetricsConfig) -> AdminServer:
        # aiohttp (12 MiB) and prometheus-client: imported only if metrics are configured
        from ..admin.server import AdminServer  # noqa: PLC0415
        from ..admin.view import Alone, Fleet  # noqa: PLC0415

        if self._view is None:
            worker = self._worker
            if worker.count > 1 and worker.peers is not None:
                self._view = Fleet(self, worker.index, worker.count, worker.peers)
            else:
                self._view = Alone(self)
        return AdminServer(config, self._view, shared_port=self._worker.count > 1)

    @property
    def ready(self) -> bool:
        """Every listener is up and no shutdown has begun (``/readyz``)."""
        return not self._stopping and all(endpoint.is_serving for endpoint in self.endpoints)

    async def start(self) -> None:
        for tier in self._tiers.values():
            tier.start()
        for index, endpoint in enumerate(self.endpoints):
            passed = self.systemd_sockets(endpoint.config)
            try:
                await endpoint.start(passed, from_systemd=passed is not None)
            except OSError as error:
                listeners.close_all(passed or ())
                await self.stop()
                where = f"endpoints[{index}]"
                raise StartupError(reloading.cannot_listen(where, endpoint, error)) from None
        if self.admin is not None:
            try:
                await self.admin.start()
            except OSError as error:
                await self.stop()
                raise StartupError(reloading.metrics_cannot_listen(self.admin, error)) from None

    async def run(self, announce: Callable[[Daemon], None] | None = None) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain; a second signal exits at once.

        The handlers are in place before the first listener opens, so a signal during start-up
        still drains instead of killing the process. ``announce`` runs once all are listening.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        # a forked worker starts with these blocked, so that none is lost before this point
        signal.pthread_sigmask(signal.SIG_UNBLOCK, DAEMON_SIGNALS)
        try:
            await self.start()
            self._started = True
            if announce is not None:
                announce(self)
            gc.collect()
            gc.freeze()  # start-up objects live forever: keep them out of every later collection
            # Requests free their objects by reference counting; a cycle collection every 700
            # allocations only costs time (measured: 5 % of CPU per request at 0 ms, tcp).
            gc.set_threshold(GC_ALLOCATIONS, 10, 10)
            notify(f"READY=1\nSTATUS={self._status()}")
            if self._reload_pending:
                self.in_background(self.reload())
            await self._stop.wait()
            self._stopping = True
            for endpoint in self.endpoints:
                endpoint.stop_accepting()
            notify("STOPPING=1")
            log.info("stopping: answering requests already received, then closing")
            await self.stop()
        finally:
            for signum in DAEMON_SIGNALS:
                loop.remove_signal_handler(signum)
        log.info("stopped")

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():
            log.warning("second %s: exiting without waiting", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("received %s", signal.Signals(signum).name)
        self._stop.set()

    def _on_sighup(self) -> None:
        if self._config_path is None:
            log.warning("received SIGHUP, but there is no config file to reload (demo)")
            return
        if not self._started:
            log.info(
                "received SIGHUP during start-up: reloading %s once started", self._config_path
            )
            self._reload_pending = True
            return
        log.info("received SIGHUP: reloading %s", self._config_path)
        self.in_background(self.reload())

    def in_background(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> bool:
        """Re-read the config file and apply it; if it is invalid, keep running as before.

        Unchanged endpoints keep their listeners and connections. Changed ones take over the old
        listening socket where the address is the same, so Postfix is never refused meanwhile;
        the old endpoint then answers what it has received and closes its connections.
        """
        async with self._reload_lock:
            if self._stopping or self._config_path is None:
                return False
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            digest: str | None = None  # of the bytes read: what the supervisor restarts from
            try:
                data = read_config_file(self._config_path)
                digest = config_digest(data)
                new = config_from_bytes(data, self._config_path)
                self._systemd.check(new)
            except ConfigError as error:
                problems = "\n  ".join(error.problems)
                log.error("reload: config invalid, still running the previous one:\n  %s", problems)  # noqa: TRY400
                applied = False
            else:
                applied = await self._apply(new)
            result = "ok" if applied else "failed"
            self.reloads[result] += 1
            ready = f"READY=1\nSTATUS={self._status()}"
            if self._worker.count > 1:  # the supervisor restarts a worker from what it runs
                ready += f"\n{reload_result(applied, digest)}"
            notify(ready)
            return applied

    async def _apply(self, new: Config) -> bool:
        current = reloading.Serving(self.config, self.endpoints, self.admin)
        try:
            serving = await reloading.apply(current, new, self)
        except reloading.AdminFallback as failed:
            self.admin = failed.admin
            serving = None
        except reloading.ReloadFailed:
            serving = None
        except Exception:
            log.exception("reload: unexpected error before any change; nothing changed")
            serving = None
        if serving is not None:
            self.config, self.endpoints, self.admin = (
                serving.config,
                serving.endpoints,
                serving.admin,
            )
        await self._close_unused_tiers()  # a new one whose endpoints did not start, or the old
        for tier in self._tiers.values():
            tier.start()
        return serving is not None

    def _status(self) -> str:
        return f"serving {len(self.endpoints)} endpoint(s)"

    async def stop(self) -> None:
        """Close every listener at once, then drain each endpoint's connections."""
        self._stopping = True
        async with self._reload_lock:  # a reload under way finishes first; later ones do nothing
            for endpoint in self.endpoints:
                endpoint.stop_accepting()
            if self.admin is not None:
                await self.admin.stop()
            if self._view is not None:
                await self._view.stop()
        timeout = self.config.shutdown_timeout / 1000
        await asyncio.gather(
            *(endpoint.stop(timeout) for endpoint in self.endpoints), *self._background
        )
        for tier in self._tiers.values():
            await tier.close()
