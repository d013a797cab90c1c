"""Connection handling, the same for every mode: the asyncio protocol between a socket and a
mode's codec, reply table and service call."""

from __future__ import annotations

from .binding import Cached, answering_now, counted
from .handler import ConcurrentConnection, Connection, Limits, ModeBinding, Successor
from .tracker import ConnectionTracker

__all__ = [
    "Cached",
    "ConcurrentConnection",
    "Connection",
    "ConnectionTracker",
    "Limits",
    "ModeBinding",
    "Successor",
    "answering_now",
    "counted",
]
