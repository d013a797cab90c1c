"""Connection handling, the same for every mode: the asyncio protocol between a socket and a
mode's codec, reply table and service call."""

from __future__ import annotations

from .handler import ConcurrentConnection, Connection, Limits, ModeBinding, Successor
from .tracker import ConnectionTracker

__all__ = [
    "ConcurrentConnection",
    "Connection",
    "ConnectionTracker",
    "Limits",
    "ModeBinding",
    "Successor",
]
