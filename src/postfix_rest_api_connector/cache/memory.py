"""The in-process cache: fresh answers within their TTL, and the last good answer kept for outages.

A cached "not found" bounces mail, so it has its own (short or zero) TTL and is never served
stale; only a found value may stand in for an API that is down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from ..core.model import Found, NotFound


@dataclass(frozen=True, slots=True)
class _Entry:
    outcome: Found | NotFound
    fetched_at: float
    fresh_until: float


class MemoryCache:
    """LRU-bounded map from a lookup's key to the API's last definite answer."""

    def __init__(self, max_entries: int, stale_for: float) -> None:
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._stale_for = stale_for

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: Hashable, now: float) -> Found | NotFound | None:
        entry = self._entries.get(key)
        if entry is None or entry.fresh_until <= now:
            return None
        self._entries.move_to_end(key)
        return entry.outcome

    def stale(self, key: Hashable, now: float) -> Found | None:
        """The last found value, if it was fetched less than ``stale_for`` ago."""
        entry = self._entries.get(key)
        if entry is None or not isinstance(entry.outcome, Found):
            return None
        if now - entry.fetched_at > self._stale_for:
            return None
        return entry.outcome

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def store(self, key: Hashable, outcome: Found | NotFound, now: float, ttl: float) -> None:
        """Keep the answer for ``ttl`` seconds fresh, and (found values) for stale use after."""
        keep_stale = isinstance(outcome, Found) and self._stale_for > 0
        if ttl <= 0 and not keep_stale:
            self.forget(key)
            return
        self._entries[key] = _Entry(outcome, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
