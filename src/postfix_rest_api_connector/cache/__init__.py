"""Lookup caches behind one interface, built by a factory from the endpoint's settings.

The service asks only ``Cache``; today the factory builds the in-process LRU (``memory``), and a
tier that other processes share plugs in behind the same interface. Times are wall-clock seconds
(``time.time()``), given by the caller, so an entry's fetch time means the same in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..core.model import Found, NotFound
from .memory import MemoryCache

__all__ = ["Cache", "CacheKey", "CacheSettings", "MemoryCache", "open_cache"]

CacheKey = tuple[str, bytes | None, bytes]
"""(scope, map name, key): the scope names the endpoint and its target (``cache_scope``), so a
key never meets another endpoint's or another target's answer in a cache they share."""


def cache_scope(endpoint: str, target: str) -> str:
    return f"{endpoint} {target}"


class Cache(Protocol):
    """What the lookup service needs of a cache; ``now`` is wall-clock seconds."""

    def fresh(self, key: CacheKey, now: float) -> Found | NotFound | None:
        """The answer while within its TTL, else ``None``."""
        ...

    def stale(self, key: CacheKey, now: float) -> Found | None:
        """The last found answer if fetched within ``stale-if-error``, for when the API fails."""
        ...

    def store(self, key: CacheKey, outcome: Found | NotFound, now: float, ttl: float) -> None:
        """Keep a definite answer fresh for ``ttl`` seconds (and a found one for stale use)."""
        ...

    def forget(self, key: CacheKey) -> None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class CacheSettings:
    max_entries: int = 10_000
    stale_for: float = 0.0
    """Seconds after fetching that a found answer may stand in for a failing API."""


def open_cache(settings: CacheSettings) -> Cache:
    return MemoryCache(settings.max_entries, settings.stale_for)
