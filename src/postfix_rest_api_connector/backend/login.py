"""The REST contract of SMTP AUTH (sasl): what the API gets for a login, and how its answer
becomes an outcome (README, "The REST contract").

``POST TARGET`` with the credentials and what smtpd says about the session, as a form or as a
JSON object (``request-format``). 200 is a success (an optional ``{"user": "NAME"}`` names the
login); 401, 403 and 404 refuse it; anything else is a temporary failure, never a refusal.
The body carries the password: it is built here, sent, and never logged.
"""

from __future__ import annotations

import json
from typing import Literal

from ..core.model import NOT_FOUND, Found, LoginRequest, Outcome, TemporaryError
from ..protocols.sasl import is_valid_user
from .contract import _json_content_type
from .encoding import form_encoded

RequestFormat = Literal["form", "json"]
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
REFUSED = frozenset({401, 403, 404})
"""The API's "no": unknown user, wrong password, login not allowed."""


def login_fields(request: LoginRequest) -> tuple[tuple[str, str], ...]:
    """Every field the API gets, in this order."""
    return (
        ("username", request.username),
        ("password", request.password),
        ("mechanism", request.mechanism),
        ("service", request.service),
        ("remote_ip", request.remote_ip),
        ("local_ip", request.local_ip),
        ("secured", "yes" if request.secured else "no"),
    )


def login_body(request: LoginRequest, request_format: RequestFormat) -> tuple[bytes, str]:
    """The body and its content type: the same fields and values either way."""
    fields = login_fields(request)
    if request_format == "json":
        return json.dumps(dict(fields), ensure_ascii=False).encode(), JSON
    return form_encoded((name.encode(), value.encode()) for name, value in fields), FORM


def login_outcome(status: int, body: bytes, content_type: str | None, username: str) -> Outcome:
    """``Found(user)`` (the API's name for the login, or the one typed), ``NotFound`` for a
    refusal, ``TemporaryError`` for everything else."""
    if status in REFUSED:
        return NOT_FOUND
    if status != 200:
        return TemporaryError(f"API answered HTTP {status}")
    if not body.strip():
        return Found(username)
    if not _json_content_type(content_type):
        return TemporaryError(f"API answered with content type {content_type!r}, not JSON")
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return TemporaryError("API answered with invalid JSON")
    if not isinstance(answer, dict):
        return TemporaryError("API answered with JSON that is not an object")
    user = answer.get("user", username)
    if not isinstance(user, str) or not is_valid_user(user) or not _encodable(user):
        return TemporaryError("API answered with a user name Postfix cannot take")
    return Found(user)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
