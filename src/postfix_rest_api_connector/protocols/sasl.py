"""SMTP AUTH for Postfix's ``smtpd_sasl_type = dovecot``: the server side of Dovecot's
authentication protocol, as Postfix's smtpd speaks it (``docs/sasl-protocol.md``).

Tab-separated lines, each ending in LF. On connect the server sends its handshake (``handshake``);
the client sends ``VERSION`` and ``CPID``, then one ``AUTH`` line per login attempt, each with an
id of its own, and a ``CONT`` line with that id for each challenge the server sent back. An
exchange ends with ``OK`` (which must carry ``user=``) or ``FAIL``. smtpd answers 535 to every
``FAIL``, whatever it carries, and 454 ("try again later") only when it loses the connection: so
the reply for a temporary failure is to reset the connection (``RESET``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ..core.model import (
    Found,
    LoginChallenge,
    LoginRequest,
    Malformed,
    NotFound,
    Outcome,
    Request,
)
from .errors import FramingError, KeptOnFramingError, RequestTooLarge

MAX_LINE = 16384
"""Bytes of one line from the client. smtpd's longest is a ``CONT`` of about 12300 bytes
(``smtpd_sasl_response_limit`` 12288 plus the id); Dovecot's own limit is the same 16384."""
MAX_RESPONSE = 12288
"""Base64 characters of one client response: smtpd never passes on more."""
MAX_PENDING = 16
"""Exchanges on one connection waiting for the client's ``CONT``. smtpd has one at a time, but
one it abandoned (the SMTP client sent ``*``) is never continued: past this, the oldest goes."""
MECHANISMS = (b"PLAIN", b"LOGIN")
"""Both are plaintext: the password crosses the SMTP session as it is."""
USERNAME_CHALLENGE = b"Username:"
PASSWORD_CHALLENGE = b"Password:"
"""The LOGIN mechanism's challenges, worded as every client expects them."""

RESET = b""
"""The reply that is no reply: send nothing and reset the connection (smtpd's 454)."""
FAILED_LOGIN = "Invalid user name or password"
"""The reason of every login the API refused: never which of the two was wrong."""

