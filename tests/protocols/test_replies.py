"""Outcome -> reply tables: every failure is an error to Postfix, never a miss, DUNNO or OK."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfix_rest_api_connector.core.model import (
    Failure,
    Found,
    LookupRequest,
    NotFound,
    Outcome,
    PermanentError,
    PolicyRequest,
    TemporaryError,
    Timeout,
)
from postfix_rest_api_connector.protocols import policy, socketmap, tcp_table
from postfix_rest_api_connector.protocols.policy import MAX_ACTION
from postfix_rest_api_connector.protocols.socketmap import MAX_REPLY_PAYLOAD, NetstringDecoder
from postfix_rest_api_connector.protocols.tcp_table import MAX_REPLY_LINE, unquote

ASKED = LookupRequest(b"key")
"""What the lookup reply tables are asked for; they answer by the outcome alone."""


def tcp_table_reply(outcome: Outcome) -> bytes:
    return tcp_table.reply(ASKED, outcome)


def socketmap_reply(outcome: Outcome) -> bytes:
    return socketmap.reply(ASKED, outcome)


FAILURES: list[Failure] = [
    TemporaryError("API answered HTTP 503"),
    PermanentError("API answered HTTP 403"),
    Timeout("API did not answer in 5 s"),
]
FAILURE_IDS = ["temporary", "permanent", "timeout"]

failures = st.one_of(
    st.builds(TemporaryError, st.text()),
    st.builds(PermanentError, st.text()),
    st.builds(Timeout, st.text()),
)
outcomes: st.SearchStrategy[Outcome] = st.one_of(
    st.builds(Found, st.text(min_size=1, max_size=1500)),
    st.just(NotFound()),
    failures,
)


# tcp_table ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reply"),
    [
        ("a b%c", b"200 a%20b%25c\n"),
        ("müller@exämple.com", b"200 m%C3%BCller@ex%C3%A4mple.com\n"),
        ("plus+ext@ex.com,b@c:d", b"200 plus+ext@ex.com,b@c:d\n"),
        ("two\nlines\r", b"200 two%0Alines%0D\n"),
        ("a\tb", b"200 a%09b\n"),
    ],
    ids=["space-percent", "utf8", "plus-comma-raw", "newline-cr", "tab"],
)
def test_tcp_found_is_200_hex_quoted(value: str, reply: bytes) -> None:
    assert tcp_table_reply(Found(value)) == reply


def test_tcp_not_found_is_500() -> None:
    reply = tcp_table_reply(NotFound())

    assert reply.startswith(b"500 ")
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1


@pytest.mark.parametrize("outcome", FAILURES, ids=FAILURE_IDS)
def test_tcp_every_failure_is_400(outcome: Failure) -> None:
    reply = tcp_table_reply(outcome)

    assert reply.startswith(b"400 ")
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1


@pytest.mark.parametrize("outcome", FAILURES, ids=FAILURE_IDS)
def test_tcp_failure_with_a_long_multi_line_reason_is_still_one_400_line(outcome: Failure) -> None:
    reason = "ü\r\n" * 100_000

    reply = tcp_table_reply(type(outcome)(reason))

    assert reply.startswith(b"400 ")
    assert reply.count(b"\n") == 1
    assert len(reply) <= MAX_REPLY_LINE


def test_tcp_found_filling_the_line_exactly_is_sent() -> None:
    value = "k" * (MAX_REPLY_LINE - len(b"200 \n"))

    assert tcp_table_reply(Found(value)) == b"200 " + value.encode() + b"\n"


@pytest.mark.parametrize(
    "value",
    ["k" * (MAX_REPLY_LINE - len(b"200 \n") + 1), "ü" * 700, " " * 1400],
    ids=["one-byte-over", "utf8-expands-six-fold", "spaces-expand-three-fold"],
)
def test_tcp_found_too_long_for_the_line_is_400_never_200_or_500(value: str) -> None:
    reply = tcp_table_reply(Found(value))

    assert reply.startswith(b"400 ")
    assert reply.count(b"\n") == 1
    assert len(reply) <= MAX_REPLY_LINE


@given(outcomes)
def test_tcp_any_outcome_is_one_line_postfix_accepts_with_the_right_code(outcome: Outcome) -> None:
    reply = tcp_table_reply(outcome)

    assert len(reply) <= MAX_REPLY_LINE
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1
    assert unquote(reply[4:-1]) is not None
    match outcome:
        case Found(value):
            if reply.startswith(b"200 "):
                assert unquote(reply[4:-1]) == value.encode()
            else:
                assert reply.startswith(b"400 ")
        case NotFound():
            assert reply.startswith(b"500 ")
        case _:
            assert reply.startswith(b"400 ")


# socketmap ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reply"),
    [
        (Found("a b  c"), b"9:OK a b  c,"),
        (Found("a%20b"), b"8:OK a%20b,"),
        (Found("müller@exämple.com,b"), b"25:OK m\xc3\xbcller@ex\xc3\xa4mple.com,b,"),
        (NotFound(), b"9:NOTFOUND ,"),
        (TemporaryError("API answered HTTP 503"), b"26:TEMP API answered HTTP 503,"),
        (PermanentError("API answered HTTP 403"), b"26:PERM API answered HTTP 403,"),
        (Timeout("API did not answer in 5 s"), b"33:TIMEOUT API did not answer in 5 s,"),
    ],
    ids=["found-raw-spaces", "found-no-unquoting", "found-utf8", "not-found", *FAILURE_IDS],
)
def test_socketmap_reply_exact_bytes(outcome: Outcome, reply: bytes) -> None:
    assert socketmap_reply(outcome) == reply


def test_socketmap_found_filling_the_payload_limit_is_sent() -> None:
    value = "k" * (MAX_REPLY_PAYLOAD - len(b"OK "))

    assert socketmap_reply(Found(value)) == b"100000:OK " + value.encode() + b","


@pytest.mark.parametrize(
    "value",
    ["k" * (MAX_REPLY_PAYLOAD - len(b"OK ") + 1), "ü" * 50_000],
    ids=["one-byte-over", "utf8-counted-in-bytes"],
)
def test_socketmap_found_over_the_payload_limit_is_temp(value: str) -> None:
    reply = socketmap_reply(Found(value))

    (payload,) = NetstringDecoder(MAX_REPLY_PAYLOAD).feed(reply)
    assert payload.startswith(b"TEMP ")


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (TemporaryError("x" * 200_000), b"TEMP "),
        (PermanentError("x" * 200_000), b"PERM "),
        (Timeout("x" * 200_000), b"TIMEOUT "),
    ],
    ids=FAILURE_IDS,
)
def test_socketmap_failure_with_a_long_reason_stays_within_the_limit(
    outcome: Failure, status: bytes
) -> None:
    (payload,) = NetstringDecoder(MAX_REPLY_PAYLOAD).feed(socketmap_reply(outcome))

    assert payload.startswith(status)


@given(outcomes)
def test_socketmap_any_outcome_is_one_netstring_with_the_right_status(outcome: Outcome) -> None:
    reply = socketmap_reply(outcome)

    decoder = NetstringDecoder(MAX_REPLY_PAYLOAD)
    (payload,) = decoder.feed(reply)
    assert decoder.feed(b"") == []
    assert len(reply) == len(b"%d:" % len(payload)) + len(payload) + 1
    match outcome:
        case Found(value):
            assert payload == b"OK " + value.encode()
        case NotFound():
            assert payload == b"NOTFOUND "
        case TemporaryError():
            assert payload.startswith(b"TEMP ")
        case PermanentError():
            assert payload.startswith(b"PERM ")
        case Timeout():
            assert payload.startswith(b"TIMEOUT ")


# policy ------------------------------------------------------------------------------------------

FAILURE_REPLY = b"action=DEFER_IF_PERMIT Service temporarily unavailable\n\n"
policy_reply = policy.Replies("DEFER_IF_PERMIT Service temporarily unavailable")
POLICY_ASKED = PolicyRequest(((b"request", b"smtpd_access_policy"),))


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("REJECT x", b"action=REJECT x\n\n"),
        ("DUNNO", b"action=DUNNO\n\n"),
        ("OK", b"action=OK\n\n"),
        ("550 5.7.1 Müller not welcome", b"action=550 5.7.1 M\xc3\xbcller not welcome\n\n"),
        ("PREPEND X-Tag: a=b&c", b"action=PREPEND X-Tag: a=b&c\n\n"),
        ("W" * MAX_ACTION, b"action=" + b"W" * MAX_ACTION + b"\n\n"),
    ],
    ids=["reject-text", "dunno", "ok", "smtp-code-utf8", "prepend", "longest"],
)
def test_policy_found_action_is_sent_exactly(action: str, reply: bytes) -> None:
    assert policy_reply(POLICY_ASKED, Found(action)) == reply


@pytest.mark.parametrize(
    "outcome",
    [NotFound(), *FAILURES],
    ids=["not-found", *FAILURE_IDS],
)
def test_policy_every_non_found_outcome_gets_the_failure_reply(outcome: Outcome) -> None:
    assert policy_reply(POLICY_ASKED, outcome) == FAILURE_REPLY


@pytest.mark.parametrize(
    "action",
    [
        "REJECT x\naction=OK",
        "DUNNO\n",
        "REJECT x\r",
        "REJECT\x00x",
        "REJECT\tx",
        "REJECT\x1bx",
        "REJECT\x7fx",
        "",
        "   ",
        "W" * (MAX_ACTION + 1),
    ],
    ids=[
        "newline-injection",
        "trailing-newline",
        "cr",
        "nul",
        "tab",
        "esc",
        "del",
        "empty",
        "blank",
        "too-long",
    ],
)
def test_policy_unsendable_action_gets_the_failure_reply(action: str) -> None:
    assert policy_reply(POLICY_ASKED, Found(action)) == FAILURE_REPLY


@given(st.text(max_size=100))
def test_policy_found_is_exactly_one_action_line_or_the_failure_reply(action: str) -> None:
    reply = policy_reply(POLICY_ASKED, Found(action))

    sendable = action.strip() and all(ord(char) >= 0x20 and char != "\x7f" for char in action)
    if sendable:
        assert reply == b"action=" + action.encode() + b"\n\n"
    else:
        assert reply == FAILURE_REPLY


def test_empty_found_value_is_an_error_never_an_empty_answer() -> None:
    assert tcp_table_reply(Found("")) == b"400 empty%20value\n"
    assert socketmap_reply(Found("")) == b"16:TEMP empty value,"
