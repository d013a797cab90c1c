"""socketmap_table(5): one netstring ``LEN:NAME KEY,`` per request, one netstring per reply.

The key is raw bytes (spaces, commas and UTF-8 included) and so is the reply data: no quoting in
either direction. Postfix refuses a reply payload over 100000 bytes.
"""

from __future__ import annotations

from ..core.model import (
    Found,
    LookupRequest,
    Malformed,
    NotFound,
    Outcome,
    PermanentError,
    Request,
    TemporaryError,
    Timeout,
)
from . import DEFAULT_MAX_REQUEST
from .errors import (
    EMPTY_VALUE,
    BadNetstring,
    FramingError,
    KeptOnFramingError,
    RequestTooLarge,
    UnsendableReply,
)

MAX_REPLY_PAYLOAD = 100000
"""Postfix's dict_sockmap limit on a reply's payload."""


class NetstringDecoder:
    """Incremental netstring reader with a bound on the payload length."""

    __slots__ = ("_buffer", "_max_digits", "_max_payload")

    def __init__(self, max_payload: int) -> None:
        self._buffer = b""
        self._max_payload = max_payload
        self._max_digits = len(str(max_payload))

    @property
    def has_partial(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        payloads: list[bytes] = []
        with KeptOnFramingError(payloads):
            start = self._split(buffer, payloads)
        self._buffer = buffer[start:]
        return payloads

    def _split(self, buffer: bytes, payloads: list[bytes]) -> int:
        """Append every complete payload; return where the incomplete rest starts."""
        start = 0
        while True:
            colon = buffer.find(b":", start, start + self._max_digits + 1)
            if colon < 0:
                self._check_length_prefix(buffer[start:])
                break
            length = self._parse_length(buffer[start:colon])
            end = colon + 1 + length
            if len(buffer) <= end:
                break
            if buffer[end] != 0x2C:  # ","
                raise BadNetstring("netstring not terminated by ','")
            payloads.append(buffer[colon + 1 : end])
            start = end + 1
        return start

    def _parse_length(self, digits: bytes) -> int:
        if not digits or not digits.isdigit():
            raise BadNetstring("netstring length is not a decimal number")
        length = int(digits)
        if length > self._max_payload:
            raise RequestTooLarge(f"netstring of {length} bytes exceeds {self._max_payload}")
        return length

    def _check_length_prefix(self, pending: bytes) -> None:
        """Fail early on a prefix that can never become a valid length."""
        if len(pending) > self._max_digits:
            raise BadNetstring("netstring length is too long or not followed by ':'")
        if pending and not pending.isdigit():
            raise BadNetstring("netstring length is not a decimal number")


def parse_request(payload: bytes) -> LookupRequest | Malformed:
    """``NAME KEY``: split at the first space; the key keeps any further spaces."""
    name, space, key = payload.partition(b" ")
    if not space or not name:
        return Malformed("expected 'NAME KEY'")
    if not key:
        return Malformed("empty key")
    return LookupRequest(key, map_name=name)


class SocketmapDecoder:
    """Netstring framing plus request parsing."""

    __slots__ = ("_netstrings",)

    def __init__(self, max_request: int = DEFAULT_MAX_REQUEST) -> None:
        self._netstrings = NetstringDecoder(max_request)

    @property
    def has_partial(self) -> bool:
        return self._netstrings.has_partial

    def feed(self, data: bytes) -> list[LookupRequest | Malformed]:
        try:
            payloads = self._netstrings.feed(data)
        except FramingError as error:
            error.completed = tuple(parse_request(payload) for payload in error.completed)
            raise
        return [parse_request(payload) for payload in payloads]


def encode_netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def encode_reply(status: bytes, data: str) -> bytes:
    """``STATUS DATA`` as a netstring; raises ``UnsendableReply`` past Postfix's payload limit."""
    payload = status + b" " + data.encode("utf-8")
    if len(payload) > MAX_REPLY_PAYLOAD:
        raise UnsendableReply(f"reply of {len(payload)} bytes exceeds {MAX_REPLY_PAYLOAD}")
    return encode_netstring(payload)


def reply(request: Request | None, outcome: Outcome) -> bytes:
    """The reply table: each failure kind has its own status word."""
    match outcome:
        case Found(value) if value:
            try:
                return encode_reply(b"OK", value)
            except UnsendableReply:
                return encode_reply(b"TEMP", "answer too long for socketmap")
        case NotFound():
            return encode_reply(b"NOTFOUND", "")
        case TemporaryError(reason):
            return encode_reply(b"TEMP", reason[:200])
        case PermanentError(reason):
            return encode_reply(b"PERM", reason[:200])
        case Timeout(reason):
            return encode_reply(b"TIMEOUT", reason[:200])
        case Found():
            return encode_reply(b"TEMP", EMPTY_VALUE)
