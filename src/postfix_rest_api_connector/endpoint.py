"""One configured endpoint: its mode's codec and reply table, its service, its listener."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar, cast

from . import unix_socket
from .backend import BackendSettings, RestBackend
from .codecs import Decoder, policy
from .codecs.policy import PolicyDecoder
from .codecs.socketmap import SocketmapDecoder
from .codecs.tcp_table import TcpTableDecoder
from .config import EndpointConfig
from .connection import Connection, ConnectionTracker, Exchange, Limits, Request
from .httpclient import ClientSettings
from .model import LookupRequest, Malformed, Outcome, PermanentError, PolicyRequest
from .replies import policy_reply, socketmap_reply, tcp_table_reply
from .resilience import RetryPolicy
from .service import EndpointService, ServiceSettings
from .stats import ApiStats

log = logging.getLogger(__name__)


R = TypeVar("R", LookupRequest, PolicyRequest)


def _exchange(
    new_decoder: Callable[[], Decoder],
    call: Callable[[R], Coroutine[Any, Any, Outcome]],
    reply: Callable[[Outcome], bytes],
    cached: Callable[[R], Outcome | None] | None = None,
) -> Exchange:
    def answer_now(request: Request) -> bytes | None:
        if isinstance(request, Malformed):
            return reply(PermanentError(f"malformed request: {request.reason}"))
        if cached is not None and (outcome := cached(cast(R, request))) is not None:
            return reply(outcome)
        return None

    # Called directly, with no wrapper of ours: answer_now() has already answered every request
    # that is not an R (a malformed one), and each coroutine frame costs on the hot path.
    ask = cast(Callable[[Request], Coroutine[Any, Any, Outcome]], call)
    return Exchange(new_decoder=new_decoder, answer_now=answer_now, ask=ask, reply=reply)


def _counted(
    reply: Callable[[Outcome], bytes], answered: Counter[type]
) -> Callable[[Outcome], bytes]:
    """Every reply passes here, so the count by outcome is complete (for the metrics)."""

    def count_and_reply(outcome: Outcome) -> bytes:
        answered[type(outcome)] += 1
        return reply(outcome)

    return count_and_reply


def build_exchange(
    config: EndpointConfig, service: EndpointService, answered: Counter[type]
) -> Exchange:
    """Wire the endpoint's mode: which codec frames requests and which table encodes outcomes."""
    limit = config.max_request_bytes
    if config.mode == "tcp-lookup":
        return _exchange(
            partial(TcpTableDecoder, limit),
            service.lookup,
            _counted(tcp_table_reply, answered),
            service.cached,
        )
    if config.mode == "socketmap-lookup":
        return _exchange(
            partial(SocketmapDecoder, limit),
            service.lookup,
            _counted(socketmap_reply, answered),
            service.cached,
        )
    failure_reply = policy.encode_reply(config.failure_action)
    return _exchange(
        partial(PolicyDecoder, limit, config.max_policy_attributes),
        service.check_policy,
        _counted(partial(policy_reply, failure_reply=failure_reply), answered),
    )


def backend_settings(config: EndpointConfig, user_agent: str, token: str | None) -> BackendSettings:
    """The config's milliseconds as seconds, the CA file's certificates read now."""
    http = ClientSettings(
        target=config.target,
        user_agent=user_agent,
        token=token,
        accept_json=config.mode != "policy",
        timeout=config.request_timeout / 1000,
        max_body_bytes=config.max_response_bytes,
        ca_pem=_read_ca_file(config),
    )
    return BackendSettings(http, config.list_separator)


class UnreadableFile(Exception):
    """A file an endpoint reads (``tls-ca-file``) could not be read now, though it could when the
    config was validated: one line naming the endpoint and the file, for a reload to log."""


def _read_ca_file(config: EndpointConfig) -> bytes | None:
    """The ``tls-ca-file`` certificates, read now."""
    if config.tls_ca_file is None:
        return None
    try:
        return config.tls_ca_file.read_bytes()
    except OSError as error:
        raise UnreadableFile(
            f"endpoint {config.name}: tls-ca-file {config.tls_ca_file}: cannot read:"
            f" {error.strerror or error}"
        ) from None


def service_settings(config: EndpointConfig) -> ServiceSettings:
    """The config's milliseconds as the service's seconds."""
    return ServiceSettings(
        timeout=config.request_timeout / 1000,
        retry=RetryPolicy(config.effective_retries, config.retry_backoff / 1000),
        cache_ttl=config.cache_ttl / 1000,
        negative_cache_ttl=config.negative_cache_ttl / 1000,
        cache_max_entries=config.cache_max_entries,
        respect_cache_control=config.cache_control,
        stale_if_error=config.stale_if_error / 1000,
        breaker_failures=config.breaker_failures,
        breaker_cooldown=config.breaker_cooldown / 1000,
    )


_OWN_SOCKET_FILE: dict[str, Any] = {"cleanup_socket": False}
"""We unlink the socket file ourselves, by inode (``unix_socket.remove_socket``). uvloop on
Python >= 3.13 would also unlink it whenever a listener closes, including the old listener of a
socket handed over on reload, leaving the new one without a name."""

ListenKey = str | tuple[str, int | None]


def listen_key(config: EndpointConfig) -> ListenKey:
    """Endpoints with equal keys listen on the same socket, so a reload can hand it over."""
    return config.bind_path or (config.bind_address.lower(), config.bind_port)


