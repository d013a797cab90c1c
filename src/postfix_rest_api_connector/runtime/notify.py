"""systemd's ``Type=notify`` readiness protocol: one datagram to ``$NOTIFY_SOCKET`` per state, and
the field a worker adds for its supervisor after a reload."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> None:
    """Send e.g. ``READY=1``; does nothing when not started by systemd (no ``NOTIFY_SOCKET``)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as error:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], error)


RELOAD_RESULT = "X_RELOAD"
"""A worker's ``READY=1`` after a reload says ``X_RELOAD=ok:<digest>`` or
``X_RELOAD=failed[:<digest>]`` (``reload_result``): the digest names the file content it read,
as it reads the file itself, maybe after the supervisor did. systemd ignores the field."""


def reload_result(applied: bool, digest: str | None) -> str:
    """The line a worker adds to its ``READY=1`` after a reload, for the supervisor."""
    outcome = "ok" if applied else "failed"
    return f"{RELOAD_RESULT}={outcome}" + (f":{digest}" if digest else "")


def parse_reload_result(fields: list[bytes]) -> tuple[bool, str | None] | None:
    """``(applied, digest)`` from a notification's fields; ``None`` if it answers no reload."""
    prefix = f"{RELOAD_RESULT}=".encode()
    value = next((f[len(prefix) :] for f in fields if f.startswith(prefix)), None)
    if value is None:
        return None
    outcome, _, digest = value.decode("ascii", "replace").partition(":")
    return outcome == "ok", digest or None
