"""HTTP/1.1 for the one thing we need of it: a response to a request we sent, bytes in.

Pure (no asyncio, no logging), incremental and bounded: a head over ``MAX_HEAD_BYTES``, a chunk
size line over ``MAX_LINE_BYTES`` or a kept body over the caller's limit is an error, never a
growing buffer. Framing follows RFC 9112 section 6.3, strictly: anything ambiguous (two different
lengths, a transfer coding other than ``chunked``, folded or malformed header lines) is refused
rather than guessed, because a guess on a kept-alive connection would shift every later answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 65536
"""Status line and headers together; a REST answer's head is a few hundred bytes."""
MAX_HEADERS = 100
MAX_LINE_BYTES = 4096
"""A chunk size line or one trailer line."""
_MAX_LENGTH_DIGITS = 18


class HttpProtocolError(Exception):
    """The API's bytes are not an HTTP/1.1 response we can frame."""


class BodyTooLarge(Exception):
    """A body we keep (status 200) exceeded the caller's limit."""


class ResponseIncomplete(HttpProtocolError):
    """The connection ended before the response did."""

    def __init__(self, started: bool) -> None:
        super().__init__("the connection closed before the response was complete")
        self.started = started
        """Whether any byte of the response had arrived: if not, a reused connection may simply
        have been closed by the server while idle, and the request is safe to send again."""


@dataclass(frozen=True, slots=True, init=False)
class HttpResponse:
    """What the REST contract reads of an answer. ``body`` is kept only for status 200.

    Its own ``__init__``, as core.model's per-request classes, for the same measured reason."""

    status: int
    body: bytes
    content_type: str | None
    cache_control: str | None

    def __init__(
        self, status: int, body: bytes, content_type: str | None, cache_control: str | None
    ) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "cache_control", cache_control)


def encode_request(method: bytes, target: bytes, headers: bytes, body: bytes | None) -> bytes:
    """``headers``: whole header lines, each ending in CRLF, without ``Content-Length``."""
    if body is None:
        return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, headers)
    return b"%s %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
        method,
        target,
        headers,
        len(body),
        body,
    )


_TEXT = rb"[\t\x20-\x7e\x80-\xff]"
"""What a reason phrase, a field value or a chunk extension may hold: no control character but
HTAB (RFC 9110 section 5.5, RFC 9112 section 4), as llhttp requires too."""
_FIELD_LINE = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:" + _TEXT + rb"*+"
_HEAD_PATTERN = re.compile(
    rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: " + _TEXT + rb"*)?\r\n(?:" + _FIELD_LINE + rb"\r\n)*+"
)
"""A status line and header lines (RFC 9112 section 4, 5): no folding, no space before a colon.
Possessive repeats: a line never needs to give back a byte, and not offering to is faster."""
_TRAILER_LINE = re.compile(_FIELD_LINE)
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,16})(?:[ \t]*+;" + _TEXT + rb"*+)?")
"""RFC 9112 section 7.1: the size in hex, then perhaps ``;`` and extensions, which are ignored;
blanks only before the ``;`` (BWS), never around a bare size."""
_FIELD_PATTERN = re.compile(
    rb"\n(content-length|transfer-encoding|connection|content-type|cache-control|content-encoding):"
    rb"[ \t]*+([^\r\n]*+)\r"
)
"""In a lower-cased head: the fields that frame the body or that the REST contract reads. The
value keeps its trailing blanks (``_fields`` strips them): a lazy repeat that left them out cost
twice as much."""


class _Fields:
    """What ``_fields`` reads of a head; a plain class, so that mypyc builds it natively."""

    __slots__ = (
        "cache_control",
        "codings",
        "connection",
        "content_codings",
        "content_type",
        "lengths",
    )

    def __init__(self) -> None:
        self.lengths: set[bytes] = set()
        self.codings: list[bytes] = []
        self.connection: list[bytes] = []
        self.content_type: str | None = None
        self.cache_control: str | None = None
        self.content_codings: list[bytes] = []


def _fields(head: bytes) -> _Fields:
    """Field names and these values are case-insensitive, so the head is read lower-cased."""
    fields = _Fields()
    cache_control: list[bytes] = []
    for name, padded in _FIELD_PATTERN.findall(head.lower()):
        value = padded.rstrip(b" \t")
        if name == b"content-length":
            fields.lengths.update(_split_list(value))
        elif name == b"transfer-encoding":
            fields.codings += _split_list(value)
        elif name == b"connection":
            fields.connection += _split_list(value)
        elif name == b"content-type":
            if fields.content_type is None:
                fields.content_type = value.decode("latin-1")
        elif name == b"content-encoding":
            fields.content_codings += _split_list(value)
        else:
            cache_control.append(value)
    if cache_control:
        fields.cache_control = b", ".join(cache_control).decode("latin-1")
    return fields


