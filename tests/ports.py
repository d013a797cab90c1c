"""Fixed loopback ports for the tests that need them (several workers share a port, so it
cannot be 0): picked free, and held until the test's processes bind them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest


@contextmanager
def reserved_ports(count: int = 1) -> Iterator[list[int]]:
    """``count`` consecutive loopback ports, held with ``SO_REUSEPORT`` so that only processes
    of this user binding with ``SO_REUSEPORT`` (our workers) can join them."""
    for _ in range(50):
        with ExitStack() as stack:
            sockets: list[socket.socket] = []
            try:
                for offset in range(count):
                    sock = stack.enter_context(socket.socket())
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    port = sockets[0].getsockname()[1] + offset if sockets else 0
                    sock.bind(("127.0.0.1", port))
                    sockets.append(sock)
            except OSError:
                continue
            yield [sock.getsockname()[1] for sock in sockets]
            return
    pytest.fail(f"found no {count} consecutive free loopback ports")
