"""The daemon: start every endpoint, serve, reload on SIGHUP, drain and stop on SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    Config,
    ConfigError,
    EndpointConfig,
    MetricsConfig,
    config_digest,
    config_from_bytes,
    read_config_file,
)
from .endpoint import Endpoint, listen_key
from .supervisor import Worker, reload_result
from .systemd import notify

if TYPE_CHECKING:
    from .metrics import AdminServer

log = logging.getLogger(__name__)

DAEMON_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
GC_ALLOCATIONS = 50_000
"""Allocations between young-generation collections (CPython's default is 700)."""


class StartupError(Exception):
    """An endpoint could not start (usually: its port is taken); nothing is left running."""


class Daemon:
    """All endpoints of one config, and the admin listener if the config has one."""

    def __init__(
        self, config: Config, config_path: str | Path | None = None, worker: Worker | None = None
    ) -> None:
        self.config = config
        self._config_path = config_path
        self._worker = worker or Worker(0, 1)
        self.endpoints = [self._endpoint(endpoint, config) for endpoint in self._served(config)]
        self.admin = self._admin(config)
        self.reloads: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._reload_pending = False
        self._background: set[asyncio.Task[object]] = set()

    def _served(self, config: Config) -> list[EndpointConfig]:
        """The endpoints this process serves: all, except unix sockets in workers after the
        first (a unix socket cannot be shared out by the kernel as a TCP port can)."""
        if self._worker.index == 0:
            return list(config.endpoints)
        return [endpoint for endpoint in config.endpoints if endpoint.bind_path is None]

    def _endpoint(self, config: EndpointConfig, whole: Config) -> Endpoint:
        return Endpoint(config, whole.user_agent, shared_port=self._worker.count > 1)

    def _admin(self, config: Config) -> AdminServer | None:
        """Each worker has its own admin listener, on the configured port plus its index."""
        if config.metrics is None:
            return None
        port = config.metrics.bind_port + self._worker.index
        return self._admin_on(config.metrics.model_copy(update={"bind_port": port}))

    def _admin_on(self, config: MetricsConfig) -> AdminServer:
        from .metrics import AdminServer  # noqa: PLC0415 - aiohttp: 12 MiB per worker, only if used

        return AdminServer(config, self, shared_port=self._worker.count > 1)

    @property
    def ready(self) -> bool:
        """Every listener is up and no shutdown has begun (``/readyz``)."""
        return not self._stopping and all(endpoint.is_serving for endpoint in self.endpoints)

    async def start(self) -> None:
        for index, endpoint in enumerate(self.endpoints):
            try:
                await endpoint.start()
            except OSError as error:
                await self.stop()
                raise StartupError(_cannot_listen(f"endpoints[{index}]", endpoint, error)) from None
        if self.admin is not None:
            try:
                await self.admin.start()
            except OSError as error:
                await self.stop()
                raise StartupError(_metrics_cannot_listen(self.admin, error)) from None

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
                self._in_background(self.reload())
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
        self._in_background(self.reload())

    def _in_background(self, coroutine: Coroutine[Any, Any, object]) -> None:
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
            except ConfigError as error:
                problems = "\n  ".join(error.problems)
                log.error("reload: config invalid, still running the previous one:\n  %s", problems)  # noqa: TRY400
                applied = False
            else:
                try:
                    applied = await self._apply(new)
                except Exception:
                    log.exception("reload: unexpected error before any change; nothing changed")
                    applied = False
            result = "ok" if applied else "failed"
            self.reloads[result] += 1
            ready = f"READY=1\nSTATUS={self._status()}"
            if self._worker.count > 1:  # the supervisor restarts a worker from what it runs
                ready += f"\n{reload_result(applied, digest)}"
            notify(ready)
            return applied

    async def _apply(self, new: Config) -> bool:
        if new.effective_workers != self.config.effective_workers:
            log.warning("reload: the number of workers changes only at the next restart")
        current = {endpoint.config.name: endpoint for endpoint in self.endpoints}
        served = self._served(new)
        started: dict[str, Endpoint] = {}
        handed_over: set[Endpoint] = set()
        try:
            # configured_as re-reads token and CA files: one unreadable since the config was
            # validated fails the reload in one line (UnreadableFile), as below
            kept = {
                config.name: current[config.name]
                for config in served
                if config.name in current
                and current[config.name].configured_as(config, new.user_agent)
            }
            retiring = [e for e in self.endpoints if e.config.name not in kept]
            for index, config in enumerate(new.endpoints):
                if config.name in kept or config not in served:
                    continue
                endpoint = self._endpoint(config, new)
                started[config.name] = endpoint
                predecessor = _predecessor(config, current.get(config.name), retiring, handed_over)
                sockets = predecessor.listening_sockets() if predecessor else None
                try:
                    await endpoint.start(sockets)
                except OSError as error:
                    for sock in sockets or ():
                        sock.close()
                    raise _ReloadFailed(_cannot_listen(f"endpoints[{index}]", endpoint, error))  # noqa: B904
                if predecessor is not None:
                    handed_over.add(predecessor)
            admin = await self._next_admin(new)  # last: nothing that can fail comes after it
        except Exception as error:  # noqa: BLE001 - whatever failed, roll back what started
            log.error("reload: %s; still running the previous config", error)  # noqa: TRY400
            for endpoint in started.values():
                # an inherited socket file is still the old endpoint's; a new path's is not
                endpoint.stop_accepting(keep_socket_file=endpoint.inherited)
                await endpoint.stop(0)
            return False
        for endpoint in started.values():
            if endpoint.inherited:
                try:
                    endpoint.apply_socket_permissions()
                except OSError as error:
                    log.error(  # noqa: TRY400
                        "reload: %s: cannot set socket-mode/socket-owner, kept the old ones: %s",
                        endpoint.config.name,
                        error,
                    )
        grace = new.shutdown_timeout / 1000
        for endpoint in retiring:
            endpoint.stop_accepting(keep_socket_file=endpoint in handed_over)
            self._in_background(endpoint.stop(grace))
        self.endpoints = [kept.get(c.name) or started[c.name] for c in served]
        await self._switch_admin(admin)
        self.config = new
        log.info(
            "reloaded: %d endpoint(s) unchanged, %d started, %d stopped",
            len(kept),
            len(started),
            len(retiring),
        )
        return True

    async def _next_admin(self, new: Config) -> AdminServer | None:
        """The admin listener for ``new``: the running one if its config is the same, else a new
        one, started while the old one still serves, as a new endpoint is; if it cannot listen,
        ``_ReloadFailed`` and the old one serves on.

        Only an old listener on the same port (the address changed) is stopped first, and only
        when the port is in use, since it may be what is in the way; it listens again if the new
        one still cannot. The same settings count as unchanged only while a listener runs: if
        that last step failed too, metrics are off, and the next reload must try again.
        """
        if new.metrics == self.config.metrics and (new.metrics is None or self.admin is not None):
            return self.admin
        admin = self._admin(new)
        if admin is None:
            return None
        try:
            await admin.start()
        except OSError as error:
            old = self.admin
            if (
                old is None
                or error.errno != errno.EADDRINUSE  # something else than a port in use
                or admin.config.bind_port not in {port for _, port in old.addresses}
            ):
                raise _ReloadFailed(_metrics_cannot_listen(admin, error)) from None
        else:
            return admin
        port = admin.config.bind_port
        await old.stop()
        self.admin = None
        admin = self._admin_on(admin.config)
        try:
            await admin.start()
        except OSError as error:
            problem = _metrics_cannot_listen(admin, error)
            self.admin = self._admin_on(old.config.model_copy(update={"bind_port": port}))
            try:
                await self.admin.start()
            except OSError as again:
                self.admin = None
                problem += f"; and the previous one cannot listen again: {again}; metrics are off"
            raise _ReloadFailed(problem) from None
        return admin

    async def _switch_admin(self, admin: AdminServer | None) -> None:
        """Commit ``_next_admin``'s choice: the old listener, if it was not kept, stops."""
        if admin is not self.admin and self.admin is not None:
            await self.admin.stop()
        self.admin = admin

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
        timeout = self.config.shutdown_timeout / 1000
        await asyncio.gather(
            *(endpoint.stop(timeout) for endpoint in self.endpoints), *self._background
        )


class _ReloadFailed(Exception):
    pass


def _cannot_listen(where: str, endpoint: Endpoint, error: OSError) -> str:
    return (
        f"{where} ({endpoint.config.name}): cannot listen on {endpoint.config.listen_description}:"
        f" {error.strerror or error}"
    )


def _metrics_cannot_listen(admin: AdminServer, error: OSError) -> str:
    where = f"{admin.config.bind_address}:{admin.config.bind_port}"
    return f"metrics: cannot listen on {where}: {error.strerror or error}"


def _predecessor(
    config: EndpointConfig,
    same_name: Endpoint | None,
    retiring: list[Endpoint],
    taken: set[Endpoint],
) -> Endpoint | None:
    """The retiring endpoint whose listening socket ``config`` can take over, if any.

    The same name on the same address first; otherwise any retiring endpoint on the same fixed
    address (a port of 0 means "any free port", which only the same name can carry over).
    """
    key = listen_key(config)
    if same_name is not None and same_name in retiring and same_name.listen_key == key:
        return same_name
    if isinstance(key, tuple) and not key[1]:
        return None
    return next((e for e in retiring if e.listen_key == key and e not in taken), None)
