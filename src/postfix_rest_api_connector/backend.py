"""The REST side: one HTTP client per endpoint, and the mapping of HTTP answers to outcomes.

Lookups are ``GET target?key=K`` (socketmap adds ``name=MAP`` first); policy is a form ``POST``.
Keys and attributes are percent-encoded from their raw bytes here and nowhere else, so a ``+`` or
``&`` from Postfix reaches the API as itself and never as a separator.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from .httpclient import (
    ClientSettings,
    HttpError,
    HttpResponse,
    RequestTimeout,
    ResponseTooLarge,
    open_client,
)
from .model import (
    NOT_FOUND,
    Answer,
    Failure,
    Found,
    LookupRequest,
    Outcome,
    PermanentError,
    PolicyRequest,
    TemporaryError,
    Timeout,
)
from .stats import ApiStats

_ACTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s|$)|[45]\d\d\s+\S")
"""access(5) actions start with a word (``REJECT``, ``DUNNO``) or a 4xx/5xx code with text.
JSON and HTML do not; a bare number would make Postfix permit the mail."""


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """What the REST side needs of an endpoint: its HTTP client's settings and how to join lists."""

    http: ClientSettings
    list_separator: str


def _json_content_type(content_type: str | None) -> bool:
    """No type, ``application/json`` or any ``+json`` type; an HTML error page is not an answer."""
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


_ONE_PLAIN_STRING = re.compile(rb'[ \t\n\r]*\[[ \t\n\r]*"([^"\\\x00-\x1f]+)"[ \t\n\r]*\][ \t\n\r]*')
"""The usual answer, ``["value"]`` with no escape and no control character, read without the
JSON decoder; whatever else goes to ``json.loads`` and the checks after it."""


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
    plain = _ONE_PLAIN_STRING.fullmatch(body)
    if plain is not None:
        try:
            return Found(plain[1].decode("utf-8"))
        except UnicodeDecodeError:
            pass  # the general path says why
    return decoded_outcome(body, separator)


def decoded_outcome(body: bytes, separator: str) -> Outcome:
    """A 200's JSON body, whatever it holds: a list of strings or the reason it is not one."""
    try:
        values = json.loads(body)  # bytes: a BOM or UTF-16 is still read, as before
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


_UNRESERVED_COMPLEMENT = re.compile(rb"[^A-Za-z0-9_.~-]")
"""What ``quote_from_bytes(safe="")`` and ``quote_plus`` escape. Most keys and attribute values
have little of it, and a regex is several times cheaper than those functions."""
_PERCENT = {bytes([byte]): b"%%%02X" % byte for byte in range(256)}
_FORM = {**_PERCENT, b" ": b"+"}


def _percent(match: re.Match[bytes]) -> bytes:
    return _PERCENT[match[0]]


def _form(match: re.Match[bytes]) -> bytes:
    return _FORM[match[0]]


def form_body(request: PolicyRequest) -> bytes:
    """Every attribute in order, names and values form-encoded from their raw bytes."""
    escape = _UNRESERVED_COMPLEMENT.sub
    return b"&".join(
        escape(_form, name) + b"=" + escape(_form, value) for name, value in request.attributes
    )


class RestBackend:
    """Asks one endpoint's REST target; every failure comes back as an outcome, never raised."""

    def __init__(self, settings: BackendSettings) -> None:
        self._separator = settings.list_separator
        self._client = open_client(settings.http)
        self.stats = ApiStats()

    @staticmethod
    def lookup_query(request: LookupRequest) -> str:
        escape = _UNRESERVED_COMPLEMENT.sub
        key = escape(_percent, request.key).decode("ascii")
        if request.map_name is None:
            return f"key={key}"
        return f"name={escape(_percent, request.map_name).decode('ascii')}&key={key}"

    async def lookup(self, request: LookupRequest, request_id: str, budget: float | None) -> Answer:
        """``budget`` is the time left for a retry; ``None`` (a first attempt) leaves the
        endpoint's own ``request-timeout``."""
        response = await self._ask(self._client.get(self.lookup_query(request), request_id, budget))
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
        sent = self._client.post_form(form_body(request), request_id, budget)
        response = await self._ask(sent)
        if not isinstance(response, HttpResponse):
            return Answer(response)
        return Answer(policy_outcome(response.status, response.body))

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