_ID = re.compile(rb"[0-9]{1,10}")
_VERSION = re.compile(rb"([0-9]{1,9})\t[0-9]{1,9}")
_PID = re.compile(rb"[0-9]{1,10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""Characters no user name may have: a TAB or LF would break the reply line it goes back in."""


def handshake(pid: int, connection: int, cookie: str) -> bytes:
    """What the server says first, in the order and form Dovecot 2.3 does: the mechanisms
    before ``SPID`` (smtpd takes a ``SPID`` without them for the wrong socket) and a ``VERSION``
    with both numbers (a bare one crashes smtpd 3.7)."""
    mechanisms = b"".join(b"MECH\t%s\tplaintext\n" % name for name in MECHANISMS)
    return b"VERSION\t1\t2\n%sSPID\t%d\nCUID\t%d\nCOOKIE\t%s\nDONE\n" % (
        mechanisms,
        pid,
        connection,
        cookie.encode("ascii"),
    )


class SaslProtocolError(FramingError):
    """The client broke the protocol in a way no reply can answer (no id to answer, a command
    out of place); the connection must close."""


@dataclass(frozen=True, slots=True)
class _Session:
    """What an ``AUTH`` line says about the SMTP session, kept until its exchange ends."""

    id: bytes
    mechanism: str
    service: str
    local_ip: str
    remote_ip: str
    secured: bool


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An exchange waiting for the client's next ``CONT``; LOGIN's knows the user by then."""

    session: _Session
    username: str | None = None


class SaslDecoder:
    """The client's lines in, the logins they complete out; the exchanges between their
    ``AUTH`` and their last ``CONT`` are kept here, per connection."""

    __slots__ = ("_allow_plaintext", "_buffer", "_cpid", "_max_line", "_version", "_waiting")

    def __init__(self, max_line: int = MAX_LINE, allow_plaintext: bool = False) -> None:
        self._buffer = b""
        self._max_line = max_line
        self._allow_plaintext = allow_plaintext
        self._version = False
        self._cpid = False
        self._waiting: dict[bytes, _Waiting] = {}

    @property
    def has_partial(self) -> bool:
        """A line begun, or the client's half of the handshake still owed (its deadline runs)."""
        return bool(self._buffer) or not (self._version and self._cpid)

    def feed(self, data: bytes) -> list[LoginRequest | LoginChallenge | Malformed]:
        buffer = self._buffer + data if self._buffer else data
        decoded: list[LoginRequest | LoginChallenge | Malformed] = []
        start = 0
        with KeptOnFramingError(decoded):
            while (end := buffer.find(b"\n", start)) >= 0:
                if end - start >= self._max_line:
                    raise self._too_large()
                line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
                self._line(buffer[start:line_end], decoded)
                start = end + 1
            self._buffer = buffer[start:]
            if len(self._buffer) >= self._max_line:
                raise self._too_large()
        return decoded

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"line longer than {self._max_line} bytes")

    def _line(self, line: bytes, decoded: list[LoginRequest | LoginChallenge | Malformed]) -> None:
        """One line; error messages never quote it (it may carry a password)."""
        command, _, rest = line.partition(b"\t")
        if command in {b"AUTH", b"CONT"}:
            if not (self._version and self._cpid):
                raise SaslProtocolError(f"{command.decode()} before the client's handshake")
            fields = rest.split(b"\t")
            request_id = fields[0]
            if not _ID.fullmatch(request_id) or int(request_id) >= 1 << 32:
                raise SaslProtocolError(f"{command.decode()} without a valid id")
            if command == b"AUTH":
                self._auth(request_id, fields[1:], decoded)
            else:
                self._continue(request_id, fields[1:], decoded)
        elif command == b"VERSION":
            version = _VERSION.fullmatch(rest)
            if self._version or version is None or version[1] != b"1":
                raise SaslProtocolError("VERSION repeated, malformed or not major version 1")
            self._version = True
        elif command == b"CPID":
            if self._cpid or not _PID.fullmatch(rest):
                raise SaslProtocolError("CPID repeated or not a process id")
            self._cpid = True
        else:
            raise SaslProtocolError("unknown command")

    def _auth(
        self,
        request_id: bytes,
        fields: list[bytes],
        decoded: list[LoginRequest | LoginChallenge | Malformed],
    ) -> None:
        # An AUTH with the id of an exchange still waiting starts that exchange anew.
        self._waiting.pop(request_id, None)
        if not fields or fields[0].upper() not in MECHANISMS:
            decoded.append(Malformed("Unsupported authentication mechanism", request_id))
            return
        mechanism = fields[0].upper().decode("ascii")
        params: dict[bytes, bytes] = {}
        secured = False
        for field in fields[1:]:
            name, equals, value = field.partition(b"=")
            if equals:
                params[name] = value
            elif name == b"secured":
                secured = True
        try:
            session = _Session(
                request_id,
                mechanism,
                params[b"service"].decode("utf-8"),
                params.get(b"lip", b"").decode("utf-8"),
                params.get(b"rip", b"").decode("utf-8"),
                secured,
            )
        except (KeyError, UnicodeDecodeError):
            decoded.append(Malformed("Malformed AUTH request", request_id))
            return
        if not (secured or self._allow_plaintext):
            decoded.append(Malformed("Plaintext authentication disallowed without TLS", request_id))
            return
        response = params.get(b"resp")
        if response is None:
            self._challenge(_Waiting(session), decoded)
            return
        self._respond(_Waiting(session), response, decoded)

    def _continue(
        self,
        request_id: bytes,
        fields: list[bytes],
        decoded: list[LoginRequest | LoginChallenge | Malformed],
    ) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            decoded.append(Malformed("No authentication in progress with this id", request_id))
            return
        self._respond(waiting, fields[0] if fields else b"", decoded)

    def _respond(
        self,
        waiting: _Waiting,
        response: bytes,
        decoded: list[LoginRequest | LoginChallenge | Malformed],
    ) -> None:
        """The client's response (an initial one, or a ``CONT``) to the exchange's next step."""
        session = waiting.session
        if len(response) > MAX_RESPONSE:
            decoded.append(Malformed("Response too long", session.id))
            return
        data = decode_base64(response)
        if data is None:
            decoded.append(Malformed("Invalid base64 data", session.id))
            return
        if session.mechanism == "PLAIN":
            decoded.append(_plain(session, data))
        elif waiting.username is None:
            if not data:  # LOGIN with an empty initial response asks for the user name
                self._challenge(waiting, decoded)
                return
            username = _username(data)
            if username is None:
                decoded.append(Malformed("Invalid user name", session.id))
                return
            self._challenge(_Waiting(session, username), decoded)
        else:
            decoded.append(_login(session, waiting.username, data))

    def _challenge(
        self, waiting: _Waiting, decoded: list[LoginRequest | LoginChallenge | Malformed]
    ) -> None:
        """Ask the client for the exchange's next response, and wait for it."""
        session = waiting.session
        if len(self._waiting) >= MAX_PENDING:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            decoded.append(Malformed("Too many authentications in progress", oldest))
        self._waiting[session.id] = waiting
        if session.mechanism == "PLAIN":
            challenge = b""
        elif waiting.username is None:
            challenge = USERNAME_CHALLENGE
        else:
            challenge = PASSWORD_CHALLENGE
        decoded.append(LoginChallenge(session.id, challenge))


