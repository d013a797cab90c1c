"""The REST contract: how an API's HTTP answer becomes an outcome, row by row (README, "The REST
contract"). Pure functions of status, body and headers."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


NOT_FOUND_STATUS = frozenset({404})


@dataclass(frozen=True, slots=True)
class ResponseMapping:
    """How a 200's body and the other statuses read (``value-field``, ``not-found-status``);
    the default is the plain contract, a JSON array of strings."""

    value_field: tuple[str, ...] | None = None
    """The dot path's steps (``data.mailbox`` gives ``("data", "mailbox")``)."""
    not_found_status: frozenset[int] = NOT_FOUND_STATUS


PLAIN = ResponseMapping()


def lookup_outcome(
    status: int,
    body: bytes,
    content_type: str | None,
    separator: str,
    mapping: ResponseMapping = PLAIN,
) -> Outcome:
    """The REST contract for lookups, row by row."""
    if status in mapping.not_found_status:
        if content_type is not None and "html" in content_type.lower():
            # a proxy's or ingress's error page, not the API saying "no such key"
            return TemporaryError(f"API answered {status} with an HTML page")
        return NOT_FOUND
    if status != 200:
        return _status_failure(status)
    if not _json_content_type(content_type):
        return TemporaryError(f"API answered with content type {content_type!r}, not JSON")
    if mapping.value_field is not None:
        return field_outcome(body, mapping.value_field, separator)
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
    return _joined(values, separator)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def field_outcome(body: bytes, path: tuple[str, ...], separator: str) -> Outcome:
    """The value at ``path`` in a 200's JSON body (``value-field``).

    Numbers keep the text the API wrote (no conversion, so no size limit to trip on). ``null``,
    ``[]`` or ``""`` there is a miss; a missing step, an object or a boolean means the API
    changed shape, a temporary error. Of duplicate keys the last wins, as in ``json``.
    """
    try:
        node = json.loads(body, parse_int=str, parse_float=str, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return TemporaryError("API answered with invalid JSON")
    for step in path:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif (
            isinstance(node, list) and step.isdecimal() and step.isascii() and int(step) < len(node)
        ):
            node = node[int(step)]
        else:
            return TemporaryError("API answer has no value-field")
    if node is None or node in ("", []):
        return NOT_FOUND
    if isinstance(node, str):
        return _joined((node,), separator)
    if isinstance(node, list) and all(isinstance(value, str) for value in node):
        return _joined(node, separator)
    return TemporaryError("API answered with a value-field that is not a string, number or list")


def _joined(values: Sequence[str], separator: str) -> Outcome:
    """Strings and numbers' texts joined, if Postfix can take the result."""
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
    """``action=X`` (Rust predecessor), ``X`` (Kotlin predecessor) or ``{"action": "X"}``: one
    line, nothing else, whichever form."""
    if status != 200:
        return _status_failure(status)
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return TemporaryError("API answered with a policy action that is not UTF-8")
    if text.startswith("{"):
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            return TemporaryError("API answered with invalid JSON")
        action = answer.get("action") if isinstance(answer, dict) else None
        if not isinstance(action, str):
            return TemporaryError('API answered with JSON without a string "action"')
        text = action.strip()
    elif text[:7].lower() == "action=":
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
