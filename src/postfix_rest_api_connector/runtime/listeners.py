"""Every listening socket is made here, for endpoints and the admin listener alike: TCP (shared
by the workers with ``SO_REUSEPORT``), unix sockets, and duplicates of a running listener's
sockets, which a reload hands to the listener that replaces it.

Listeners then serve on the sockets they are given (``loop.create_server(sock=...)``), so there
is one way to bind and one way to hand over, whatever serves on the socket.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable

from . import unix_socket

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
