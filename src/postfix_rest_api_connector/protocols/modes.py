"""The table of modes: for each, its decoder, its reply table, the service call that answers it
and the config keys that only it accepts.

Every other place (the endpoint's wiring, the config's checks, the ``query`` and ``check-config``
commands) asks this table, so a new mode is one entry here and one module beside this one. A
name that is not in the table is not a mode: there is no fallback.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from . import Decoder, DecoderLimits, ReplyTable, policy, socketmap, tcp_table


class Call(enum.Enum):
    """Which call of the lookup service answers a mode's requests."""

    LOOKUP = "lookup"
    """A key (and a map name) to a value; answers may be cached and coalesced."""
    POLICY = "policy"
    """A policy request to an action; never cached."""


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


LOOKUP_KEYS = frozenset(
    {"cache-ttl", "negative-cache-ttl", "cache-max-entries", "cache-control", "stale-if-error"}
)
POLICY_KEYS = frozenset({"failure-action", "max-policy-attributes"})


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
            LOOKUP_KEYS,
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
    )
}
"""Every mode, by the name the config gives it."""
MODE_KEYS = frozenset().union(*(mode.keys for mode in MODES.values()))
"""Config keys that only some modes accept."""


def modes_accepting(key: str) -> list[str]:
    """The names of the modes that accept the mode-specific ``key``, in table order."""
    return [mode.name for mode in MODES.values() if key in mode.keys]
