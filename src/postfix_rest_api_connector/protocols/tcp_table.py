"""tcp_table(5): ``get KEY\\n`` requests and ``CODE TEXT\\n`` replies, both hex-quoted.

Postfix quotes ``%``, whitespace and every byte that is not printable ASCII as ``%XX``; nothing
else (a ``+`` stays a ``+``). Replies are quoted the same way and must fit Postfix's 4096-byte line.
"""

from __future__ import annotations

import re

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
from .errors import EMPTY_VALUE, KeptOnFramingError, RequestTooLarge, UnsendableReply

MAX_REPLY_LINE = 4096
"""Postfix's dict_tcp rejects a longer reply line (counting the newline)."""

_NEEDS_QUOTING = re.compile(rb"[^\x21-\x24\x26-\x7e]")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def quote(raw: bytes) -> bytes:
    """Hex-quote as Postfix's dict_tcp does, upper-case digits."""
    return _NEEDS_QUOTING.sub(lambda m: b"%%%02X" % m[0][0], raw)


def unquote(quoted: bytes) -> bytes | None:
    """Undo ``quote``; ``None`` when a ``%`` is not followed by two hex digits."""
    if quoted.find(b"%") < 0:  # cheaper than ``in`` on 3.11 (httpclient.codec._split_list)
        return quoted
    if _BAD_ESCAPE.search(quoted):
        return None
    return _ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), quoted)


def parse_request_line(line: bytes) -> LookupRequest | Malformed:
    """One request line without its newline."""
    if not line.startswith(b"get "):
        return Malformed("unsupported command, expected 'get KEY'")
    key = unquote(line[4:])
    if key is None:
        return Malformed("bad %XX escape in key")
    if not key:
        return Malformed("empty key")
    return LookupRequest(key)


class TcpTableDecoder:
    """Splits the stream at newlines; a line longer than the limit ends the connection."""

    __slots__ = ("_buffer", "_max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_REQUEST) -> None:
        self._buffer = b""
        self._max_line = max_line

    @property
    def has_partial(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[LookupRequest | Malformed]:
        buffer = self._buffer + data if self._buffer else data
        requests: list[LookupRequest | Malformed] = []
        start = 0
        with KeptOnFramingError(requests):
            while (end := buffer.find(b"\n", start)) >= 0:
                if end - start >= self._max_line:
                    raise self._too_large()
                line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
                requests.append(parse_request_line(buffer[start:line_end]))
                start = end + 1
            self._buffer = buffer[start:]
            if len(self._buffer) >= self._max_line:
                raise self._too_large()
        return requests

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(f"request line longer than {self._max_line} bytes")


def encode_reply(code: int, text: str) -> bytes:
    """``CODE TEXT\\n`` with TEXT quoted; raises ``UnsendableReply`` past Postfix's line limit."""
    line = b"%d %s\n" % (code, quote(text.encode("utf-8")))
    if len(line) > MAX_REPLY_LINE:
        raise UnsendableReply(f"reply line of {len(line)} bytes exceeds {MAX_REPLY_LINE}")
    return line


def reply(request: Request | None, outcome: Outcome) -> bytes:
    """The reply table. tcp_table has no permanent-error code: every failure is ``400``."""
    match outcome:
        case Found(value) if value:
            try:
                return encode_reply(200, value)
            except UnsendableReply:
                return encode_reply(400, "answer too long for tcp_table")
        case NotFound():
            return encode_reply(500, "not found")
        case TemporaryError(reason) | PermanentError(reason) | Timeout(reason):
            return encode_reply(400, reason[:200])
        case Found():
            return encode_reply(400, EMPTY_VALUE)
