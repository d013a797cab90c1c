"""The REST backend of one endpoint: asks its HTTP client with the endpoint's credentials and maps
each answer through the REST contract (``contract``); every failure comes back as an outcome.

Lookups are ``GET target?key=K`` (socketmap adds ``name=MAP`` first); policy is a form ``POST``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass

from ..core.model import (
    Answer,
    Failure,
    LoginRequest,
    LookupRequest,
    PolicyRequest,
    TemporaryError,
    Timeout,
)
from ..core.stats import ApiStats
from ..httpclient import (
    ClientSettings,
    Credentials,
    HttpError,
    HttpResponse,
    RequestTimeout,
    ResponseTooLarge,
    Target,
    open_client,
)
from .contract import cache_max_age, lookup_outcome, policy_outcome
from .encoding import form_body, lookup_query
from .login import RequestFormat, login_body, login_outcome


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the REST side needs of an endpoint: its target, its HTTP client's settings, its
    credentials and how to join lists."""

    target: Target
    http: ClientSettings
    credentials: Credentials
    list_separator: str
    login_format: RequestFormat = "form"
    """sasl: the login as a form or as JSON (``request-format``)."""


class RestBackend:
    """Asks one endpoint's REST target; every failure comes back as an outcome, never raised."""

    def __init__(self, settings: BackendSettings) -> None:
        self._separator = settings.list_separator
        self._login_format = settings.login_format
        self._target = settings.target
        self._credentials = settings.credentials
        self._client = open_client(settings.target, settings.http)
        self.stats = ApiStats()

    async def lookup(self, request: LookupRequest, request_id: str, budget: float | None) -> Answer:
        """``budget`` is the time left for a retry; ``None`` (a first attempt) leaves the
        endpoint's own ``request-timeout``."""
        headers = self._credentials.current() or await self._credentials.renew()
        sent = self._client.get(self._target, lookup_query(request), headers, request_id, budget)
        response = await self._ask(sent)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        outcome = lookup_outcome(
            response.status, response.body, response.content_type, self._separator
        )
        return Answer(outcome, cache_max_age(response.cache_control))

    async def check_policy(
        self, request: PolicyRequest, request_id: str, budget: float | None
    ) -> Answer:
        """A policy answer is never cached: its ``max_age`` stays ``None``."""
        headers = self._credentials.current() or await self._credentials.renew()
        sent = self._client.post_form(self._target, form_body(request), headers, request_id, budget)
        response = await self._ask(sent)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        return Answer(policy_outcome(response.status, response.body))

    async def authenticate(
        self, request: LoginRequest, request_id: str, budget: float | None
    ) -> Answer:
        """A login is never cached by the API's say-so: its ``max_age`` stays ``None``."""
        headers = self._credentials.current() or await self._credentials.renew()
        body, content_type = login_body(request, self._login_format)
        sent = self._client.post(
            self._target, body, headers, request_id, budget, content_type=content_type
        )
        response = await self._ask(sent)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        outcome = login_outcome(
            response.status, response.body, response.content_type, request.username
        )
        return Answer(outcome)

    async def _ask(self, sent: Awaitable[HttpResponse]) -> HttpResponse | Failure:
        """The response, or the failure as an outcome; timed and counted either way."""
        started = time.perf_counter()
        try:
            response = await sent
        except HttpError as error:
            return self._failure(error)
        finally:
            self.stats.latency.observe(time.perf_counter() - started)
        self.stats.responses[response.status] += 1
        return response

    def _failure(self, error: HttpError) -> Failure:
        """Counted by kind; reasons name the kind only: no URL, no header, nothing secret."""
        if isinstance(error, RequestTimeout):
            self.stats.errors["timeout"] += 1
            return Timeout("API did not answer in time")
        if isinstance(error, ResponseTooLarge):
            self.stats.errors["too-large"] += 1
            return TemporaryError("API answer exceeds max-response-bytes")
        self.stats.errors["transport"] += 1
        return TemporaryError(f"API request failed: {type(error).__name__}")

    async def close(self) -> None:
        await self._client.close()
