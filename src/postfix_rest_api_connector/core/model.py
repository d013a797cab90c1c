"""The requests every mode decodes and the closed set of outcomes every mode answers.

Codecs turn bytes into these requests; the service turns a request into an outcome; one table per
protocol (its module in ``protocols``) turns an outcome into bytes. Nothing else crosses the layers.

A request field that may hold a secret (a password) is declared with ``secret()``: it is left out
of the request's ``repr``, so the DEBUG line of a request, or any other log line that shows one,
cannot carry it by accident.

The classes built for every request (``LookupRequest``, ``PolicyRequest``, ``Found``, ``Answer``)
write their own ``__init__`` (``init=False``). Compiled with mypyc it is native code, and
mypyc turns its ``object.__setattr__`` into a plain store; the ``__init__`` dataclasses
generates stays interpreted, and a frozen one sets each field through ``object.__setattr__``:
about 360 ns an object against 25 (docs/performance.md, 2026-12-03 "Instructions per request").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SECRET = "secret"  # noqa: S105 - the name of a metadata key, not a password
"""The field metadata key that ``secret()`` sets."""


def secret() -> Any:
    """A dataclass field that never appears in ``repr`` (and says so in its metadata)."""
    return field(repr=False, metadata={SECRET: True})


@dataclass(frozen=True, slots=True, init=False)
class LookupRequest:
    """A table lookup: tcp_table has no map name, socketmap always has one."""

    key: bytes
    map_name: bytes | None = None

    def __init__(self, key: bytes, map_name: bytes | None = None) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "map_name", map_name)


@dataclass(frozen=True, slots=True, init=False)
class PolicyRequest:
    """One policy-delegation request: the attributes in the order Postfix sent them."""

    attributes: tuple[tuple[bytes, bytes], ...]

    def __init__(self, attributes: tuple[tuple[bytes, bytes], ...]) -> None:
        object.__setattr__(self, "attributes", attributes)


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """SMTP AUTH credentials for the API to check (sasl), as Postfix's smtpd passed them on.

    ``id`` names the exchange on its connection (the reply carries it back); the password is
    never shown, and reaches nothing but the API request's body.
    """

    id: bytes
    mechanism: str
    """``PLAIN`` or ``LOGIN``, upper case whatever the client typed."""
    username: str
    service: str
    """Postfix's ``smtpd_sasl_service``, ``smtp`` unless changed."""
    local_ip: str
    remote_ip: str
    """The SMTP client's address; empty when smtpd does not know it."""
    secured: bool
    """The SMTP session runs over TLS."""
    password: str = secret()


@dataclass(frozen=True, slots=True)
class LoginChallenge:
    """A SASL exchange that needs more from the client before it can be checked (the LOGIN
    mechanism's ``Username:``); the codec answers it itself, the service never sees it."""

    id: bytes
    challenge: bytes
    """The raw challenge; the reply carries it base64-encoded."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that was framed correctly but cannot be served; the connection stays usable."""

    reason: str
    tag: bytes = b""
    """What the error reply names the request by, in a protocol whose replies carry the id of
    the request they answer (sasl); empty where replies go out in request order."""


@dataclass(frozen=True, slots=True, init=False)
class Found:
    """A value (lookups: the joined list; policy: the action line)."""

    value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "value", value)


@dataclass(frozen=True, slots=True)
class NotFound:
    """A definite miss: the only outcome that may make Postfix bounce mail as unknown."""


@dataclass(frozen=True, slots=True)
class TemporaryError:
    """The API failed in a way that may pass: Postfix must defer, never bounce."""

    reason: str


@dataclass(frozen=True, slots=True)
class PermanentError:
    """The API or the request is misconfigured: still an error for Postfix, never a miss."""

    reason: str


@dataclass(frozen=True, slots=True)
class Timeout:
    """The API did not answer within the endpoint's request timeout."""

    reason: str


Request = LookupRequest | PolicyRequest | LoginRequest | LoginChallenge | Malformed
"""Whatever a decoder gives the connection."""
Outcome = Found | NotFound | TemporaryError | PermanentError | Timeout
Failure = TemporaryError | PermanentError | Timeout

NOT_FOUND = NotFound()


@dataclass(frozen=True, slots=True, init=False)
class Answer:
    """A lookup outcome with the API's caching instruction (``Cache-Control``).

    ``max_age`` is ``None`` when the API said nothing, ``0`` for ``no-store``/``no-cache``.
    """

    outcome: Outcome
    max_age: float | None = None

    def __init__(self, outcome: Outcome, max_age: float | None = None) -> None:
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "max_age", max_age)
