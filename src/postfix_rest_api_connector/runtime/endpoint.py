"""One configured endpoint: its mode's codec and reply table wired to its service, and its
listeners."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, cast

from ..backend import RestBackend
from ..cache import open_cache
from ..cache.shared import SharedTier
from ..config import EndpointConfig
from ..config.settings import (
    backend_settings,
    cache_settings,
    connection_limits,
    decoder_limits,
    read_auth_headers,
    read_ca_file,
    read_client_identity,
    read_client_secret,
    reply_options,
    service_settings,
    uses_shared_cache,
)
from ..connection import (
    Cached,
    ConcurrentConnection,
    Connection,
    ConnectionTracker,
    ModeBinding,
    Successor,
    answering_now,
    counted,
)
from ..core.model import Outcome, Request
from ..core.stats import ApiStats
from ..protocols.modes import Call
from ..service import EndpointService
from ..service.fleet import FleetLookups
from . import listeners, unix_socket
from .listeners import ListenKey

log = logging.getLogger(__name__)

Ask = Callable[[Request], Coroutine[Any, Any, Outcome]]


def service_call(service: EndpointService, call: Call) -> tuple[Ask, Cached | None]:
    """The service's method that answers a mode's requests, and its cache's fast path if any.

    Returned as they are, with no wrapper of ours (each coroutine frame costs on the hot path):
    the connection hands them only requests of the mode's own decoder, and ``answer_now``
    answers a malformed one before any reaches them."""
    match call:
        case Call.LOOKUP:
            return cast(Ask, service.lookup), cast(Cached, service.cached)
        case Call.POLICY:
            return cast(Ask, service.check_policy), None
        case Call.LOGIN:
            return cast(Ask, service.authenticate), cast(Cached, service.cached_login)


def bind_mode(
    config: EndpointConfig, service: EndpointService, answered: Counter[type]
) -> ModeBinding:
    """The endpoint's mode, from the table of modes: its codec, its reply table, and the service
    call it names."""
    mode, limits = config.mode_spec, decoder_limits(config)
    reply = counted(mode.new_replies(reply_options(config)), answered)
    ask, cached = service_call(service, mode.call)
    return ModeBinding(
        new_decoder=lambda: mode.new_decoder(limits),
        answer_now=answering_now(reply, cached, mode.answer_itself),
        ask=ask,
        reply=reply,
        greeting=mode.greeting,
        concurrent=mode.concurrent,
        close_with_reset=mode.close_with_reset,
    )


def listen_key(config: EndpointConfig) -> ListenKey:
    """Endpoints with equal keys listen on the same socket, so a reload can hand it over."""
    return config.bind_path or listeners.tcp_key(config.bind_address, config.bind_port)


_OWN_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False}
"""We unlink the socket file ourselves, by inode (``unix_socket.remove_socket``). uvloop on
Python >= 3.13 would also unlink it whenever a listener closes, including the old listener of a
socket handed over on reload, leaving the new one without a name."""


class Endpoint:
    """A running endpoint: listeners, open connections and REST client."""

    def __init__(
        self,
        config: EndpointConfig,
        user_agent: str,
        *,
        shared_port: bool = False,
        shared_tier: SharedTier | None = None,
    ) -> None:
        self.config = config
        self.user_agent = user_agent
        self.shared_tier = shared_tier if uses_shared_cache(config) else None
        """The process's shared cache tier, if this endpoint uses it."""
        self._shared_port = shared_port
        """Other workers listen on the same TCP port (``SO_REUSEPORT``)."""
        self._auth_headers = read_auth_headers(config)
        self._ca_pem = read_ca_file(config)
        self._identity_pem = read_client_identity(config)
        self._client_secret = read_client_secret(config)
        """What a reload compares: a file rotated in place keeps its path, not its contents."""
        self._backend = RestBackend(
            backend_settings(config, user_agent, self._auth_headers, self._client_secret)
        )
        cache = open_cache(cache_settings(config))
        fleet = None
        self._unregister: Callable[[], None] | None = None
        if self.shared_tier is not None:
            fleet = FleetLookups(
                self.shared_tier,
                config.name,
                config.answer_source,
                stale_for=config.stale_if_error / 1000,
                timeout=config.request_timeout / 1000,
            )
            scope = service_settings(config).cache_scope
            self._unregister = self.shared_tier.on_invalidate(
                config.name, lambda map_name, key: cache.forget((scope, map_name, key))
            )
        self.service = EndpointService(
            config.name, self._backend, service_settings(config), cache, fleet
        )
        self.answered: Counter[type] = Counter()
        """Replies sent, by outcome type."""
        self._binding = bind_mode(config, self.service, self.answered)
        self.tracker = ConnectionTracker()
        self._limits = connection_limits(config)
        self._servers: list[asyncio.Server] = []
        self._socket_inode: int | None = None
        self.inherited = False
        """Listening on sockets handed over by the endpoint this one replaced on a reload, or
        on duplicates of those systemd passed."""
        self.from_systemd = False
        """Listening on sockets systemd passed: their file, if any, is systemd's."""

    @property
    def api_stats(self) -> ApiStats:
        return self._backend.stats

    @property
    def listen_key(self) -> ListenKey:
        return listen_key(self.config)

    def configured_as(
        self, config: EndpointConfig, user_agent: str, shared_tier: SharedTier | None = None
    ) -> bool:
        """Whether a reload may keep this endpoint as it is (secrets and certificates re-read)."""
        return (
            config == self.config
            and user_agent == self.user_agent
            and (shared_tier if uses_shared_cache(config) else None) is self.shared_tier
            and read_auth_headers(config) == self._auth_headers
            and read_ca_file(config) == self._ca_pem
            and read_client_identity(config) == self._identity_pem
            and read_client_secret(config) == self._client_secret
        )

    def _bind(self) -> list[socket.socket]:
        if self.config.bind_path is not None:
            return [listeners.bind_unix(self.config.bind_path)]
        port = cast(int, self.config.bind_port)
        return listeners.bind_tcp(self.config.bind_address, port, shared=self._shared_port)

    async def start(
        self, inherited: list[socket.socket] | None = None, *, from_systemd: bool = False
    ) -> None:
        """Listen, on ``inherited`` sockets (a reload's hand-over, or duplicates of the ones
        systemd passed) or on newly bound ones.

        The socket file of a unix socket from systemd is systemd's (its ``SocketMode=``,
        ``SocketUser=``): never chmod'ed, chown'ed or unlinked here. An ``OSError`` (port taken,
        no such address) reaches the caller.
        """
        loop = asyncio.get_running_loop()
        binding, tracker, limits = self._binding, self.tracker, self._limits
        kind = ConcurrentConnection if binding.concurrent else Connection

        def connection() -> Connection:
            return kind(binding, tracker, limits)

        path = self.config.bind_path
        sockets = inherited or self._bind()
        for sock in sockets:
            if path is not None:
                server = await loop.create_unix_server(
                    connection, sock=sock, backlog=listeners.BACKLOG, **_OWN_SOCKET_FILE
                )
            else:
                server = await loop.create_server(connection, sock=sock, backlog=listeners.BACKLOG)
            self._servers.append(server)
        self._backend.start()
        self.inherited, self.from_systemd = bool(inherited), from_systemd
        if from_systemd:
            where = ", ".join(listeners.describe(sock) for sock in self._sockets())
            self._warn_if_configured_elsewhere()
        elif path is not None:
            self._socket_inode = os.lstat(path).st_ino
            if not inherited:  # an inherited socket is still its predecessor's until committed
                self.apply_socket_permissions()
            where = f"unix:{path}"
        else:
            where = ", ".join(f"{host}:{port}" for host, port in self.addresses)
        log.info(
            "endpoint %s (%s) listening on %s, asking %s%s",
            self.config.name,
            self.config.mode,
            where,
            self.config.target_for_logs,
            " (socket from systemd)" if from_systemd else "",
        )
        exposed = [host for host, _ in self.addresses if not ipaddress.ip_address(host).is_loopback]
        if exposed:
            log.warning(
                "endpoint %s listens on non-loopback %s: anyone who can reach it can query the"
                " API through it; bind to 127.0.0.1 or firewall the port",
                self.config.name,
                ", ".join(exposed),
            )

    def _warn_if_configured_elsewhere(self) -> None:
        """The socket unit decides where a socket from systemd listens; Postfix's tables
        probably name the config's address, so a difference is worth a line."""
        config = self.config
        if config.bind_path is not None:
            same = config.bind_path in {sock.getsockname() for sock in self._sockets()}
        else:
            same = not config.bind_port or config.bind_port in {port for _, port in self.addresses}
        if not same:
            log.warning(
                "endpoint %s: the socket systemd passed listens elsewhere than its config's %s,"
                " which is not used; Postfix must use the socket unit's address",
                config.name,
                config.listen_description,
            )

    def _sockets(self) -> list[socket.socket]:
        return [sock for server in self._servers for sock in server.sockets]

    def apply_socket_permissions(self) -> None:
        if self.config.bind_path is not None and not self.from_systemd:
            unix_socket.set_permissions(
                self.config.bind_path, self.config.socket_mode, self.config.socket_owner
            )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound TCP addresses (the real port when the config said 0)."""
        if self.config.bind_path is not None:
            return []
        return [sock.getsockname()[:2] for sock in self._sockets()]

    @property
    def is_serving(self) -> bool:
        return bool(self._servers) and all(server.is_serving() for server in self._servers)

    def listening_sockets(self) -> list[socket.socket]:
        """For the endpoint that replaces this one on a reload (``listeners.duplicates``)."""
        return listeners.duplicates(self._sockets())

    def stop_accepting(self, *, keep_socket_file: bool = False) -> None:
        """Close the listeners; the unix socket file goes too, unless a successor now uses it."""
        for server in self._servers:
            server.close()
        if self.config.bind_path is not None and self._socket_inode is not None:
            if not keep_socket_file:
                unix_socket.remove_socket(self.config.bind_path, self._socket_inode)
            self._socket_inode = None

    def retire(self, successor: Endpoint | None) -> None:
        """A reload replaced this endpoint: its connections answer what they received, then go
        on with ``successor`` if it has the same mode, or close. Begun now, not in ``stop``'s
        task, so that a request sent once the reload is done meets the new config."""
        if successor is not None and successor.config.mode == self.config.mode:
            self.tracker.begin_drain(
                Successor(successor._binding, successor.tracker, successor._limits)
            )
        else:
            self.tracker.begin_drain()

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer what was received, close (unless ``retire`` handed the
        connections over); then release the REST client."""
        self.stop_accepting()
        await self.tracker.drain(grace)
        for server in self._servers:
            await server.wait_closed()
        if self._unregister is not None:
            self._unregister()
        await self._backend.close()
