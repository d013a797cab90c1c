"""The REST side: one pyreqwest client per endpoint, and the mapping of HTTP answers to outcomes.

Lookups are ``GET target?key=K`` (socketmap adds ``name=MAP`` first); policy is a form ``POST``.
Keys and attributes are percent-encoded from their raw bytes here and nowhere else, so a ``+`` or
``&`` from Postfix reaches the API as itself and never as a separator.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import quote_from_bytes, quote_plus

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError, RequestTimeoutError
from pyreqwest.request import RequestBuilder

from .model import (
    NOT_FOUND,
    Answer,
    Found,
    LookupRequest,
    Outcome,
    PermanentError,
    PolicyRequest,
    TemporaryError,
    Timeout,
)
from .stats import ApiStats

_FORM = "application/x-www-form-urlencoded"
_ACTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s|$)|[45]\d\d\s+\S")
"""access(5) actions start with a word (``REJECT``, ``DUNNO``) or a 4xx/5xx code with text.
JSON and HTML do not; a bare number would make Postfix permit the mail."""
_POOL_IDLE_PER_HOST = 1024
"""Enough idle keep-alive connections that steady load opens no new ones."""


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the REST side needs of an endpoint, in its own terms (seconds, bytes)."""

    target: str
    user_agent: str
    token: str | None = field(repr=False)
    expects_json: bool
    """Lookups send ``Accept: application/json``; policy answers are plain text."""
    timeout: float
    list_separator: str
    max_response_bytes: int
    ca_pem: bytes | None = field(default=None, repr=False)


class ResponseTooLarge(Exception):
    """The API's body exceeded the endpoint's ``max-response-bytes``."""


def _json_content_type(content_type: str | None) -> bool:
    """No type, ``application/json`` or any ``+json`` type; an HTML error page is not an answer."""
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def lookup_outcome(status: int, body: bytes, content_type: str | None, separator: str) -> Outcome:
    """The REST contract for lookups, row by row."""
    if status == 404:
        if content_type is not None and "html" in content_type.lower():
            # a proxy's or ingress's error page, not the API saying "no such key"
            return TemporaryError("API answered 404 with an HTML page")
        return NOT_FOUND
    if status != 200:
        return _status_failure(status)
    if not _json_content_type(content_type):
        return TemporaryError(f"API answered with content type {content_type!r}, not JSON")
    try:
        values = json.loads(body)
    except (ValueError, RecursionError):
        return TemporaryError("API answered with invalid JSON")
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        return TemporaryError("API answered with JSON that is not an array of strings")
    if not values:
        return NOT_FOUND
    joined = separator.join(values)
    if not joined:
        return TemporaryError("API answered with an empty value")
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return TemporaryError("API answered with a string that is not valid Unicode")
    if "\x00" in joined:
        return TemporaryError("API answered with a NUL character, which Postfix would cut at")
    return Found(joined)


def policy_outcome(status: int, body: bytes) -> Outcome:
    """``action=X`` (Rust predecessor) or ``X`` (Kotlin predecessor), one line, nothing else."""
    if status != 200:
        return _status_failure(status)
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return TemporaryError("API answered with a policy action that is not UTF-8")
    if text[:7].lower() == "action=":
        text = text[7:].strip()
    if not text or "\n" in text or "\r" in text:
        return TemporaryError("API answered with an empty or multi-line policy action")
    if not _ACTION.match(text):
        return TemporaryError("API answered with text that is not an access(5) action")
    return Found(text)


def cache_max_age(cache_control: str | None) -> float | None:
    """Seconds the API allows an answer to be reused: ``no-store``/``no-cache`` give 0."""
    if cache_control is None:
        return None
    max_age: float | None = None
    for directive in cache_control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in {"no-store", "no-cache"}:
            return 0.0
        if name == "max-age":
            try:
                max_age = float(min(max(int(value.strip().strip('"')), 0), 10**9))
            except ValueError:
                return 0.0
    return max_age


def _status_failure(status: int) -> Outcome:
    if 400 <= status < 500:
        return PermanentError(f"API answered HTTP {status}")
    return TemporaryError(f"API answered HTTP {status}")