def client_login(username: str, password: str, *, secured: bool = True) -> bytes:
    """What smtpd sends first on a new connection and then for ``AUTH PLAIN`` with an initial
    response (the ``query`` command tries a login through the decoder with it)."""
    response = base64.b64encode(b"\x00%s\x00%s" % (username.encode(), password.encode()))
    flag = b"\tsecured" if secured else b""
    return (
        b"VERSION\t1\t0\nCPID\t1\n"
        b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=127.0.0.1%s\tresp=%s\n"
        % (flag, response)
    )


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (alphabet, padding, nothing after it); ``=`` alone is the empty response
    (``AUTH PLAIN =``). ``None`` when it is not base64."""
    if data == b"=":
        return b""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _username(raw: bytes) -> str | None:
    """UTF-8, not empty, no control character."""
    try:
        username = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not username or _CONTROL.search(username):
        return None
    return username


def _password(raw: bytes) -> str | None:
    """UTF-8, not empty, no NUL; anything else is the user's own business."""
    if not raw or b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _plain(session: _Session, data: bytes) -> LoginRequest | Malformed:
    """RFC 4616: ``authzid NUL authcid NUL passwd``; an authzid, if any, must be the user."""
    parts = data.split(b"\x00")
    if len(parts) != 3:
        return Malformed("Invalid PLAIN response", session.id)
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        return Malformed("Authorization identity not supported", session.id)
    username = _username(authcid)
    if username is None:
        return Malformed("Invalid user name", session.id)
    return _login(session, username, password)


def _login(session: _Session, username: str, raw_password: bytes) -> LoginRequest | Malformed:
    password = _password(raw_password)
    if password is None:
        return Malformed("Invalid password", session.id)
    return LoginRequest(
        id=session.id,
        mechanism=session.mechanism,
        username=username,
        password=password,
        service=session.service,
        local_ip=session.local_ip,
        remote_ip=session.remote_ip,
        secured=session.secured,
    )


def is_valid_user(name: str) -> bool:
    """A name the reply may carry as ``user=``: the one Postfix logs and checks senders by."""
    return bool(name) and not _CONTROL.search(name) and name.isprintable()


def encode_ok(request_id: bytes, user: str) -> bytes:
    return b"OK\t%s\tuser=%s\n" % (request_id, user.encode("utf-8"))


def encode_fail(request_id: bytes, reason: str, user: str | None = None) -> bytes:
    """``reason`` reaches the SMTP client in smtpd's 535 reply."""
    named = b"\tuser=%s" % user.encode("utf-8") if user is not None else b""
    return b"FAIL\t%s%s\treason=%s\n" % (request_id, named, reason.encode("utf-8"))


def encode_challenge(request_id: bytes, challenge: bytes) -> bytes:
    return b"CONT\t%s\t%s\n" % (request_id, base64.b64encode(challenge))


def answer_itself(request: Request) -> bytes | None:
    """The codec's own reply, without the service: a challenge for the client's next step."""
    if isinstance(request, LoginChallenge):
        return encode_challenge(request.id, request.challenge)
    return None


def reply(request: Request | None, outcome: Outcome) -> bytes:
    """The reply table: ``OK`` with the API's user name, ``FAIL`` for a login the API refused or
    a request the codec could not use, and ``RESET`` for every failure (and for the errors that
    belong to the connection, which closes anyway)."""
    match request, outcome:
        case LoginRequest(), Found(user) if is_valid_user(user):
            try:
                return encode_ok(request.id, user)
            except UnicodeEncodeError:
                return RESET
        case LoginRequest(), NotFound():
            return encode_fail(request.id, FAILED_LOGIN, request.username)
        case Malformed(reason, tag), _ if tag:
            return encode_fail(tag, reason)
    return RESET
