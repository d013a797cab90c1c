"""Request header fields: the one validator of names and values, and the credentials that give
each request its authentication headers.

Credentials are asked per request, not fixed when a client is built, so that headers which
change over time (an expiring token) or come from the endpoint's config reach every engine the
same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""RFC 9110 section 5.1: a field name is a token."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FRAMING_FIELDS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
"""Fields the HTTP engine sets itself: given by a config they could redirect or split a request."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be sent as a header field name, or ``None``."""
    if not _FIELD_NAME.fullmatch(name):
        return "must be a header name (letters, digits and !#$%&'*+.^_`|~-)"
    if name.lower() in FRAMING_FIELDS:
        return f"{name} is set by the connector itself"
    return None


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header field value, or ``None``: a control character
    would end or split the header block."""
    if _CONTROL.search(value):
        return "must not contain control characters (line breaks, tabs, NUL)"
    return None


@dataclass(frozen=True, slots=True)
class Headers:
    """Checked header fields, in both forms the engines take; ``repr`` shows no value, since
    values are usually credentials."""

    pairs: tuple[tuple[str, str], ...] = field(repr=False)
    encoded: bytes = field(repr=False)
    """``Name: value\\r\\n`` lines, UTF-8 (as pyreqwest sends them)."""

    @classmethod
    def of(cls, pairs: tuple[tuple[str, str], ...]) -> Headers:
        """Raises ``ValueError`` for a field that cannot be sent (it names the field only)."""
        for name, value in pairs:
            problem = value_problem(value)
            if _FIELD_NAME.fullmatch(name) is None or problem is not None:
                raise ValueError(f"the {name!r} header cannot be sent: {problem or 'bad name'}")
        return cls(pairs, b"".join(f"{name}: {value}\r\n".encode() for name, value in pairs))


NO_HEADERS = Headers((), b"")


class Credentials(Protocol):
    """Where a request's authentication headers come from."""

    def current(self) -> Headers | None:
        """The headers to send now, or ``None`` when they must be obtained first (``renew``)."""
        ...

    async def renew(self) -> Headers:
        """Obtain headers (for instance a new token); raises ``HttpError`` if that fails."""
        ...


class StaticCredentials:
    """Headers that never change: the ``X-Auth-Token`` of the predecessors' config, or none."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def current(self) -> Headers:
        return self._headers

    async def renew(self) -> Headers:
        return self._headers