def _target_with_query(target: str) -> str:
    """The target followed by the separator that starts the next query parameter."""
    return target + ("&" if "?" in target else "?")


def form_body(request: PolicyRequest) -> bytes:
    """Every attribute in order, names and values form-encoded from their raw bytes."""
    return "&".join(
        f"{quote_plus(name)}={quote_plus(value)}" for name, value in request.attributes
    ).encode("ascii")


class RestBackend:
    """Asks one endpoint's REST target; every failure comes back as an outcome, never raised."""

    def __init__(self, settings: BackendSettings) -> None:
        self._query_prefix = _target_with_query(settings.target)
        self._target = settings.target
        self._separator = settings.list_separator
        self._max_body = settings.max_response_bytes
        self._client = self._build_client(settings)
        self.stats = ApiStats()

    @staticmethod
    def _build_client(settings: BackendSettings) -> Client:
        headers = {"Accept": "application/json"} if settings.expects_json else {}
        if settings.token is not None:
            headers["X-Auth-Token"] = settings.token
        builder = (
            ClientBuilder()
            .user_agent(settings.user_agent)
            .default_headers(headers)
            .timeout(timedelta(seconds=settings.timeout))
            .pool_max_idle_per_host(_POOL_IDLE_PER_HOST)
            .follow_redirects(False)
            .referer(False)
        )
        if settings.ca_pem is not None:
            builder = builder.add_root_certificate_pem(settings.ca_pem)
        return builder.build()

    def lookup_url(self, request: LookupRequest) -> str:
        key = quote_from_bytes(request.key, safe="")
        if request.map_name is None:
            return f"{self._query_prefix}key={key}"
        name = quote_from_bytes(request.map_name, safe="")
        return f"{self._query_prefix}name={name}&key={key}"

    async def lookup(self, request: LookupRequest, request_id: str, budget: float | None) -> Answer:
        try:
            builder = self._client.get(self.lookup_url(request))
            status, body, headers = await self._send(builder, request_id, budget)
        except _FAILURES as error:
            return Answer(self._failure(error))
        outcome = lookup_outcome(status, body, headers.get("content-type"), self._separator)
        return Answer(outcome, cache_max_age(headers.get("cache-control")))

    async def check_policy(
        self, request: PolicyRequest, request_id: str, budget: float | None
    ) -> Outcome:
        try:
            builder = (
                self._client.post(self._target)
                .header("Content-Type", _FORM)
                .body_bytes(form_body(request))
            )
            status, body, _ = await self._send(builder, request_id, budget)
        except _FAILURES as error:
            return self._failure(error)
        return policy_outcome(status, body)

    async def _send(
        self, builder: RequestBuilder, request_id: str, budget: float | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """Status, body (read only for a 200, and only up to the limit) and headers.

        ``budget`` is the time left for a retry, enforced by the HTTP client itself; ``None``
        (a first attempt) leaves the client's own ``request-timeout``.
        """
        builder = builder.header("X-Request-Id", request_id)
        if budget is not None:
            builder = builder.timeout(timedelta(seconds=budget))
        started = time.perf_counter()
        try:
            async with builder.build_streamed() as response:
                status = response.status
                self.stats.responses[status] += 1
                if status == 200:
                    body = bytearray()
                    reader = response.body_reader
                    while (chunk := await reader.read(65536)) is not None:
                        body += chunk
                        if len(body) > self._max_body:
                            raise ResponseTooLarge
                    return status, bytes(body), response.headers
                return status, b"", response.headers
        finally:
            self.stats.latency.observe(time.perf_counter() - started)

    def _failure(self, error: Exception) -> Outcome:
        """Counted by kind; reasons name the kind only: no URL, no header, nothing secret."""
        if isinstance(error, RequestTimeoutError):
            self.stats.errors["timeout"] += 1
            return Timeout("API did not answer in time")
        if isinstance(error, ResponseTooLarge):
            self.stats.errors["too-large"] += 1
            return TemporaryError("API answer exceeds max-response-bytes")
        self.stats.errors["transport"] += 1
        return TemporaryError(f"API request failed: {type(error).__name__}")

    async def close(self) -> None:
        await self._client.close()


_FAILURES = (PyreqwestError, ResponseTooLarge)