def _split_list(value: bytes) -> list[bytes]:
    if value.find(b",") < 0:  # on 3.11, ``in`` on bytes raises and clears a TypeError first
        return [value]  # already stripped by the field pattern
    return [part.strip(b" \t") for part in value.split(b",")]


def _chunk_size(line: bytes) -> int:
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        raise HttpProtocolError("invalid chunk size")
    return int(match[1], 16)


_COMPRESSIONS = frozenset(
    (b"gzip", b"x-gzip", b"deflate", b"br", b"zstd", b"compress", b"x-compress")
)
"""Content codings that change the bytes; others (``identity``, ``none``, unknown labels) are
read as they come, as pyreqwest passes them through."""
_FIRST_CHUNK = re.compile(rb"([0-9a-fA-F]{1,8})\r\n")
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_EOF, _DONE = range(8)
_BODY_STATES = (_LENGTH, _CHUNK_DATA, _UNTIL_EOF)


class ResponseParser:
    """Fed the bytes of one connection after one request; returns the response once complete.

    Bodies of statuses other than 200 are read and dropped, so the connection can carry the next
    request; one longer than the limit ends the response early and the connection is not reused.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_buffer",
        "_cache_control",
        "_content_type",
        "_head_scanned",
        "_keep_alive",
        "_keep_body",
        "_max_body",
        "_received",
        "_remaining",
        "_state",
        "_status",
        "_trailer_bytes",
        "reusable",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._buffer = bytearray()
        """Bytes received but not yet consumed: an incomplete line or head."""
        self._head_scanned = 0
        self._state = _HEAD
        self._received = 0
        self._status = 0
        self._content_type: str | None = None
        self._cache_control: str | None = None
        self._keep_alive = False
        self._keep_body = False
        self._remaining = 0
        self._body = bytearray()
        self._body_size = 0
        self._trailer_bytes = 0
        self.reusable = False
        """After completion: the connection may carry another request."""

    @property
    def started(self) -> bool:
        return self._received > 0

    def feed(self, data: bytes) -> HttpResponse | None:
        """The response once its last byte has arrived; raises on bytes that cannot be framed."""
        if not data:
            return None
        if self._state == _DONE:
            self.reusable = False  # bytes after a complete response: the stream is out of step
            return None
        self._received += len(data)
        if self._buffer:
            # an incomplete line or head: grown in place, so that tiny reads stay linear
            self._buffer += data
            buffer: bytes | bytearray = self._buffer
        else:
            buffer = data
        position = 0
        while self._state != _DONE:
            state = self._state
            if state == _HEAD:
                advanced = self._read_head(buffer, position)
            elif state in _BODY_STATES:
                advanced = self._read_body(buffer, position)
            else:
                advanced = self._read_chunk_framing(buffer, position)
            if advanced == position and self._state == state:
                if buffer is not self._buffer or position:
                    self._buffer = bytearray(buffer[position:])
                return None
            position = advanced
        if position < len(buffer):
            self.reusable = False  # anything after the response was not asked for
        self._buffer = bytearray()
        return self._response()

    def feed_eof(self) -> HttpResponse:
        """The peer closed: complete only for a body delimited by the close itself."""
        if self._state == _UNTIL_EOF:
            self._complete(reusable=False)
            return self._response()
        raise ResponseIncomplete(self.started)

    def _read_head(self, buffer: bytes | bytearray, position: int) -> int:
        # a head that arrives in pieces is searched only where new bytes may complete it
        scan_from = max(position, position + self._head_scanned - 3)
        end = buffer.find(b"\r\n\r\n", scan_from, position + MAX_HEAD_BYTES)
        if end < 0:
            if buffer.find(b"\n\n", scan_from) >= 0:
                raise HttpProtocolError("response head with bare LF line ends")
            if len(buffer) - position >= MAX_HEAD_BYTES:
                raise HttpProtocolError("response head too large")
            self._head_scanned = len(buffer) - position
            return position
        self._head_scanned = 0
        head = bytes(buffer[position : end + 2])
        match = _HEAD_PATTERN.fullmatch(head)
        if match is None:
            raise HttpProtocolError("invalid status line or header line")
        if head.count(b"\n") > MAX_HEADERS + 1:
            raise HttpProtocolError("too many headers")
        status = int(match[2])
        if status < 200:
            if status == 101:
                raise HttpProtocolError("unexpected protocol switch")
            return end + 4  # an interim answer: the real one follows
        fields = _fields(head)
        self._status = status
        self._content_type = fields.content_type
        self._cache_control = fields.cache_control
        http11 = match[1] == b"1"
        self._keep_alive = b"close" not in fields.connection and (
            http11 or (b"keep-alive" in fields.connection and not fields.codings)
        )  # RFC 9112 6.1: chunked in an HTTP/1.0 answer means close after it
        self._keep_body = status == 200
        if self._keep_body and not _COMPRESSIONS.isdisjoint(fields.content_codings):
            # we sent Accept-Encoding: identity; a compressed body is not the API's answer
            raise HttpProtocolError("compressed body (Content-Encoding)")
        self._frame_body(status, fields.lengths, fields.codings)
        return end + 4

    def _frame_body(self, status: int, lengths: set[bytes], codings: list[bytes]) -> None:
        """RFC 9112 section 6.3, for a response to a GET or POST."""
        if lengths and codings:
            self._keep_alive = False  # a length beside a transfer coding is a smuggling sign
        if status in (204, 304):
            self._state, self._remaining = _LENGTH, 0
        elif codings:
            if codings != [b"chunked"]:
                raise HttpProtocolError("unsupported transfer coding")
            self._state = _CHUNK_SIZE
        elif lengths:
            if len(lengths) != 1:
                raise HttpProtocolError("conflicting Content-Length values")
            (length,) = lengths
            if not length.isdigit() or len(length) > _MAX_LENGTH_DIGITS:
                raise HttpProtocolError("invalid Content-Length")
            self._state, self._remaining = _LENGTH, int(length)
            if self._remaining > self._max_body:
                if self._keep_body:
                    raise BodyTooLarge
                # not worth reading: answer from the head and close the connection
                self._remaining, self._keep_alive = 0, False
        else:
            self._state, self._keep_alive = _UNTIL_EOF, False

    def _read_body(self, buffer: bytes | bytearray, position: int) -> int:
        state, available = self._state, len(buffer) - position
        count = available if state == _UNTIL_EOF else min(self._remaining, available)
        if count:
            self._remaining -= count
            self._body_size += count
            if self._keep_body:
                if self._body_size > self._max_body:
                    raise BodyTooLarge
                self._body += buffer[position : position + count]
            elif self._body_size > self._max_body:
                self._complete(reusable=False)  # a dropped body over the limit: stop reading it
                return position + count
            position += count
        if state == _UNTIL_EOF or self._remaining:
            return position
        if state == _LENGTH:
            self._complete(self._keep_alive)
        else:
            self._state = _CHUNK_END
        return position

    def _read_chunk_framing(self, buffer: bytes | bytearray, position: int) -> int:
        if self._state == _CHUNK_SIZE and not self._body_size:
            after = self._read_whole_chunked_body(buffer, position)
            if after is not None:
                return after
        if self._state == _CHUNK_END:
            if len(buffer) - position < 2:
                return position
            if buffer[position : position + 2] != b"\r\n":
                raise HttpProtocolError("chunk not followed by CRLF")
            self._state = _CHUNK_SIZE
            return position + 2
        end = buffer.find(b"\r\n", position, position + MAX_LINE_BYTES + 2)
        if end < 0:
            if len(buffer) - position > MAX_LINE_BYTES + 1:  # + 1: its CR may be here already
                raise HttpProtocolError("chunk size or trailer line too long")
            return position
        line = bytes(buffer[position:end])
        if self._state == _CHUNK_SIZE:
            self._remaining = _chunk_size(line)
            self._state = _CHUNK_DATA if self._remaining else _TRAILERS
        elif not line:
            self._complete(self._keep_alive)
        else:
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_HEAD_BYTES:
                raise HttpProtocolError("trailers too large")
            if _TRAILER_LINE.fullmatch(line) is None:
                raise HttpProtocolError("invalid trailer line")
        return end + 2

    def _read_whole_chunked_body(self, buffer: bytes | bytearray, position: int) -> int | None:
        """The usual chunked body, one chunk and the last chunk without trailers, in one step;
        ``None`` leaves anything else to the chunk-by-chunk path."""
        match = _FIRST_CHUNK.match(buffer, position)
        if match is None or not (size := int(match[1], 16)):
            return None  # a last chunk first (an empty body) has its trailers to read
        self._state, self._remaining = _CHUNK_DATA, size
        position = self._read_body(buffer, match.end())
        if self._state == _CHUNK_END and buffer[position : position + 7] == b"\r\n0\r\n\r\n":
            self._complete(self._keep_alive)
            return position + 7
        return position

    def _complete(self, reusable: bool) -> None:
        self._state = _DONE
        self.reusable = reusable

    def _response(self) -> HttpResponse:
        body = bytes(self._body) if self._keep_body else b""
        return HttpResponse(self._status, body, self._content_type, self._cache_control)
