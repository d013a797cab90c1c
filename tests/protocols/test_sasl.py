"""The sasl codec (Dovecot's auth protocol, server side): smtpd's own lines, every read size,
the refusals that keep the connection, the errors that end it, the reply table, fuzzing."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeding import Decoded, replay, replay_sizes
from postfix_rest_api_connector.core.model import (
    Found,
    LoginChallenge,
    LoginRequest,
    Malformed,
    NotFound,
    PermanentError,
    TemporaryError,
    Timeout,
)
from postfix_rest_api_connector.protocols.errors import FramingError, RequestTooLarge
from postfix_rest_api_connector.protocols.sasl import (
    MAX_LINE,
    MAX_PENDING,
    MAX_RESPONSE,
    RESET,
    SaslDecoder,
    SaslProtocolError,
    answer_itself,
    client_login,
    decode_base64,
    handshake,
    reply,
)

READ_SIZES = (1, 2, 3, 7, 16, 128, 4096)
HELLO = b"VERSION\t1\t0\nCPID\t11254\n"
"""What smtpd sends on connect, in one write, before reading anything."""
SESSION = b"service=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.1"


def b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def login(
    request_id: bytes = b"1",
    mechanism: str = "PLAIN",
    username: str = "typed@example.org",
    password: str = "secret",
    *,
    secured: bool = True,
) -> LoginRequest:
    return LoginRequest(
        id=request_id,
        mechanism=mechanism,
        username=username,
        service="smtp",
        local_ip="127.0.0.1",
        remote_ip="192.0.2.1",
        secured=secured,
        password=password,
    )


def auth(request_id: bytes, mechanism: bytes, tail: bytes = b"", *, secured: bool = True) -> bytes:
    flag = b"\tsecured" if secured else b""
    return b"AUTH\t%s\t%s\t%s%s%s\n" % (request_id, mechanism, SESSION, flag, tail)


def plain_response(username: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return b"\tresp=" + b64(authzid + b"\0" + username + b"\0" + password)


def refused(request_id: bytes, reason: str) -> Malformed:
    return Malformed(reason, request_id)


def decode(stream: bytes, read_size: int = 4096, **options: bool) -> Decoded:
    return replay(SaslDecoder(**options), HELLO + stream, read_size)


# --- the handshake ---------------------------------------------------------------------------


def test_the_server_handshake_is_dovecots_with_the_mechanisms_before_spid() -> None:
    greeting = handshake(4242, 7, "0123456789abcdef0123456789abcdef")

    assert greeting == (
        b"VERSION\t1\t2\n"
        b"MECH\tPLAIN\tplaintext\n"
        b"MECH\tLOGIN\tplaintext\n"
        b"SPID\t4242\n"
        b"CUID\t7\n"
        b"COOKIE\t0123456789abcdef0123456789abcdef\n"
        b"DONE\n"
    )


def test_the_clients_handshake_is_owed_until_version_and_cpid_arrived() -> None:
    decoder = SaslDecoder()
    assert decoder.has_partial  # the handshake deadline runs from the connection's start
    assert decoder.feed(b"VERSION\t1\t0\n") == []
    assert decoder.has_partial
    assert decoder.feed(b"CPID\t11254\nAUTH\t1") == []
    assert decoder.has_partial  # a line begun
    assert decoder.feed(b"\tLOGIN\tservice=smtp\tsecured\n") == [LoginChallenge(b"1", b"Username:")]
    assert not decoder.has_partial


def test_cpid_before_version_and_a_later_minor_version_are_accepted() -> None:
    decoder = SaslDecoder()
    assert decoder.feed(b"CPID\t1\nVERSION\t1\t9\n") == []
    assert not decoder.has_partial


# --- smtpd's lines, as recorded from Postfix 3.7.11 ------------------------------------------

# (id, what smtpd sends after its handshake, what the decoder gives)
GOLDEN: list[tuple[str, bytes, Decoded]] = [
    (
        "plain-initial-response",
        b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1\tsecured"
        b"\tresp=AHR5cGVkQGV4YW1wbGUub3JnAHNlY3JldA==\n",
        [
            LoginRequest(
                id=b"1",
                mechanism="PLAIN",
                username="typed@example.org",
                service="smtp",
                local_ip="127.0.0.1",
                remote_ip="127.0.0.1",
                secured=True,
                password="secret",
            )
        ],
    ),
    (
        "login-initial-response",
        auth(b"3", b"LOGIN", b"\tresp=dHlwZWRAZXhhbXBsZS5vcmc=") + b"CONT\t3\tc2VjcmV0\n",
        [LoginChallenge(b"3", b"Password:"), login(b"3", "LOGIN")],
    ),
    (
        "login-without-initial-response",
        auth(b"2", b"LOGIN") + b"CONT\t2\tdHlwZWRAZXhhbXBsZS5vcmc=\nCONT\t2\tc2VjcmV0\n",
        [
            LoginChallenge(b"2", b"Username:"),
            LoginChallenge(b"2", b"Password:"),
            login(b"2", "LOGIN"),
        ],
    ),
    (
        "plain-without-initial-response",
        auth(b"5", b"PLAIN") + b"CONT\t5\tAHR5cGVkQGV4YW1wbGUub3JnAHNlY3JldA==\n",
        [LoginChallenge(b"5", b""), login(b"5")],
    ),
    (
        "mechanism-as-the-client-typed-it",
        auth(b"9", b"plain", plain_response(b"typed@example.org", b"secret")),
        [login(b"9")],
    ),
    (
        "xclient-address-and-unknown-fields-ignored",
        b"AUTH\t4\tPLAIN\tservice=submission\tnologin\tlip=\trip=2001:db8::1\tsecured"
        b"\tsession=abc\tlport=587\tresp=AHUAcA==\n",
        [
            LoginRequest(
                id=b"4",
                mechanism="PLAIN",
                username="u",
                service="submission",
                local_ip="",
                remote_ip="2001:db8::1",
                secured=True,
                password="p",
            )
        ],
    ),
]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    ("wire", "expected"),
    [(wire, expected) for _, wire, expected in GOLDEN],
    ids=[name for name, _, _ in GOLDEN],
)
def test_golden_exchange_decodes_at_every_read_size(
    wire: bytes, expected: Decoded, read_size: int
) -> None:
    assert decode(wire, read_size) == expected


def test_a_whole_connection_decodes_the_same_at_every_read_size() -> None:
    """Many exchanges of one smtpd process, interleaved ids included; every size from 1 up."""
    stream = HELLO + b"".join(wire for _, wire, _ in GOLDEN) * 2
    expected = [item for _, _, items in GOLDEN for item in items] * 2

    for size in range(1, 80):
        assert replay(SaslDecoder(), stream, size) == expected, size
    assert replay(SaslDecoder(), stream, len(stream)) == expected


def test_utf8_credentials_and_crlf_line_ends() -> None:
    response = plain_response("jörg@exämple.org".encode(), "pässwörd ✓".encode())
    wire = auth(b"6", b"PLAIN", response).replace(b"\n", b"\r\n")

    assert decode(wire) == [login(b"6", username="jörg@exämple.org", password="pässwörd ✓")]


def test_an_authzid_equal_to_the_user_is_accepted() -> None:
    response = plain_response(b"typed@example.org", b"secret", authzid=b"typed@example.org")

    assert decode(auth(b"1", b"PLAIN", response)) == [login(b"1")]


def test_exchanges_of_several_ids_go_on_side_by_side() -> None:
    wire = (
        auth(b"1", b"LOGIN")
        + auth(b"2", b"LOGIN")
        + b"CONT\t2\t" + b64(b"second") + b"\n"
        + b"CONT\t1\t" + b64(b"first") + b"\n"
        + b"CONT\t1\t" + b64(b"pw1") + b"\n"
        + b"CONT\t2\t" + b64(b"pw2") + b"\n"
    )  # fmt: skip

    assert decode(wire) == [
        LoginChallenge(b"1", b"Username:"),
        LoginChallenge(b"2", b"Username:"),
        LoginChallenge(b"2", b"Password:"),
        LoginChallenge(b"1", b"Password:"),
        login(b"1", "LOGIN", "first", "pw1"),
        login(b"2", "LOGIN", "second", "pw2"),
    ]


def test_an_auth_reusing_a_waiting_id_starts_that_exchange_anew() -> None:
    wire = auth(b"1", b"LOGIN") + auth(b"1", b"PLAIN") + b"CONT\t1\t" + b64(b"\0u\0p") + b"\n"

    assert decode(wire) == [
        LoginChallenge(b"1", b"Username:"),
        LoginChallenge(b"1", b""),
        login(b"1", username="u", password="p"),
    ]


def test_exchanges_abandoned_past_the_limit_are_failed_oldest_first() -> None:
    """smtpd never continues an exchange its client cancelled with ``*``."""
    wire = b"".join(auth(b"%d" % number, b"LOGIN") for number in range(1, MAX_PENDING + 3))

    decoded = decode(wire)

    challenges = [item for item in decoded if isinstance(item, LoginChallenge)]
    evicted = [item for item in decoded if isinstance(item, Malformed)]
    assert len(challenges) == MAX_PENDING + 2
    assert evicted == [
        refused(b"1", "Too many authentications in progress"),
        refused(b"2", "Too many authentications in progress"),
    ]
    assert decode(wire + b"CONT\t1\t" + b64(b"u") + b"\n")[-1] == refused(
        b"1", "No authentication in progress with this id"
    )


# --- refusals: a FAIL for that id, and the connection goes on --------------------------------

GOOD = auth(b"99", b"PLAIN", plain_response(b"typed@example.org", b"secret"))
NO_EXCHANGE = "No authentication in progress with this id"
BAD_BASE64 = "Invalid base64 data"


def plain7(username: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return auth(b"7", b"PLAIN", plain_response(username, password, authzid))


def resp7(response: bytes) -> bytes:
    return auth(b"7", b"PLAIN", b"\tresp=" + response)


BAD_PLAIN = "Invalid PLAIN response"
BAD_USER = "Invalid user name"
REFUSALS = [
    ("unknown-mechanism", auth(b"7", b"CRAM-MD5"), "Unsupported authentication mechanism"),
    ("no-mechanism", b"AUTH\t7\n", "Unsupported authentication mechanism"),
    ("empty-mechanism", b"AUTH\t7\t\tservice=smtp\n", "Unsupported authentication mechanism"),
    ("no-service", b"AUTH\t7\tPLAIN\tsecured\n", "Malformed AUTH request"),
    ("service-not-utf8", b"AUTH\t7\tPLAIN\tservice=\xff\tsecured\n", "Malformed AUTH request"),
    ("bad-base64-alphabet", resp7(b"AHU*AHA="), BAD_BASE64),
    ("bad-base64-padding", resp7(b"AHUAcA"), BAD_BASE64),
    ("base64-after-padding", resp7(b"AHUAcA==AHUAcA=="), BAD_BASE64),
    ("smtp-quit-as-base64", resp7(b"QUIT"), BAD_PLAIN),
    ("empty-response-plain", resp7(b"="), BAD_PLAIN),
    ("plain-one-nul", resp7(b64(b"u\0p")), BAD_PLAIN),
    ("plain-three-nuls", resp7(b64(b"\0u\0p\0")), BAD_PLAIN),
    ("plain-empty-user", plain7(b"", b"p"), BAD_USER),
    ("plain-user-with-tab", plain7(b"a\tb", b"p"), BAD_USER),
    ("plain-user-with-lf", plain7(b"a\nb", b"p"), BAD_USER),
    ("plain-user-c1-control", plain7("a\x85b".encode(), b"p"), BAD_USER),
    ("plain-user-not-utf8", plain7(b"\xff", b"p"), BAD_USER),
    ("plain-empty-password", plain7(b"u", b""), "Invalid password"),
    ("plain-password-not-utf8", plain7(b"u", b"\xc3"), "Invalid password"),
    ("plain-other-authzid", plain7(b"u", b"p", b"admin"), "Authorization identity not supported"),
    ("response-too-long", resp7(b"A" * (MAX_RESPONSE + 4)), "Response too long"),
    ("cont-unknown-id", b"CONT\t7\t" + b64(b"x") + b"\n", NO_EXCHANGE),
    ("cont-no-data-unknown-id", b"CONT\t7\n", NO_EXCHANGE),
    (
        "plaintext-without-tls",
        auth(b"7", b"PLAIN", plain_response(b"u", b"p"), secured=False),
        "Plaintext authentication disallowed without TLS",
    ),
    (
        "login-without-tls-refused-before-the-password",
        auth(b"7", b"LOGIN", secured=False),
        "Plaintext authentication disallowed without TLS",
    ),
]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [(wire, reason) for _, wire, reason in REFUSALS],
    ids=[name for name, _, _ in REFUSALS],
)
def test_a_refusal_fails_its_id_and_the_next_login_decodes(wire: bytes, reason: str) -> None:
    assert decode(wire + GOOD) == [refused(b"7", reason), login(b"99")]


@pytest.mark.parametrize(
    ("cont", "reason"),
    [
        (b"CONT\t7\t" + b64(b"") + b"\n", None),  # empty: asks again
        (b"CONT\t7\t!!!\n", BAD_BASE64),
        (b"CONT\t7\t" + b64(b"a\x01b") + b"\n", "Invalid user name"),
        (b"CONT\t7\t" + b"A" * (MAX_RESPONSE + 4) + b"\n", "Response too long"),
    ],
    ids=["empty-user-asks-again", "bad-base64", "control-in-user", "too-long"],
)
def test_login_username_step(cont: bytes, reason: str | None) -> None:
    decoded = decode(auth(b"7", b"LOGIN") + cont)

    expected = LoginChallenge(b"7", b"Username:") if reason is None else refused(b"7", reason)
    assert decoded == [LoginChallenge(b"7", b"Username:"), expected]


def test_login_password_with_nul_is_refused() -> None:
    wire = auth(b"7", b"LOGIN", b"\tresp=" + b64(b"u")) + b"CONT\t7\t" + b64(b"a\0b") + b"\n"

    assert decode(wire)[-1] == refused(b"7", "Invalid password")


def test_an_exchange_ends_with_its_refusal() -> None:
    wire = auth(b"7", b"LOGIN") + b"CONT\t7\t!!\nCONT\t7\t" + b64(b"u") + b"\n"

    assert decode(wire)[1:] == [refused(b"7", BAD_BASE64), refused(b"7", NO_EXCHANGE)]


def test_allow_plaintext_takes_logins_outside_tls() -> None:
    wire = auth(b"7", b"PLAIN", plain_response(b"typed@example.org", b"secret"), secured=False)

    assert decode(wire, allow_plaintext=True) == [login(b"7", secured=False)]


def test_decode_base64_is_strict_and_takes_a_lone_equals_for_empty() -> None:
    assert decode_base64(b"=") == b""
    assert decode_base64(b"") == b""
    assert decode_base64(b"AHUAcA==") == b"\0u\0p"
    for bad in (b"AHUAcA", b"AHUAcA=", b"AH UAcA==", b"AHUAcA==\n", b"==", b"A===", b"x"):
        assert decode_base64(bad) is None, bad


# --- errors that end the connection ----------------------------------------------------------

FRAMING = [
    ("auth-before-handshake", b"", auth(b"1", b"PLAIN")),
    ("cont-before-handshake", b"", b"CONT\t1\tAA==\n"),
    ("auth-after-version-only", b"VERSION\t1\t0\n", auth(b"1", b"PLAIN")),
    ("version-2", b"", b"VERSION\t2\t0\n"),
    ("bare-version", b"", b"VERSION\n"),
    ("version-one-number", b"", b"VERSION\t1\n"),
    ("version-repeated", HELLO, b"VERSION\t1\t0\n"),
    ("cpid-not-a-number", b"VERSION\t1\t0\n", b"CPID\tabc\n"),
    ("cpid-repeated", HELLO, b"CPID\t2\n"),
    ("unknown-command", HELLO, b"REQUEST\t1\t2\n"),
    ("empty-line", HELLO, b"\n"),
    ("auth-without-id", HELLO, b"AUTH\n"),
    ("auth-id-not-decimal", HELLO, b"AUTH\tabc\tPLAIN\tservice=smtp\n"),
    ("auth-id-hex", HELLO, b"AUTH\t0x1\tPLAIN\tservice=smtp\n"),
    ("auth-id-too-big", HELLO, b"AUTH\t4294967296\tPLAIN\tservice=smtp\n"),
    ("auth-id-negative", HELLO, b"AUTH\t-1\tPLAIN\tservice=smtp\n"),
    ("cont-without-id", HELLO, b"CONT\n"),
    ("tls-client-hello", b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"),
    ("http-request", b"", b"GET / HTTP/1.1\r\n"),
]


@pytest.mark.parametrize(
    ("before", "wire"),
    [(before, wire) for _, before, wire in FRAMING],
    ids=[name for name, _, _ in FRAMING],
)
def test_a_protocol_error_ends_the_connection(before: bytes, wire: bytes) -> None:
    decoder = SaslDecoder()
    decoder.feed(before)
    with pytest.raises(SaslProtocolError):
        decoder.feed(wire)


def test_an_error_message_never_quotes_the_line() -> None:
    decoder = SaslDecoder()
    with pytest.raises(SaslProtocolError) as raised:
        decoder.feed(b"AUTH\tx\tPLAIN\tresp=" + b64(b"\0u\0hunter2") + b"\n")
    assert b64(b"\0u\0hunter2").decode() not in str(raised.value)


@pytest.mark.parametrize("ended", [True, False], ids=["ended", "never-ended"])
def test_a_line_over_the_limit_ends_the_connection(ended: bool) -> None:
    decoder = SaslDecoder(max_line=64)
    decoder.feed(HELLO)
    with pytest.raises(RequestTooLarge):
        decoder.feed(b"AUTH\t1\tPLAIN\t" + b"x" * 80 + (b"\n" if ended else b""))


def test_smtpds_longest_line_fits_the_default_limit() -> None:
    """A CONT of ``smtpd_sasl_response_limit`` (12288) base64 characters."""
    response = b64(b"\0u\0" + b"p" * (MAX_RESPONSE * 3 // 4 - 3))
    assert len(response) == MAX_RESPONSE
    wire = auth(b"4294967295", b"PLAIN") + b"CONT\t4294967295\t" + response + b"\n"

    decoded = decode(wire)

    assert isinstance(decoded[-1], LoginRequest)
    assert len(wire) < MAX_LINE


def test_logins_completed_before_a_protocol_error_are_kept() -> None:
    decoder = SaslDecoder()
    with pytest.raises(FramingError) as raised:
        decoder.feed(HELLO + GOOD + auth(b"5", b"LOGIN") + b"BOGUS\n")
    assert raised.value.completed == (login(b"99"), LoginChallenge(b"5", b"Username:"))


# --- the reply table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "outcome", "expected"),
    [
        (login(b"3"), Found("canonical@example.org"), b"OK\t3\tuser=canonical@example.org\n"),
        (login(b"3"), Found("jörg@example.org"), "OK\t3\tuser=jörg@example.org\n".encode()),
        (
            login(b"3"),
            NotFound(),
            b"FAIL\t3\tuser=typed@example.org\treason=Invalid user name or password\n",
        ),
        (
            refused(b"8", "Invalid base64 data"),
            PermanentError("malformed request: Invalid base64 data"),
            b"FAIL\t8\treason=Invalid base64 data\n",
        ),
        (login(b"3"), TemporaryError("API answered HTTP 503"), RESET),
        (login(b"3"), Timeout("API did not answer in time"), RESET),
        (login(b"3"), PermanentError("API answered HTTP 400"), RESET),
        (login(b"3"), Found(""), RESET),
        (login(b"3"), Found("a\tb"), RESET),
        (login(b"3"), Found("a\nuser=admin"), RESET),
        (login(b"3"), Found("lone\udc80surrogate"), RESET),
        (None, TemporaryError("too many connections"), RESET),
        (None, PermanentError("malformed request: line longer than 16384 bytes"), RESET),
        (Malformed("no id to answer"), PermanentError("x"), RESET),
    ],
    ids=[
        "ok",
        "ok-utf8",
        "refused",
        "refused-by-the-codec",
        "temporary",
        "timeout",
        "api-4xx-is-temporary",
        "empty-user",
        "user-with-tab",
        "user-injecting-a-field",
        "user-not-encodable",
        "connection-error",
        "framing-lost",
        "malformed-without-id",
    ],
)
def test_reply_table(
    request_: LoginRequest | Malformed | None, outcome: object, expected: bytes
) -> None:
    assert reply(request_, outcome) == expected  # type: ignore[arg-type]


def test_challenges_are_answered_by_the_codec_itself() -> None:
    assert answer_itself(LoginChallenge(b"2", b"Username:")) == b"CONT\t2\tVXNlcm5hbWU6\n"
    assert answer_itself(LoginChallenge(b"5", b"")) == b"CONT\t5\t\n"
    assert answer_itself(login()) is None
    assert answer_itself(refused(b"1", "x")) is None


def test_client_login_is_what_smtpd_sends() -> None:
    assert replay(SaslDecoder(), client_login("u@example.org", "pw"), 4096) == [
        LoginRequest(
            id=b"1",
            mechanism="PLAIN",
            username="u@example.org",
            service="smtp",
            local_ip="127.0.0.1",
            remote_ip="127.0.0.1",
            secured=True,
            password="pw",
        )
    ]


# --- Hypothesis -------------------------------------------------------------------------------

usernames = st.text(
    st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=40
).filter(str.isprintable)
passwords = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=40
)
logins = st.builds(
    login,
    request_id=st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: b"%d" % n),
    mechanism=st.sampled_from(["PLAIN", "LOGIN"]),
    username=usernames,
    password=passwords,
    secured=st.booleans(),
)


def as_smtpd_sends(request: LoginRequest, initial: bool) -> tuple[bytes, list[object]]:
    """The lines for one login, with or without an initial response, and what they decode to."""
    user, password = request.username.encode(), request.password.encode()
    flag = b"\tsecured" if request.secured else b""
    head = b"AUTH\t%s\t%s\t%s%s" % (request.id, request.mechanism.encode(), SESSION, flag)
    cont = b"CONT\t%s\t" % request.id
    if request.mechanism == "PLAIN":
        if initial:
            return head + b"\tresp=" + b64(b"\0" + user + b"\0" + password) + b"\n", [request]
        wire = head + b"\n" + cont + b64(b"\0" + user + b"\0" + password) + b"\n"
        return wire, [LoginChallenge(request.id, b""), request]
    if initial:
        wire = head + b"\tresp=" + b64(user) + b"\n" + cont + b64(password) + b"\n"
        return wire, [LoginChallenge(request.id, b"Password:"), request]
    wire = head + b"\n" + cont + b64(user) + b"\n" + cont + b64(password) + b"\n"
    return wire, [
        LoginChallenge(request.id, b"Username:"),
        LoginChallenge(request.id, b"Password:"),
        request,
    ]


@given(
    requests=st.lists(st.tuples(logins, st.booleans()), min_size=1, max_size=4),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_logins_sent_as_smtpd_does_decode_back(
    requests: list[tuple[LoginRequest, bool]], sizes: list[int]
) -> None:
    stream, expected = HELLO, []
    for request, initial in requests:
        wire, decoded = as_smtpd_sends(request, initial)
        stream += wire
        expected += decoded

    assert replay_sizes(SaslDecoder(allow_plaintext=True), stream, sizes) == expected


ALPHABET = [
    b"AUTH\t", b"CONT\t", b"VERSION\t1\t0\n", b"CPID\t1\n", b"1\t", b"2\t", b"PLAIN\t",
    b"LOGIN\t", b"service=smtp\t", b"secured\t", b"resp=", b"AHUAcA==", b"dQ==", b"=", b"\t",
    b"\n", b"\r\n", b"\x00", b"\xff", b"x",
]  # fmt: skip
fuzz_streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(b"".join),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(lambda parts: HELLO + b"".join(parts)),
)


@given(
    stream=fuzz_streams,
    max_line=st.sampled_from([16, 64, MAX_LINE]),
    allow_plaintext=st.booleans(),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_fuzz_only_logins_challenges_refusals_or_framing_errors(
    stream: bytes, max_line: int, allow_plaintext: bool, sizes: list[int]
) -> None:
    def run(feed_sizes: Sequence[int]) -> Decoded | type[FramingError]:
        decoder = SaslDecoder(max_line, allow_plaintext)
        try:
            decoded = replay_sizes(decoder, stream, feed_sizes)
        except FramingError as error:
            return type(error)
        for item in decoded:
            assert isinstance(item, LoginRequest | LoginChallenge | Malformed)
            if isinstance(item, Malformed):
                assert item.tag  # every refusal can be answered for its id
            for outcome in (Found("u"), NotFound(), TemporaryError("t")):
                answer = answer_itself(item) or reply(item, outcome)
                assert answer == RESET or answer.endswith(b"\n")
                assert answer.count(b"\n") <= 1
        return decoded

    assert run(sizes) == run([max(len(stream), 1)])
