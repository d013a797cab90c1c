"""What the REST backend needs of an HTTP client, whichever engine carries the request."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from pyreqwest.http import Url

from .codec import HttpResponse
from .headers import Headers


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """One endpoint's HTTP side, in the client's terms (seconds, bytes)."""

    user_agent: str
    accept_json: bool
    """Lookups send ``Accept: application/json``; policy answers are plain text."""
    timeout: float
    max_body_bytes: int
    ca_pem: bytes | None = field(default=None, repr=False)
    identity_pem: bytes | None = field(default=None, repr=False)
    """A client certificate and its private key, for APIs that ask for one (mTLS)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A configured URL, parsed once, by pyreqwest's parser so that both engines ask for the
    same thing; each request names the target it goes to."""

    configured: str
    """As the config gives it."""
    url: str
    """Normalised, without a fragment; may carry its own query string."""
    scheme: str
    host: str
    port: int | None
    path: bytes
    """Path and query in origin form (``/lookup?v=2``), for a POST."""
    get_prefix: bytes
    """``path`` followed by ``?`` or ``&``: a GET's query string is appended to it."""
    url_prefix: str
    """The same for the whole URL."""
    has_user_info: bool
    """``user:password@`` in the URL: pyreqwest sends it as basic authentication."""

    @classmethod
    def parse(cls, url: str) -> Target:
        normalised = str(Url(url))
        parts = urlsplit(normalised)
        path = parts.path.encode("ascii") + (
            b"?" + parts.query.encode("ascii") if parts.query else b""
        )
        joiner = "&" if parts.query else "?"
        base = normalised.partition("#")[0]
        return cls(
            configured=url,
            url=base,
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=parts.port,
            path=path,
            get_prefix=path + joiner.encode(),
            url_prefix=base + ("" if base.endswith(("?", "&")) else joiner),
            has_user_info=parts.username is not None or parts.password is not None,
        )

    def at(self, url: str, path: bytes) -> Target:
        """The same origin at another (already percent-encoded) URL and path, taken as they are:
        a filled ``{key}`` template, to which a GET adds no query string."""
        return Target(
            configured=self.configured,
            url=url,
            scheme=self.scheme,
            host=self.host,
            port=self.port,
            path=path,
            get_prefix=path,
            url_prefix=url,
            has_user_info=self.has_user_info,
        )


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
    """Requests to an endpoint's targets, each with the headers its credentials give now.
    ``budget`` overrides the endpoint's timeout for one request (a retry's remaining budget);
    every failure is raised as an ``HttpError``."""

    def get(
        self, target: Target, query: str, headers: Headers, request_id: str, budget: float | None
    ) -> Awaitable[HttpResponse]:
        """``GET target?query``; ``query`` is already percent-encoded."""
        ...

    def post_form(
        self, target: Target, body: bytes, headers: Headers, request_id: str, budget: float | None
    ) -> Awaitable[HttpResponse]:
        """``POST target`` with a form-encoded body."""
        ...

    def post(
        self,
        target: Target,
        body: bytes,
        headers: Headers,
        request_id: str,
        budget: float | None,
        *,
        content_type: str,
    ) -> Awaitable[HttpResponse]:
        """``POST target`` with a body of the given ``Content-Type``."""
        ...

    async def close(self) -> None: ...
