"""OAuth2 client credentials (RFC 6749 section 4.4): a bearer token from the token endpoint,
obtained once for every concurrent request and renewed before it expires.

A grant is one task, a flight, that every request needing a token awaits (shielded, each within
its own deadline), so that a thousand concurrent lookups cause one token request, and a lookup
that gives up cancels nobody's. The flight starts at the first ``current()`` (the endpoint's
start), and again once the token is near its end, while the requests go on with the token they
have: none waits for a renewal ahead of expiry. A failing token endpoint is asked again at most
every ``RETRY_AFTER_FAILURE`` seconds; meanwhile requests fail at once, with its reason.
Neither the secret nor a token is ever logged or shown in a ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote_plus, urlencode

from . import open_client
from .base import (
    ClientSettings,
    HttpClient,
    HttpError,
    RequestTimeout,
    ResponseTooLarge,
    Target,
)
from .codec import HttpResponse
from .headers import NO_HEADERS, Headers

log = logging.getLogger(__name__)

MAX_TOKEN_RESPONSE = 64 * 1024
"""Bytes of a token endpoint's answer: a token response is a few hundred."""
RETRY_AFTER_FAILURE = 1.0
"""Seconds between token requests while the token endpoint fails."""
MIN_GRANT_INTERVAL = 1.0
"""Seconds a new token is given for a renewal instead of another grant: an API that refuses
every token (a wrong audience) must not cause a grant per lookup."""
DEFAULT_LIFETIME = 3600.0
"""Seconds a token without ``expires_in`` is kept (a 401 renews it sooner)."""
MAX_MARGIN = 30.0
"""Seconds before its ``expires_in`` a token is no longer sent: at most this, at least a tenth
of its lifetime. Renewal starts one margin earlier still."""
_TOKEN = re.compile(r"[!-~]+")
"""Visible ASCII, no space: a header value that cannot be split (RFC 6750 b64token is less)."""
_grants = itertools.count(1)


class TokenUnavailable(HttpError):
    """No usable token: the message names the token endpoint's failure by kind, never a secret."""


@dataclass(frozen=True, slots=True)
class OAuth2Settings:
    """One endpoint's client credentials and how to reach its token endpoint."""

    endpoint: str
    """The endpoint's name, for log lines."""
    token_url: Target
    token_url_for_logs: str
    """Without user info or query string."""
    http: ClientSettings
    """The token endpoint's client: the endpoint's timeout and CA, ``MAX_TOKEN_RESPONSE``."""
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    audience: str | None = None
    client_auth: Literal["basic", "post"] = "basic"
    extra_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """The endpoint's other headers (``headers``), sent beside the token."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A token as the ``Authorization`` header, and its lifetime in seconds."""

    headers: Headers
    lifetime: float


