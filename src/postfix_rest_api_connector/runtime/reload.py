"""Applying a new config to a running daemon (SIGHUP): all of it, or none of it.

Endpoints are matched by name. One whose config, user agent, secrets (token, headers, basic
password) and certificates (CA, client) are equal, files re-read, is kept as it is, with its
connections. For the others, the new endpoints
start first; a changed one on the same address takes over duplicates of its predecessor's
listening sockets (``listeners.duplicates``), so no connection attempt is refused. One whose
name systemd passed a socket for gets duplicates of that socket, which the daemon holds until it
exits (``listeners.SystemdSockets``): the same queue, whatever its config says. Only when every
new listener listens are the old ones closed; their connections answer what they received, then
go on with the endpoint that took the old one's socket if it has the same mode, or close. If one
cannot listen, the new ones are closed and nothing changes.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config, EndpointConfig, MetricsConfig
from . import listeners
from .endpoint import Endpoint, listen_key

if TYPE_CHECKING:
    from ..admin.server import AdminServer
    from ..cache.shared import SharedTier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Serving:
    """What a daemon runs: the config, its endpoints, its admin listener."""

    config: Config
    endpoints: list[Endpoint]
    admin: AdminServer | None


class Builder(Protocol):
    """How the daemon makes the parts of a config (this worker's share of them)."""

    def served(self, config: Config) -> list[EndpointConfig]: ...

    def endpoint(self, config: EndpointConfig, whole: Config) -> Endpoint: ...

    def systemd_sockets(self, config: EndpointConfig) -> list[socket.socket] | None:
        """Duplicates of the sockets systemd passed for this endpoint, if any."""
        ...

    def shared_tier(self, config: Config) -> SharedTier | None: ...

    def admin_for(self, config: Config) -> AdminServer | None: ...

    def admin_on(self, config: MetricsConfig) -> AdminServer: ...

    def in_background(self, coroutine: Coroutine[Any, Any, object]) -> None: ...


class ReloadFailed(Exception):
    """The new config could not be applied; the message says why, in one line."""


async def apply(current: Serving, new: Config, build: Builder) -> Serving:
    """``new`` running, or ``ReloadFailed`` (logged) with ``current`` still running untouched,
    but for a metrics listener that gave way and had to listen anew (``AdminFallback``)."""
    if new.effective_workers != current.config.effective_workers:
        log.warning("reload: the number of workers changes only at the next restart")
    running = {endpoint.config.name: endpoint for endpoint in current.endpoints}
    served = build.served(new)
    started: dict[str, Endpoint] = {}
    handed_over: dict[Endpoint, Endpoint] = {}
    """A retiring endpoint whose listening sockets a new one took: its successor."""
    try:
        # configured_as re-reads secrets and certificates: one unreadable since the config was
        # validated fails the reload in one line (UnreadableFile), as below
        kept = {
            config.name: running[config.name]
            for config in served
            if config.name in running
            and running[config.name].configured_as(config, new.user_agent, build.shared_tier(new))
        }
        retiring = [e for e in current.endpoints if e.config.name not in kept]
        for index, config in enumerate(new.endpoints):
            if config.name not in kept and config in served:
                endpoint = build.endpoint(config, new)
                started[config.name] = endpoint
                passed = build.systemd_sockets(config)
                await _start_replacing(
                    endpoint, index, running, retiring, handed_over, passed=passed
                )
        admin = await _next_admin(current, new, build)  # last: nothing that can fail comes after
    except Exception as error:
        log.error("reload: %s; still running the previous config", error)  # noqa: TRY400
        for endpoint in started.values():
            # an inherited socket file is still the old endpoint's; a new path's is not
            endpoint.stop_accepting(keep_socket_file=endpoint.inherited)
            await endpoint.stop(0)
        if isinstance(error, ReloadFailed):
            raise
        raise ReloadFailed(str(error)) from error
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
        endpoint.retire(handed_over.get(endpoint))
        build.in_background(endpoint.stop(grace))
        if endpoint.from_systemd and endpoint.config.name not in started:
            log.warning(
                "reload: endpoint %s is gone; the socket systemd passed for it stays open, its"
                " connections waiting, until an endpoint of that name comes back",
                endpoint.config.name,
            )
    if admin is not current.admin and current.admin is not None:
        await current.admin.stop()
    log.info(
        "reloaded: %d endpoint(s) unchanged, %d started, %d stopped",
        len(kept),
        len(started),
        len(retiring),
    )
    return Serving(new, [kept.get(c.name) or started[c.name] for c in served], admin)


async def _start_replacing(
    endpoint: Endpoint,
    index: int,
    running: dict[str, Endpoint],
    retiring: list[Endpoint],
    handed_over: dict[Endpoint, Endpoint],
    *,
    passed: list[socket.socket] | None,
) -> None:
    """Start ``endpoint`` on the sockets systemd ``passed`` for it, or on its predecessor's if
    one retires from its address."""
    config = endpoint.config
    predecessor = None
    if passed is None:
        predecessor = _predecessor(config, running.get(config.name), retiring, handed_over)
    sockets = passed or (predecessor.listening_sockets() if predecessor else None)
    try:
        await endpoint.start(sockets, from_systemd=passed is not None)
    except OSError as error:
        listeners.close_all(sockets or ())
        raise ReloadFailed(cannot_listen(f"endpoints[{index}]", endpoint, error)) from None
    if predecessor is not None:
        handed_over[predecessor] = endpoint


class AdminFallback(ReloadFailed):
    """The reload failed after the old metrics listener gave way; ``admin`` is what listens now
    (the old settings again, or ``None``: metrics are off until a reload brings them back)."""

    def __init__(self, message: str, admin: AdminServer | None) -> None:
        super().__init__(message)
        self.admin = admin


async def _next_admin(current: Serving, new: Config, build: Builder) -> AdminServer | None:
    """The admin listener for ``new``: the running one if its config is the same, else a new
    one, started while the old one still serves, as a new endpoint is; if it cannot listen,
    ``ReloadFailed`` and the old one serves on.

    Only an old listener on the same port (the address changed) is stopped first, and only when
    the port is in use, since it may be what is in the way; it listens again if the new one
    still cannot. The same settings count as unchanged only while a listener runs: if that last
    step failed too, metrics are off, and the next reload must try again.
    """
    old = current.admin
    if new.metrics == current.config.metrics and (new.metrics is None or old is not None):
        return old
    admin = build.admin_for(new)
    if admin is None:
        return None
    try:
        await admin.start()
    except OSError as error:
        if (
            old is None
            or error.errno != errno.EADDRINUSE  # something else than a port in use
            or admin.config.bind_port not in {port for _, port in old.addresses}
        ):
            raise ReloadFailed(metrics_cannot_listen(admin, error)) from None
    else:
        return admin
    port = admin.config.bind_port
    await old.stop()
    admin = build.admin_on(admin.config)
    try:
        await admin.start()
    except OSError as error:
        problem = metrics_cannot_listen(admin, error)
        previous = build.admin_on(old.config.model_copy(update={"bind_port": port}))
        try:
            await previous.start()
        except OSError as again:
            problem += f"; and the previous one cannot listen again: {again}; metrics are off"
            raise AdminFallback(problem, None) from None
        raise AdminFallback(problem, previous) from None
    return admin


def cannot_listen(where: str, endpoint: Endpoint, error: OSError) -> str:
    return (
        f"{where} ({endpoint.config.name}): cannot listen on {endpoint.config.listen_description}:"
        f" {error.strerror or error}"
    )


def metrics_cannot_listen(admin: AdminServer, error: OSError) -> str:
    where = f"{admin.config.bind_address}:{admin.config.bind_port}"
    return f"metrics: cannot listen on {where}: {error.strerror or error}"


def _predecessor(
    config: EndpointConfig,
    same_name: Endpoint | None,
    retiring: list[Endpoint],
    taken: dict[Endpoint, Endpoint],
) -> Endpoint | None:
    """The retiring endpoint whose listening socket ``config`` can take over, if any.

    The same name on the same address first; otherwise any retiring endpoint on the same fixed
    address (a port of 0 means "any free port", which only the same name can carry over). Never
    one on a socket from systemd, which listens where its socket unit says, not its config.
    """
    key = listen_key(config)
    candidates = [e for e in retiring if not e.from_systemd]
    if same_name is not None and same_name in candidates and same_name.listen_key == key:
        return same_name
    if isinstance(key, tuple) and not key[1]:
        return None
    return next((e for e in candidates if e.listen_key == key and e not in taken), None)
