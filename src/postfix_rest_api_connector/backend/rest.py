"""The REST backend of one endpoint: asks its HTTP client with the endpoint's credentials and maps
each answer through the REST contract (``contract``); every failure comes back as an outcome.

Lookups are ``GET target?key=K`` (socketmap adds ``name=MAP`` first), or go to the map's own
target (``maps``, ``routing``); policy is a form or JSON ``POST``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..core.model import (
    Answer,
    Failure,
    LoginRequest,
    LookupRequest,
    PermanentError,
    PolicyRequest,
    TemporaryError,
    Timeout,
)
from ..core.stats import ApiStats
from ..httpclient import (
    ClientSettings,
    Credentials,
    Headers,
    HttpClient,
    HttpError,
    HttpResponse,
    InvalidRequest,
    RequestTimeout,
    ResponseTooLarge,
    Target,
    open_client,
    uses_native_client,
)
from ..httpclient.oauth2 import TokenUnavailable
from .contract import PLAIN, ResponseMapping, cache_max_age, lookup_outcome, policy_outcome
from .encoding import form_body, json_body
from .login import RequestFormat, login_body, login_outcome
from .routing import Route

JSON = "application/json"
Send = Callable[[Headers, float | None], Awaitable[HttpResponse]]
"""One request, with these headers, within this budget (``None``: the endpoint's timeout)."""


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the REST side needs of an endpoint: its target, its HTTP client's settings, its
    credentials and how to join lists."""

    target: Target | None
    """``None`` only for a socketmap endpoint whose every map has its own (``maps``)."""
    http: ClientSettings
    credentials: Credentials
    list_separator: str
    mapping: ResponseMapping = PLAIN
    """How the endpoint target's lookup answers read (``value-field``, ``not-found-status``)."""
    maps: Mapping[bytes, Route] = field(default_factory=dict)
    """socketmap: the maps with their own target, by name (``maps``)."""
    policy_format: Literal["form", "json"] = "form"
    login_format: RequestFormat = "form"
    """sasl: the login as a form or as JSON (``request-format``)."""
    renews_on_401: bool = False
    """OAuth2: a 401 means the token went stale: renewed, the request sent once more, and a
    401 again is a temporary error (the API, not the key, is at fault), never "not found"."""


class RestBackend:
    """Asks one endpoint's REST target; every failure comes back as an outcome, never raised."""

    def __init__(self, settings: BackendSettings) -> None:
        self._separator = settings.list_separator
        self._login_format = settings.login_format
        self._policy_format = settings.policy_format
        self._credentials = settings.credentials
        self._renews_on_401 = settings.renews_on_401
        self._timeout = settings.http.timeout
        self._clients: dict[tuple[str, str, int | None, bool], HttpClient] = {}
        """One per origin, the engine its URL needs: the native client serves one origin."""
        self._default: tuple[Route, HttpClient] | None = None
        if settings.target is not None:
            route = Route.of(settings.target, settings.mapping)
            self._default = (route, self._client_for(route.target, settings.http))
        self._maps = {
            name: (route, self._client_for(route.target, settings.http))
            for name, route in settings.maps.items()
        }
        self._may_refuse = bool(self._maps) or self._default is None or self._default[0].templated
        """Only maps and ``{key}`` templates refuse a lookup: the plain path routes it once."""
        self.stats = ApiStats()

    def _client_for(self, target: Target, http: ClientSettings) -> HttpClient:
        native = uses_native_client(target.configured)
        origin = (target.scheme, target.host, target.port, native)
        client = self._clients.get(origin)
        if client is None:
            client = self._clients[origin] = open_client(target, http)
        return client

    @property
    def _endpoint_route(self) -> tuple[Route, HttpClient]:
        """The endpoint's target, which every endpoint but a socketmap one with ``maps`` has."""
        if self._default is None:
            raise InvalidRequest("the endpoint has no target")
        return self._default

    def refusal(self, request: LookupRequest) -> PermanentError | None:
        """Why ``request`` cannot be asked at all (a map without a target, a key that cannot be
        a path segment), or ``None``: answered before the breaker, which must learn only from
        the API's answers."""
        if not self._may_refuse:
            return None
        routed = self._routed(request)
        return routed if isinstance(routed, PermanentError) else None

    def _routed(
        self, request: LookupRequest
    ) -> tuple[Route, HttpClient, tuple[Target, str]] | PermanentError:
        """The route, its client, and the target and query of the GET."""
        routed = self._maps.get(request.map_name) if request.map_name else None
        routed = routed or self._default
        if routed is None:
            name = (request.map_name or b"").decode("utf-8", "replace")
            return PermanentError(f"unknown map {name}")
        route, client = routed
        where = route.request(request)
        return where if isinstance(where, PermanentError) else (route, client, where)

    async def lookup(self, request: LookupRequest, request_id: str, budget: float | None) -> Answer:
        """``budget`` is the time left for a retry; ``None`` (a first attempt) leaves the
        endpoint's own ``request-timeout``."""
        routed = self._routed(request)
        if isinstance(routed, PermanentError):
            return Answer(routed)  # the service asks ``refusal`` first; any other caller too
        route, client, (target, query) = routed

        def send(headers: Headers, budget: float | None) -> Awaitable[HttpResponse]:
            return client.get(target, query, headers, request_id, budget)

        response = await self._ask(send, budget)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        outcome = lookup_outcome(
            response.status, response.body, response.content_type, self._separator, route.mapping
        )
        return Answer(outcome, cache_max_age(response.cache_control))

    async def check_policy(
        self, request: PolicyRequest, request_id: str, budget: float | None
    ) -> Answer:
        """A policy answer is never cached: its ``max_age`` stays ``None``."""
        route, client = self._endpoint_route
        send: Send
        if self._policy_format == "json":
            body = json_body(request)

            def send(headers: Headers, budget: float | None) -> Awaitable[HttpResponse]:
                return client.post(
                    route.target, body, headers, request_id, budget, content_type=JSON
                )

        else:
            body = form_body(request)

            def send(headers: Headers, budget: float | None) -> Awaitable[HttpResponse]:
                return client.post_form(route.target, body, headers, request_id, budget)

        response = await self._ask(send, budget)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        return Answer(policy_outcome(response.status, response.body))

    async def authenticate(
        self, request: LoginRequest, request_id: str, budget: float | None
    ) -> Answer:
        """A login is never cached by the API's say-so: its ``max_age`` stays ``None``."""
        body, content_type = login_body(request, self._login_format)
        route, client = self._endpoint_route

        def send(headers: Headers, budget: float | None) -> Awaitable[HttpResponse]:
            return client.post(
                route.target, body, headers, request_id, budget, content_type=content_type
            )

        response = await self._ask(send, budget)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        outcome = login_outcome(
            response.status, response.body, response.content_type, request.username
        )
        return Answer(outcome)

    def start(self) -> None:
        """Credentials that must be obtained (an OAuth2 token) are asked for now, so that the
        first request need not wait; if that fails, the first requests ask again."""
        self._credentials.current()

    async def _ask(self, send: Send, budget: float | None) -> HttpResponse | Failure:
        """The response, or the failure as an outcome; timed and counted either way.

        Headers the credentials must obtain first (a token) are waited for within the
        attempt's budget. With ``renews_on_401``, a 401 renews them (or takes those a
        concurrent renewal brought) and the request goes once more, in what is left of it."""
        started = time.perf_counter()
        allowed = self._timeout if budget is None else budget
        credentials = self._credentials
        try:
            headers = credentials.current()
            if headers is None:
                headers = await _renewed(credentials, allowed)
                budget = _left(started, allowed)
            response = await send(headers, budget)
            if response.status == 401 and self._renews_on_401:
                self.stats.responses[401] += 1
                fresh = credentials.current()
                if fresh is None or fresh is headers:  # nobody renewed since: this one does
                    fresh = await _renewed(credentials, _left(started, allowed))
                response = await send(fresh, _left(started, allowed))
        except HttpError as error:
            return self._failure(error)
        finally:
            self.stats.latency.observe(time.perf_counter() - started)
        self.stats.responses[response.status] += 1
        if response.status == 401 and self._renews_on_401:
            return TemporaryError("API refused a new OAuth2 token (HTTP 401)")
        return response

    def _failure(self, error: HttpError) -> Failure:
        """Counted by kind; reasons name the kind only: no URL, no header, nothing secret."""
        if isinstance(error, RequestTimeout):
            self.stats.errors["timeout"] += 1
            return Timeout("API did not answer in time")
        if isinstance(error, ResponseTooLarge):
            self.stats.errors["too-large"] += 1
            return TemporaryError("API answer exceeds max-response-bytes")
        if isinstance(error, TokenUnavailable):
            self.stats.errors["oauth2-token"] += 1
            return TemporaryError(f"OAuth2 token endpoint failed: {error}")
        self.stats.errors["transport"] += 1
        return TemporaryError(f"API request failed: {type(error).__name__}")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


async def _renewed(credentials: Credentials, seconds: float) -> Headers:
    """Renewed headers, waited for ``seconds`` at most."""
    try:
        async with asyncio.timeout(seconds):
            return await credentials.renew()
    except TimeoutError:
        raise RequestTimeout("API did not answer in time") from None


def _left(started: float, allowed: float) -> float:
    """Seconds left of an attempt's budget; ``RequestTimeout`` if none."""
    left = allowed - (time.perf_counter() - started)
    if left <= 0:
        raise RequestTimeout("API did not answer in time")
    return left
