"""The REST contract: how an API's HTTP answer becomes an outcome, row by row (README, "The REST
contract"). Pure functions of status, body and headers."""

from __future__ import annotations

import json
import re

from ..core.model import NOT_FOUND, Found, Outcome, PermanentError, TemporaryError

_ACTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\s|$)|[45]\d\d\s+\S")
"""access(5) actions start with a word (``REJECT``, ``DUNNO``) or a 4xx/5xx code with text.
JSON and HTML do not; a bare number would make Postfix permit the mail."""


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