class Endpoint:
    """A running endpoint: listeners, open connections and REST client."""

    def __init__(
        self, config: EndpointConfig, user_agent: str, *, shared_port: bool = False
    ) -> None:
        self.config = config
        self.user_agent = user_agent
        self._shared_port = shared_port
        """Other workers listen on the same TCP port (``SO_REUSEPORT``)."""
        self._token = config.token()
        settings = backend_settings(config, user_agent, self._token)
        self._ca_pem = settings.http.ca_pem
        """What a reload compares: a CA file rotated in place keeps its path, not its contents."""
        self._backend = RestBackend(settings)
        self.service = EndpointService(config.name, self._backend, service_settings(config))
        self.answered: Counter[type] = Counter()
        """Replies sent, by outcome type."""
        self._exchange = build_exchange(config, self.service, self.answered)
        self.tracker = ConnectionTracker()
        self._servers: list[asyncio.Server] = []
        self._socket_inode: int | None = None
        self.inherited = False
        """Listening on sockets handed over by the endpoint this one replaced on a reload."""

    @property
    def api_stats(self) -> ApiStats:
        return self._backend.stats

    @property
    def listen_key(self) -> ListenKey:
        return listen_key(self.config)

    def configured_as(self, config: EndpointConfig, user_agent: str) -> bool:
        """Whether a reload may keep this endpoint as it is (the token and CA files re-read)."""
        return (
            config == self.config
            and user_agent == self.user_agent
            and (config.token() == self._token)
            and _read_ca_file(config) == self._ca_pem
        )

    async def start(self, inherited: list[socket.socket] | None = None) -> None:
        """Listen, on ``inherited`` sockets (a reload's hand-over) or on newly bound ones.

        An ``OSError`` (port taken, no such address) reaches the caller.
        """
        loop = asyncio.get_running_loop()
        limits = Limits(
            idle_timeout=self.config.idle_timeout / 1000,
            read_timeout=self.config.read_timeout / 1000,
            max_connections=self.config.max_connections,
        )

        def connection() -> Connection:
            return Connection(self._exchange, self.tracker, limits)

        path = self.config.bind_path
        if inherited:
            for sock in inherited:
                if path is not None:
                    server = await loop.create_unix_server(
                        connection, sock=sock, backlog=1024, **_OWN_SOCKET_FILE
                    )
                else:
                    server = await loop.create_server(connection, sock=sock, backlog=1024)
                self._servers.append(server)
        elif path is not None:
            unix_socket.clear_stale_socket(path)
            with unix_socket.private_umask():  # nobody may connect before the mode below is set
                server = await loop.create_unix_server(
                    connection, path, backlog=1024, **_OWN_SOCKET_FILE
                )
            self._servers.append(server)
        else:
            self._servers.append(
                await loop.create_server(
                    connection,
                    self.config.bind_address,
                    self.config.bind_port,
                    reuse_address=True,
                    reuse_port=self._shared_port or None,
                    backlog=1024,
                )
            )
        self.inherited = bool(inherited)
        if path is not None:
            self._socket_inode = os.lstat(path).st_ino
            if not inherited:  # an inherited socket is still its predecessor's until committed
                self.apply_socket_permissions()
            where = f"unix:{path}"
        else:
            where = ", ".join(f"{host}:{port}" for host, port in self.addresses)
        log.info(
            "endpoint %s (%s) listening on %s, asking %s",
            self.config.name,
            self.config.mode,
            where,
            self.config.target_for_logs,
        )
        exposed = [host for host, _ in self.addresses if not ipaddress.ip_address(host).is_loopback]
        if exposed:
            log.warning(
                "endpoint %s listens on non-loopback %s: anyone who can reach it can query the"
                " API through it; bind to 127.0.0.1 or firewall the port",
                self.config.name,
                ", ".join(exposed),
            )

    def apply_socket_permissions(self) -> None:
        if self.config.bind_path is not None:
            unix_socket.set_permissions(
                self.config.bind_path, self.config.socket_mode, self.config.socket_owner
            )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound TCP addresses (the real port when the config said 0)."""
        if self.config.bind_path is not None:
            return []
        return [sock.getsockname()[:2] for server in self._servers for sock in server.sockets]

    @property
    def is_serving(self) -> bool:
        return bool(self._servers) and all(server.is_serving() for server in self._servers)

    def listening_sockets(self) -> list[socket.socket]:
        """Duplicates of the listening sockets, for the endpoint that replaces this one on a
        reload: the kernel's accept queue carries over, so no client is refused meanwhile."""
        return [
            socket.socket(fileno=os.dup(sock.fileno()))
            for server in self._servers
            for sock in server.sockets
        ]

    def stop_accepting(self, *, keep_socket_file: bool = False) -> None:
        """Close the listeners; the unix socket file goes too, unless a successor now uses it."""
        for server in self._servers:
            server.close()
        if self.config.bind_path is not None and self._socket_inode is not None:
            if not keep_socket_file:
                unix_socket.remove_socket(self.config.bind_path, self._socket_inode)
            self._socket_inode = None

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer what was received, close; then release the REST client."""
        self.stop_accepting()
        await self.tracker.drain(grace)
        for server in self._servers:
            await server.wait_closed()
        await self._backend.close()
