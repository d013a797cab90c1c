"""The table of modes: for each, its decoder, its reply table, the service call that answers it
and the config keys that only it accepts.

Every other place (the endpoint's wiring, the config's checks, the ``query`` and ``check-config``
commands) asks this table, so a new mode is one entry here and one module beside this one. A
name that is not in the table is not a mode: there is no fallback.
"""

from __future__ import annotations

import enum
import itertools
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ..core.model import Request
from . import Decoder, DecoderLimits, ReplyTable, policy, sasl, socketmap, tcp_table


class Call(enum.Enum):
    """Which call of the lookup service answers a mode's requests."""

    LOOKUP = "lookup"
    """A key (and a map name) to a value; answers may be cached and coalesced."""
    POLICY = "policy"
    """A policy request to an action; never cached."""
    LOGIN = "login"
    """SMTP AUTH credentials to the user name they log in as; only successes may be cached."""


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    """What an endpoint's config says about its replies."""

    failure_action: str


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    call: Call
    new_decoder: Callable[[DecoderLimits], Decoder]
    new_replies: Callable[[ReplyOptions], ReplyTable]
    keys: frozenset[str]
    """The config keys, of those in ``MODE_KEYS``, that this mode accepts."""
    default_retries: int
    """Extra attempts after a transient failure unless ``retries`` says: a lookup is safe to
    repeat, a policy request only when the administrator says so."""
    names_maps: bool = False
    """Its requests carry a map name (socketmap: one endpoint serves many maps)."""
    greeting: Callable[[], bytes] | None = None
    """What the server sends first on every new connection, for a protocol that speaks first."""
    concurrent: bool = False
    """Its requests carry ids: each is answered as soon as its answer is known, several at a
    time, and an empty reply resets the connection (sasl)."""
    close_with_reset: bool = False
    """Every close of a TCP connection is a reset, never a FIN (sasl: smtpd takes a FIN for a
    failure of its next login too, and reconnects quietly after a reset)."""
    answer_itself: Callable[[Request], bytes | None] | None = None
    """The codec's own reply to a request the service never sees (sasl's challenges)."""
    max_request_timeout: int | None = None
    """The highest ``request-timeout`` (ms) its client waits for (below the config's own)."""


LOOKUP_KEYS = frozenset(
    {
        "cache-ttl",
        "negative-cache-ttl",
        "cache-max-entries",
        "cache-control",
        "stale-if-error",
        "value-field",
        "not-found-status",
    }
)
POLICY_KEYS = frozenset({"failure-action", "max-policy-attributes", "policy-format"})
SASL_KEYS = frozenset(
    {"failure-delay", "allow-plaintext", "request-format", "cache-ttl", "cache-max-entries"}
)
SASL_MAX_REQUEST_TIMEOUT = 8000
"""smtpd waits 10 s for each read from the auth server, then gives up (454) and reconnects: an
answer must leave well before that, after the API's answer or the ``failure-delay``."""
_sasl_connections = itertools.count(1)


def _sasl_greeting() -> bytes:
    """Per connection: this process, a connection number and a cookie nobody can use (we serve
    no auth-master requests, the only use of Dovecot's cookie)."""
    return sasl.handshake(os.getpid(), next(_sasl_connections), secrets.token_hex(16))


def _lookup_replies(table: ReplyTable) -> Callable[[ReplyOptions], ReplyTable]:
    return lambda _: table


MODES: dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode(
            "tcp-lookup",
            Call.LOOKUP,
            lambda limits: tcp_table.TcpTableDecoder(limits.max_request),
            _lookup_replies(tcp_table.reply),
            LOOKUP_KEYS,
            default_retries=1,
        ),
        Mode(
            "socketmap-lookup",
            Call.LOOKUP,
            lambda limits: socketmap.SocketmapDecoder(limits.max_request),
            _lookup_replies(socketmap.reply),
            LOOKUP_KEYS | {"maps"},
            default_retries=1,
            names_maps=True,
        ),
        Mode(
            "policy",
            Call.POLICY,
            lambda limits: policy.PolicyDecoder(limits.max_request, limits.max_attributes),
            lambda options: policy.Replies(options.failure_action),
            POLICY_KEYS,
            default_retries=0,
        ),
        Mode(
            "sasl",
            Call.LOGIN,
            lambda limits: sasl.SaslDecoder(
                min(limits.max_request, sasl.MAX_LINE), limits.allow_plaintext
            ),
            lambda _: sasl.reply,
            SASL_KEYS,
            default_retries=0,
            greeting=_sasl_greeting,
            concurrent=True,
            close_with_reset=True,
            answer_itself=sasl.answer_itself,
            max_request_timeout=SASL_MAX_REQUEST_TIMEOUT,
        ),
    )
}
"""Every mode, by the name the config gives it."""
MODE_KEYS = frozenset().union(*(mode.keys for mode in MODES.values()))
"""Config keys that only some modes accept."""


def modes_accepting(key: str) -> list[str]:
    """The names of the modes that accept the mode-specific ``key``, in table order."""
    return [mode.name for mode in MODES.values() if key in mode.keys]