class OAuth2Credentials:
    """``Credentials`` whose headers carry a bearer token from the client-credentials grant."""

    __slots__ = (
        "_clock",
        "_expires_at",
        "_failure",
        "_flight",
        "_granted_at",
        "_headers",
        "_refresh_at",
        "_retry_at",
        "_settings",
    )

    def __init__(self, settings: OAuth2Settings, clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._clock = clock
        self._headers: Headers | None = None
        self._refresh_at = float("-inf")
        """From then on a renewal is due; the token still serves until ``_expires_at``."""
        self._expires_at = float("-inf")
        self._flight: asyncio.Task[Headers] | None = None
        self._failure: TokenUnavailable | None = None
        """Why the last grant failed; ``None`` once one succeeds."""
        self._retry_at = float("-inf")
        self._granted_at = float("-inf")

    def __repr__(self) -> str:
        return f"OAuth2Credentials({self._settings.token_url_for_logs!r})"

    def current(self) -> Headers | None:
        """The token's header while it is valid; starts the renewal once it is due."""
        now = self._clock()
        if now < self._refresh_at:
            return self._headers
        if self._flight is None and now >= self._retry_at:
            self._start()
        return self._headers if now < self._expires_at else None

    async def renew(self) -> Headers:
        """A new token (or the one a renewal in flight brings, or one granted less than
        ``MIN_GRANT_INTERVAL`` ago): for the first request, or after the API refused the current
        one. Raises ``TokenUnavailable``."""
        flight = self._flight
        if flight is None:
            now = self._clock()
            recent = now - self._granted_at < MIN_GRANT_INTERVAL and now < self._expires_at
            if recent and self._headers is not None:
                return self._headers
            if self._failure is not None and now < self._retry_at:
                raise TokenUnavailable(str(self._failure))
            flight = self._start()
        return await asyncio.shield(flight)

    def _start(self) -> asyncio.Task[Headers]:
        flight = asyncio.get_running_loop().create_task(self._obtain())
        flight.add_done_callback(_retrieved)
        self._flight = flight
        return flight

    async def _obtain(self) -> Headers:
        """One grant; its outcome, and a change between failing and working logged once."""
        settings = self._settings
        asked = self._clock()
        try:
            grant = await request_token(settings)
        except TokenUnavailable as error:
            self._retry_at = self._clock() + RETRY_AFTER_FAILURE
            if self._failure is None:
                log.warning(
                    "endpoint %s: oauth2 token endpoint %s fails: %s; without a valid token,"
                    " requests get a temporary error until it gives one",
                    settings.endpoint,
                    settings.token_url_for_logs,
                    error,
                )
            self._failure = error
            raise
        finally:
            self._flight = None
        if self._failure is not None:
            log.info(
                "endpoint %s: oauth2 token endpoint %s gives tokens again",
                settings.endpoint,
                settings.token_url_for_logs,
            )
            self._failure = None
        margin = min(MAX_MARGIN, grant.lifetime / 10)
        headers = grant.headers
        if settings.extra_headers:
            headers = Headers.of(settings.extra_headers + headers.pairs)
        self._headers = headers
        self._granted_at = self._clock()
        self._expires_at = asked + grant.lifetime - margin
        self._refresh_at = self._expires_at - margin
        log.debug("endpoint %s: oauth2 token for %.1f s", settings.endpoint, grant.lifetime)
        return headers


def _retrieved(flight: asyncio.Task[Headers]) -> None:
    """A failed grant nobody awaited (the one at start) is not an unretrieved exception."""
    if not flight.cancelled():
        flight.exception()


def token_request(settings: OAuth2Settings) -> tuple[bytes, Headers]:
    """The form and headers of a grant: the client authenticated by HTTP Basic (its id and
    secret form-encoded first, RFC 6749 section 2.3.1) or in the form itself."""
    fields = [("grant_type", "client_credentials")]
    fields += [(name, value) for name, value in (("scope", settings.scope),) if value]
    fields += [(name, value) for name, value in (("audience", settings.audience),) if value]
    if settings.client_auth == "post":
        fields += [("client_id", settings.client_id), ("client_secret", settings.client_secret)]
        return urlencode(fields).encode("ascii"), NO_HEADERS
    pair = f"{quote_plus(settings.client_id)}:{quote_plus(settings.client_secret)}"
    basic = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
    return urlencode(fields).encode("ascii"), Headers.of((("Authorization", basic),))


async def request_token(settings: OAuth2Settings) -> Grant:
    """Ask the token endpoint once, on a client of its own (a grant is rare: nothing to pool)."""
    body, headers = token_request(settings)
    client = open_client(settings.token_url, settings.http)
    # no ``await`` in a ``finally`` (nor before a bare ``raise``): compiled with mypyc, that
    # re-raised an exception handled earlier (a refused token endpoint's) after a success
    failure: BaseException | None = None
    try:
        response = await _post(client, settings, body, headers)
    except BaseException as error:  # noqa: BLE001 - raised again once the client is closed
        failure = error
    await client.close()
    if failure is not None:
        raise failure
    if response.status in {400, 401}:
        raise TokenUnavailable(
            f"HTTP {response.status}: client-id or client secret refused (invalid_client?)"
        )
    if response.status != 200:
        raise TokenUnavailable(f"HTTP {response.status}")
    return parse_token_response(response.body)


async def _post(
    client: HttpClient, settings: OAuth2Settings, body: bytes, headers: Headers
) -> HttpResponse:
    try:
        return await client.post_form(
            settings.token_url, body, headers, f"oauth2-{next(_grants)}", None
        )
    except RequestTimeout:
        raise TokenUnavailable("no answer in time") from None
    except ResponseTooLarge:
        raise TokenUnavailable(f"answer exceeds {settings.http.max_body_bytes} bytes") from None
    except HttpError as error:
        if isinstance(error, TokenUnavailable):
            raise
        raise TokenUnavailable(f"request failed: {type(error).__name__}") from None


def parse_token_response(body: bytes) -> Grant:
    """RFC 6749 section 5.1: a JSON object with a bearer ``access_token`` and, usually, its
    ``expires_in``; anything else is ``TokenUnavailable``."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise TokenUnavailable("answer is not JSON") from None
    if not isinstance(answer, dict):
        raise TokenUnavailable("answer is not a JSON object")
    token = answer.get("access_token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token) or len(token) > 16384:
        raise TokenUnavailable("answer has no usable access_token")
    kind = answer.get("token_type")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise TokenUnavailable("answer's token_type is not Bearer")
    return Grant(Headers.of((("Authorization", f"Bearer {token}"),)), _lifetime(answer))


def _lifetime(answer: dict[str, object]) -> float:
    expires_in = answer.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some servers send it as a string
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise TokenUnavailable("answer's expires_in is not a number")
    if not 0 < expires_in < 10**9:
        raise TokenUnavailable("answer's expires_in is not a positive number of seconds")
    return float(expires_in)
