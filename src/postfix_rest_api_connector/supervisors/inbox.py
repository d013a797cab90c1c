"""The supervisor's end of its workers' readiness messages: systemd's notify protocol, on a
datagram socket of its own, each message known by the sender's pid (``SO_PASSCRED``)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

_CREDENTIALS = struct.calcsize("3i")


def open_inbox(path: str) -> socket.socket:
    """A non-blocking datagram socket at ``path`` that receives its senders' credentials."""
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        inbox.bind(path)
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.setblocking(False)
    except OSError:
        inbox.close()
        raise
    return inbox


def read_messages(inbox: socket.socket) -> Iterator[tuple[int, list[bytes]]]:
    """Every message waiting now, as (sender's pid, fields); 0 for an unknown sender."""
    while True:
        try:
            data, ancillary, _, _ = inbox.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS))
        except BlockingIOError:
            return
        pid = next(
            (
                struct.unpack("3i", cmsg_data[:_CREDENTIALS])[0]
                for level, kind, cmsg_data in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            ),
            0,
        )
        yield pid, data.split(b"\n")
