"""Where a lookup goes: the endpoint's target or its map's own (``maps``), with the key in the
query string or, for a ``{key}`` template, in the path; and how that target's answers read.

Pure: a request in, the target and query out (or the reason there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model import LookupRequest, PermanentError
from ..httpclient import Target
from .contract import PLAIN, ResponseMapping
from .encoding import lookup_query, path_segment

KEY = "{key}"
NAME = "{name}"
_MARKS = {KEY: "%7Bkey%7D", NAME: "%7Bname%7D"}
"""The placeholders as the URL parser leaves them in a parsed target."""


def is_template(url: str) -> bool:
    return KEY in url or NAME in url


@dataclass(frozen=True, slots=True)
class Route:
    """One target and how its answers read. ``names_map``: the map's name goes with the key
    (the endpoint's own target on socketmap); a map's own target gets the key alone."""

    target: Target
    mapping: ResponseMapping = PLAIN
    names_map: bool = True
    templated: bool = False

    @classmethod
    def of(
        cls, target: Target, mapping: ResponseMapping = PLAIN, *, names_map: bool = True
    ) -> Route:
        return cls(target, mapping, names_map, is_template(target.configured))

    def request(self, lookup: LookupRequest) -> tuple[Target, str] | PermanentError:
        """The target and query string of ``lookup``'s GET."""
        if not self.templated:
            named = lookup if self.names_map else LookupRequest(lookup.key)
            return self.target, lookup_query(named)
        segments = {KEY: lookup.key, NAME: lookup.map_name or b""}
        filled = {mark: path_segment(raw) for mark, raw in segments.items()}
        if {".", ".."} & {filled[mark] for mark in _MARKS if mark in self.target.configured}:
            # the URL parser would take them for the current and the parent directory
            return PermanentError("key '.' or '..' cannot be a path segment")
        url, path = self.target.url, self.target.path
        for mark, encoded in _MARKS.items():
            url = url.replace(encoded, filled[mark])
            path = path.replace(encoded.encode(), filled[mark].encode())
        return self.target.at(url, path), ""
