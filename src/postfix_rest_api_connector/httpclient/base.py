"""What the REST backend needs of an HTTP client, whichever engine carries the request."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from .codec import HttpResponse


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """One endpoint's HTTP side, in the client's terms (seconds, bytes)."""

    target: str
    user_agent: str
    token: str | None = field(repr=False)
    accept_json: bool
    """Lookups send ``Accept: application/json``; policy answers are plain text."""
    timeout: float
    max_body_bytes: int
    ca_pem: bytes | None = field(default=None, repr=False)


class HttpError(Exception):
    """A request that got no usable answer. The class name is the reason shown to Postfix."""


class RequestTimeout(HttpError):
    """No complete answer within the request's time budget."""


class ResponseTooLarge(HttpError):
    """The body of a 200 exceeded ``max-response-bytes``."""


class ConnectError(HttpError):
    """The API could not be reached."""


class ConnectionClosed(HttpError):
    """The API closed or reset the connection before its answer was complete."""


class InvalidRequest(HttpError):
    """The HTTP engine refused to build the request."""


class InvalidResponse(HttpError):
    """The API's bytes were not an HTTP response."""


class HttpClient(Protocol):
    """One endpoint's target. ``budget`` overrides the endpoint's timeout for one request (a retry's
    remaining budget); every failure is raised as an ``HttpError``."""

    def get(self, query: str, request_id: str, budget: float | None) -> Awaitable[HttpResponse]:
        """``GET target?query``; ``query`` is already percent-encoded."""
        ...

    def post_form(
        self, body: bytes, request_id: str, budget: float | None
    ) -> Awaitable[HttpResponse]:
        """``POST target`` with a form-encoded body."""
        ...

    async def close(self) -> None: ...
