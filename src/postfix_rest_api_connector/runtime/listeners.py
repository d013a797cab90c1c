"""Every listening socket is made here, for endpoints and the admin listener alike: TCP (shared
by the workers with ``SO_REUSEPORT``), unix sockets, duplicates of a running listener's
sockets, which a reload hands to the listener that replaces it, and the sockets systemd passes
(socket activation, ``SystemdSockets``).

Listeners then serve on the sockets they are given (``loop.create_server(sock=...)``), so there
is one way to bind and one way to hand over, whatever serves on the socket.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Collection, Iterable, Mapping, MutableMapping

from ..config import Config, ConfigError
from ..config.checks import SocketKind, passed_socket_problems
from . import unix_socket

log = logging.getLogger(__name__)

BACKLOG = 1024
"""Connections the kernel queues per listener while the loop is busy (Postfix retries after
a refused connect, but a short burst should never be refused)."""

ListenKey = str | tuple[str, int | None]
"""A unix socket's path, or a TCP (address, port): listeners with equal keys can hand over."""


def tcp_key(host: str, port: int | None) -> ListenKey:
    return (host.lower(), port)


def bind_tcp(host: str, port: int, *, shared: bool = False) -> list[socket.socket]:
    """Listen on every address ``host`` resolves to (a name such as ``localhost`` may give two),
    as asyncio's ``create_server`` would; ``shared``: other processes listen on the same port
    (``SO_REUSEPORT``). Raises ``OSError``; nothing stays open then."""
    infos = socket.getaddrinfo(
        host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, protocol, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        close_all(sockets)
        raise
    if not sockets:
        raise OSError(errno.EADDRNOTAVAIL, f"{host} has no address to listen on")
    return sockets


def bind_unix(path: str) -> socket.socket:
    """A socket file at ``path``, replacing one left by a crash (never a live one); nobody can
    connect until the caller sets its mode (``unix_socket.set_permissions``)."""
    unix_socket.clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_socket.private_umask():
            sock.bind(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def duplicates(sockets: Iterable[socket.socket]) -> list[socket.socket]:
    """Copies of listening sockets for a successor: the kernel's accept queue is shared, so no
    client is refused while one listener gives way to the other."""
    return [socket.socket(fileno=os.dup(sock.fileno())) for sock in sockets]


def close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


SD_LISTEN_FDS_START = 3
"""The first descriptor systemd passes (``sd_listen_fds(3)``)."""
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
UNNAMED = "unknown"
"""systemd's name for a passed descriptor that ``$LISTEN_FDNAMES`` does not name."""


def socket_kind(sock: socket.socket) -> SocketKind:
    """What a passed socket is, as far as an endpoint cares."""
    if sock.type != socket.SOCK_STREAM:
        return "packet"
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return "connected"
    if sock.family == socket.AF_UNIX:
        return "unix"
    if sock.family in {socket.AF_INET, socket.AF_INET6}:
        return "tcp"
    return "other"


def describe(sock: socket.socket) -> str:
    """Where a listening socket listens, for the log: ``127.0.0.1:9001``, ``unix:/path``."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}" if address else "unix:(unnamed)"
    if sock.family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    if sock.family == socket.AF_INET:
        return f"{address[0]}:{address[1]}"
    return str(address)


class SystemdSockets:
    """The listening sockets systemd passed (socket activation), by ``FileDescriptorName=``.

    Taken once, in the process systemd started and before the supervisor forks, so every worker
    inherits the same sockets and accepts from one queue. They stay open until the process
    exits: an endpoint serves on duplicates (``for_endpoint``), so no reload, whatever it starts
    or stops, closes one for good (the daemon could not bind it again: a port below 1024, a
    path it may not write).
    """

    def __init__(self, by_name: Mapping[str, list[socket.socket]] | None = None) -> None:
        self._by_name = {name: list(sockets) for name, sockets in (by_name or {}).items()}

    def add(self, name: str, sock: socket.socket) -> None:
        """One more socket (several may share a name: one unit listening on two addresses)."""
        self._by_name.setdefault(name, []).append(sock)

    def passes(self, name: str) -> bool:
        """Whether systemd passed a socket for the endpoint called ``name``."""
        return name in self._by_name

    def kinds(self) -> dict[str, list[SocketKind]]:
        return {name: [socket_kind(s) for s in socks] for name, socks in self._by_name.items()}

    def check(self, config: Config) -> None:
        """``ConfigError`` if an endpoint's config does not fit the socket passed for it (a
        unix socket for a TCP endpoint, say): at start and on every reload."""
        problems = list(passed_socket_problems(config, self.kinds()))
        if problems:
            raise ConfigError(problems)

    def close_unclaimed(self, names: Collection[str]) -> None:
        """Close, with a warning, every socket no endpoint of ``names`` claims: nothing here
        would accept its connections (under systemd they wait unanswered in its queue), so the
        administrator must learn why."""
        for name in [name for name in self._by_name if name not in names]:
            for sock in self._by_name.pop(name):
                log.warning(
                    "systemd passed a socket named %r (%s) that no endpoint claims: closed it;"
                    " its socket unit's FileDescriptorName= must be an endpoint's name",
                    name,
                    describe(sock),
                )
                sock.close()

    def for_endpoint(self, name: str) -> list[socket.socket] | None:
        """Duplicates of the sockets passed for the endpoint ``name``, or ``None`` (it binds
        its own)."""
        sockets = self._by_name.get(name)
        return duplicates(sockets) if sockets else None

    def close(self) -> None:
        """At exit only."""
        for sockets in self._by_name.values():
            close_all(sockets)
        self._by_name.clear()


def take_systemd_sockets(environ: MutableMapping[str, str] = os.environ) -> SystemdSockets:
    """The sockets systemd passed to this process (``sd_listen_fds_with_names(3)``), taken once.

    The variables are removed whatever they say, so no child process (a worker, a command
    started later) takes descriptors meant for this one, and the descriptors are made
    close-on-exec. A ``LISTEN_PID`` that is not this process means they were meant for
    another: none is taken. Raises ``ConfigError`` if they are malformed or a passed descriptor
    is not a socket.
    """
    pid, count, names = (environ.pop(name, None) for name in LISTEN_VARIABLES)
    if pid is None or count is None or pid.strip() != str(os.getpid()):
        return SystemdSockets()
    if not count.isdigit():
        raise ConfigError([f"LISTEN_FDS: {count!r} is not a number of descriptors"])
    listed = names.split(":") if names else []
    taken = SystemdSockets()
    for offset in range(int(count)):
        fd = SD_LISTEN_FDS_START + offset
        name = listed[offset] if offset < len(listed) and listed[offset] else UNNAMED
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as error:
            taken.close()
            raise ConfigError(
                [f"LISTEN_FDS: descriptor {fd} ({name!r}) is not a usable socket: {error.strerror}"]
            ) from None
        taken.add(name, sock)
        log.info("systemd passed a socket named %r: %s", name, describe(sock))
    return taken
