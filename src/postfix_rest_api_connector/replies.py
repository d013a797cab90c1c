"""The one place where an outcome becomes a protocol reply, one table per protocol.

Every failure is an error reply to Postfix (defer), never "not found" (bounce), DUNNO or OK.
"""

from __future__ import annotations

from .codecs import UnsendableReply, policy, socketmap, tcp_table
from .model import Found, NotFound, Outcome, PermanentError, TemporaryError, Timeout

_EMPTY_VALUE = "empty value"
"""Both protocols would turn an empty found value into a warning or a miss: send an error."""


def tcp_table_reply(outcome: Outcome) -> bytes:
    """tcp_table has no permanent-error code: every failure is ``400``."""
    match outcome:
        case Found(value) if value:
            try:
                return tcp_table.encode_reply(200, value)
            except UnsendableReply:
                return tcp_table.encode_reply(400, "answer too long for tcp_table")
        case NotFound():
            return tcp_table.encode_reply(500, "not found")
        case TemporaryError(reason) | PermanentError(reason) | Timeout(reason):
            return tcp_table.encode_reply(400, reason[:200])
        case Found():
            return tcp_table.encode_reply(400, _EMPTY_VALUE)


def socketmap_reply(outcome: Outcome) -> bytes:
    match outcome:
        case Found(value) if value:
            try:
                return socketmap.encode_reply(b"OK", value)
            except UnsendableReply:
                return socketmap.encode_reply(b"TEMP", "answer too long for socketmap")
        case NotFound():
            return socketmap.encode_reply(b"NOTFOUND", "")
        case TemporaryError(reason):
            return socketmap.encode_reply(b"TEMP", reason[:200])
        case PermanentError(reason):
            return socketmap.encode_reply(b"PERM", reason[:200])
        case Timeout(reason):
            return socketmap.encode_reply(b"TIMEOUT", reason[:200])
        case Found():
            return socketmap.encode_reply(b"TEMP", _EMPTY_VALUE)


def policy_reply(outcome: Outcome, failure_reply: bytes) -> bytes:
    """A found action is passed on; anything else gets the endpoint's pre-encoded failure reply."""
    if isinstance(outcome, Found):
        try:
            return policy.encode_reply(outcome.value)
        except UnsendableReply:
            return failure_reply
    return failure_reply
