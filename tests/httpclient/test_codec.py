"""HTTP/1.1 response codec of the native client: golden responses at every read size, malformed
framing refused at once, body limits, and Hypothesis on splits and on arbitrary bytes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeding import split_reads
from postfix_rest_api_connector.httpclient.codec import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    BodyTooLarge,
    HttpProtocolError,
    HttpResponse,
    ResponseIncomplete,
    ResponseParser,
    encode_request,
)

READ_SIZES = (4096, 128, 16, 1)
MAX_BODY = 1024
JSON = "application/json"


def replay(parser: ResponseParser, wire: bytes, sizes: Sequence[int]) -> list[HttpResponse]:
    """Every response ``feed`` returned while ``wire`` arrived in reads of the given sizes."""
    return [
        response for read in split_reads(wire, sizes) if (response := parser.feed(read)) is not None
    ]


@dataclass(frozen=True)
class Golden:
    name: str
    wire: bytes
    response: HttpResponse
    reusable: bool
    until_eof: bool = False
    """The body ends with the connection: the response is complete only at ``feed_eof``."""


GOLDEN = [
    Golden(
        "content-length",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n"
        b"Cache-Control: max-age=60\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n"
        b'["alice"]',
        HttpResponse(200, b'["alice"]', JSON, "max-age=60"),
        reusable=True,
    ),
    Golden(
        "content-length-zero",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        HttpResponse(200, b"", None, None),
        reusable=True,
    ),
    Golden(
        "several-equal-content-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=True,
    ),
    Golden(
        "no-reason-phrase-and-optional-whitespace",
        b"HTTP/1.1 200\r\nContent-Type:  \t application/json \t\r\nContent-Length:2 \r\n\r\n[]",
        HttpResponse(200, b"[]", JSON, None),
        reusable=True,
    ),
    Golden(
        "chunked-with-extensions-and-trailers",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\n"
        b'["al\r\n'
        b'5 ; quoted="a;b"\r\n'
        b'ice",\r\n'
        b"A\r\n"
        b'"bob@ex.y"\r\n'
        b"1\r\n]\r\n"
        b"0;end\r\nX-Checksum: 1234\r\nX-Other: y\r\n\r\n",
        HttpResponse(200, b'["alice","bob@ex.y"]', JSON, None),
        reusable=True,
    ),
    Golden(
        "chunked-coding-name-case-insensitive",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        HttpResponse(200, b"[]", None, None),
        reusable=True,
    ),
    Golden(
        "chunked-beside-content-length-not-reused",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n[]\r\n0\r\n\r\n",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "204-with-content-length-and-chunked-not-reused",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        HttpResponse(204, b"", None, None),
        reusable=False,
    ),
    Golden(
        "tab-and-obs-text-in-reason-and-values",
        b"HTTP/1.1 200 Caf\xe9\tOK\r\nX-Name: caf\xe9\tau lait\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=True,
    ),
    Golden(
        "close-delimited",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\naction=DUNNO\n",
        HttpResponse(200, b"action=DUNNO\n", "text/plain", None),
        reusable=False,
        until_eof=True,
    ),
    Golden(
        "close-delimited-empty",
        b"HTTP/1.1 200 OK\r\n\r\n",
        HttpResponse(200, b"", None, None),
        reusable=False,
        until_eof=True,
    ),
    Golden(
        "204-no-body",
        b"HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n",
        HttpResponse(204, b"", None, "no-store"),
        reusable=True,
    ),
    Golden(
        "304-ignores-its-content-length",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n"
        b"Content-Type: application/json\r\n\r\n",
        HttpResponse(304, b"", JSON, None),
        reusable=True,
    ),
    Golden(
        "100-continue-and-102-before-200",
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=True,
    ),
    Golden(
        "http-1.0-closes-by-default",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "http-1.0-keep-alive",
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=True,
    ),
    Golden(
        "http-1.0-close-delimited",
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[1]",
        HttpResponse(200, b"[1]", JSON, None),
        reusable=False,
        until_eof=True,
    ),
    Golden(
        "connection-close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "connection-close-in-a-list",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: TE, Close\r\n"
        b"Content-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "extra-bytes-after-the-response",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "extra-bytes-after-a-chunked-response",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n\r\n",
        HttpResponse(200, b"[]", None, None),
        reusable=False,
    ),
    Golden(
        "404-body-dropped",
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n"
        b'{"error":"not found"}',
        HttpResponse(404, b"", JSON, None),
        reusable=True,
    ),
    Golden(
        "500-chunked-body-dropped",
        b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\noops!\r\n3\r\nabc\r\n0\r\n\r\n",
        HttpResponse(500, b"", None, None),
        reusable=True,
    ),
    Golden(
        "201-body-dropped-too",
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(201, b"", None, None),
        reusable=True,
    ),
    Golden(
        "503-close-delimited-body-dropped",
        b"HTTP/1.1 503 Service Unavailable\r\n\r\ncome back later",
        HttpResponse(503, b"", None, None),
        reusable=False,
        until_eof=True,
    ),
    Golden(
        "header-names-case-insensitive",
        b"HTTP/1.1 200 OK\r\ncontent-TYPE: application/json\r\nCONTENT-LENGTH: 2\r\n"
        b"cache-control: no-cache\r\nCoNnEcTiOn: CLOSE\r\n\r\n[]",
        HttpResponse(200, b"[]", JSON, "no-cache"),
        reusable=False,
    ),
    Golden(
        "several-cache-control-fields-joined",
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nX-Cache-Control: ignored\r\n"
        b"Content-Length: 2\r\ncache-control: private,  must-revalidate\r\n\r\n[]",
        HttpResponse(200, b"[]", None, "max-age=60, private,  must-revalidate"),
        reusable=True,
    ),
    Golden(
        "first-content-type-kept-and-look-alike-names-ignored",
        b"HTTP/1.1 200 OK\r\nContent-Type-Options: nosniff\r\nContent-Type: application/json\r\n"
        b"Content-Type: text/html\r\nX-Content-Length: 99\r\nContent-Length: 2\r\n\r\n[]",
        HttpResponse(200, b"[]", JSON, None),
        reusable=True,
    ),
]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize("golden", GOLDEN, ids=[golden.name for golden in GOLDEN])
def test_golden_response(golden: Golden, read_size: int) -> None:
    parser = ResponseParser(MAX_BODY)
    assert not parser.started

    responses = replay(parser, golden.wire, (read_size,))
    if golden.until_eof:
        assert responses == []
        responses.append(parser.feed_eof())

    assert responses == [golden.response]
    assert parser.reusable is golden.reusable
    assert parser.started


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_interim_response_alone_is_incomplete(read_size: int) -> None:
    parser = ResponseParser(MAX_BODY)

    assert replay(parser, b"HTTP/1.1 100 Continue\r\n\r\n", (read_size,)) == []
    with pytest.raises(ResponseIncomplete) as raised:
        parser.feed_eof()
    assert raised.value.started


@pytest.mark.parametrize(
    ("wire", "started"),
    [
        (b"", False),
        (b"HTTP/1.1 200 OK\r\nContent-Le", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[]", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\nX: y\r\n", True),
    ],
    ids=["nothing", "mid-head", "short-body", "no-last-chunk", "mid-trailers"],
)
def test_eof_before_the_end_is_incomplete(wire: bytes, started: bool) -> None:
    parser = ResponseParser(MAX_BODY)
    assert parser.feed(wire) is None

    with pytest.raises(ResponseIncomplete) as raised:
        parser.feed_eof()

    assert isinstance(raised.value, HttpProtocolError)
    assert raised.value.started is started
    assert parser.started is started


def test_bytes_after_completion_make_the_connection_unusable() -> None:
    parser = ResponseParser(MAX_BODY)
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]") is not None
    assert parser.reusable

    assert parser.feed(b"H") is None
    assert not parser.reusable


_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
_TOO_MANY_HEADERS = b"".join(b"X-H%d: v\r\n" % index for index in range(MAX_HEADERS + 1))

MALFORMED = [
    ("garbage-status-line", b"HELLO\r\n\r\n"),
    ("http-2-status-line", b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("lowercase-protocol", b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("two-digit-status", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status-below-100", b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"),
    ("no-space-before-reason", b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n"),
    ("two-spaces-before-status", b"HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("leading-space", b" HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("nul-in-reason", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
    ("obs-fold-tab", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\t0\r\n\r\n"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n[]"),
    ("no-colon", b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n[]"),
    ("empty-header-name", b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 0\r\n\r\n"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-Id: a\x00b\r\nContent-Length: 0\r\n\r\n"),
    ("bare-cr-in-value", b"HTTP/1.1 200 OK\r\nX-Id: a\rb\r\nContent-Length: 0\r\n\r\n"),
    ("bare-lf-in-head", b"HTTP/1.1 200 OK\r\nX-Id: a\nb: c\r\nContent-Length: 0\r\n\r\n"),
    ("control-in-value", b"HTTP/1.1 200 OK\r\nX-Id: a\x01b\r\nContent-Length: 0\r\n\r\n"),
    ("del-in-value", b"HTTP/1.1 200 OK\r\nX-Id: a\x7fb\r\nContent-Length: 0\r\n\r\n"),
    ("control-in-reason", b"HTTP/1.1 200 O\x1bK\r\nContent-Length: 0\r\n\r\n"),
    ("bad-chunk-size", _CHUNKED_HEAD + b"zz\r\n"),
    ("chunk-size-hex-prefix", _CHUNKED_HEAD + b"0x2\r\n[]\r\n0\r\n\r\n"),
    ("chunk-size-signed", _CHUNKED_HEAD + b"+2\r\n[]\r\n0\r\n\r\n"),
    ("empty-chunk-size", _CHUNKED_HEAD + b"\r\n"),
    ("chunk-size-only-extension", _CHUNKED_HEAD + b";ext\r\n"),
    ("chunk-size-too-many-digits", _CHUNKED_HEAD + b"1" + b"0" * 16 + b"\r\n"),
    ("space-before-chunk-size", _CHUNKED_HEAD + b" 2\r\n[]\r\n0\r\n\r\n"),
    ("space-after-chunk-size-without-extension", _CHUNKED_HEAD + b"2 \r\n[]\r\n0\r\n\r\n"),
    ("bare-lf-in-chunk-extension", _CHUNKED_HEAD + b"2;a\nb\r\n[]\r\n0\r\n\r\n"),
    ("control-in-chunk-extension", _CHUNKED_HEAD + b"2;a\x01\r\n[]\r\n0\r\n\r\n"),
    ("trailer-without-colon", _CHUNKED_HEAD + b"2\r\n[]\r\n0\r\nno colon\r\n\r\n"),
    ("trailer-with-control", _CHUNKED_HEAD + b"2\r\n[]\r\n0\r\nX-T: a\x01\r\n\r\n"),
    ("folded-trailer", _CHUNKED_HEAD + b"2\r\n[]\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
    ("no-crlf-after-chunk-data", _CHUNKED_HEAD + b"2\r\n[]XX0\r\n\r\n"),
    ("lf-only-after-chunk-data", _CHUNKED_HEAD + b"2\r\n[]\n0\r\n\r\n"),
    ("chunk-data-longer-than-size", _CHUNKED_HEAD + b"1\r\n[]\r\n0\r\n\r\n"),
    ("conflicting-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]"),
    ("conflicting-lengths-in-a-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n[]"),
    ("non-digit-length", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\n[]"),
    ("signed-length", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n[]"),
    ("negative-length", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    ("empty-length", b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"),
    ("unicode-digit-length", b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa2\r\n\r\n[]"),
    ("huge-length", b"HTTP/1.1 404 Nope\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\n"),
    ("gzip-coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("gzip-then-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("chunked-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    (
        "chunked-in-two-fields",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    ),
    ("empty-coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n"),
    ("identity-coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n[]"),
    ("101-switching", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
    (
        "101-after-100",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    ),
    ("bad-head-after-100", b"HTTP/1.1 100 Continue\r\n\r\nnonsense\r\n\r\n"),
    ("too-many-headers", b"HTTP/1.1 200 OK\r\n" + _TOO_MANY_HEADERS + b"\r\n"),
    (
        "too-many-headers-in-an-interim-response",
        b"HTTP/1.1 100 Continue\r\n" + _TOO_MANY_HEADERS + b"\r\n",
    ),
    ("chunk-line-too-long", _CHUNKED_HEAD + b"1;" + b"e" * MAX_LINE_BYTES + b"\r\nx\r\n0\r\n\r\n"),
    ("chunk-line-too-long-without-end", _CHUNKED_HEAD + b"1;" + b"e" * MAX_LINE_BYTES),
    (
        "trailer-line-too-long",
        _CHUNKED_HEAD + b"0\r\nX-Trailer: " + b"t" * MAX_LINE_BYTES + b"\r\n\r\n",
    ),
    (
        "trailers-too-large",
        _CHUNKED_HEAD + b"0\r\n" + (b"X: " + b"t" * 4000 + b"\r\n") * 17 + b"\r\n",
    ),
]
"""Each wire is complete: the error must come by its last byte, never a wait for more."""

LARGE_MALFORMED = [
    ("head-over-limit-without-end", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES),
    (
        "head-over-limit-with-end",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "second-head-over-limit",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES,
    ),
]
"""Heads over ``MAX_HEAD_BYTES``: not replayed one byte at a time, which the parser handles in
time quadratic in the head's length (about a second for 64 KiB)."""


def _malformed_cases() -> list[object]:
    cases: list[object] = [
        pytest.param(wire, size, id=f"{name}-read{size}")
        for name, wire in MALFORMED
        for size in READ_SIZES
    ]
    cases += [
        pytest.param(wire, size, id=f"{name}-read{size}")
        for name, wire in LARGE_MALFORMED
        for size in READ_SIZES[:-1]
    ]
    return cases


@pytest.mark.parametrize(("wire", "read_size"), _malformed_cases())
def test_malformed_response_is_refused_without_waiting(wire: bytes, read_size: int) -> None:
    parser = ResponseParser(MAX_BODY)

    with pytest.raises(HttpProtocolError) as raised:
        replay(parser, wire, (read_size,))

    assert not isinstance(raised.value, ResponseIncomplete)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\n[]",
    ],
    ids=["lf-only", "lf-only-after-headers", "lf-only-blank-line"],
)
def test_complete_head_with_bare_lf_line_ends_is_not_awaited_forever(wire: bytes) -> None:
    """RFC 9112 section 2.2 lets a recipient take a bare LF as a line end; either way, a whole
    response with one must be answered (parsed or refused) once it has arrived, not waited on
    until the request times out."""
    outcome: HttpResponse | HttpProtocolError | None
    try:
        outcome = ResponseParser(MAX_BODY).feed(wire)
    except HttpProtocolError as error:
        outcome = error

    assert outcome is not None, "the whole response has arrived, yet the parser waits for more"
    if isinstance(outcome, HttpResponse):
        assert outcome == HttpResponse(200, b"[]", None, None)


def _with_chunk_line(line: bytes) -> bytes:
    return _CHUNKED_HEAD + line + b"\r\n[]\r\n0\r\n\r\n"


def _with_trailer_line(line: bytes) -> bytes:
    return _CHUNKED_HEAD + b"2\r\n[]\r\n0\r\n" + line + b"\r\n\r\n"


EXACT_LINES = [
    pytest.param(_with_chunk_line, b"2;" + b"e" * (MAX_LINE_BYTES - 2), id="chunk-size-line"),
    pytest.param(
        _with_trailer_line, b"X-Trailer: " + b"t" * (MAX_LINE_BYTES - 11), id="trailer-line"
    ),
]
"""Lines of exactly ``MAX_LINE_BYTES`` bytes before their CRLF: accepted when fed at once."""


@pytest.mark.parametrize(
    "offset",
    [-1, 0, 1, 2],
    ids=["cut-before-last-byte", "cut-before-cr", "cut-between-cr-and-lf", "cut-after-lf"],
)
@pytest.mark.parametrize(("build", "line"), EXACT_LINES)
def test_line_of_exactly_max_line_bytes_is_accepted_at_any_cut(
    build: Callable[[bytes], bytes], line: bytes, offset: int
) -> None:
    assert len(line) == MAX_LINE_BYTES
    wire = build(line)
    expected = HttpResponse(200, b"[]", None, None)
    assert ResponseParser(MAX_BODY).feed(wire) == expected
    cut = wire.index(line) + len(line) + offset
    parser = ResponseParser(MAX_BODY)

    assert replay(parser, wire, (cut, len(wire))) == [expected]
    assert parser.reusable


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(("build", "line"), EXACT_LINES)
def test_line_of_exactly_max_line_bytes_is_accepted_at_every_read_size(
    build: Callable[[bytes], bytes], line: bytes, read_size: int
) -> None:
    parser = ResponseParser(MAX_BODY)

    assert replay(parser, build(line), (read_size,)) == [HttpResponse(200, b"[]", None, None)]


def test_head_of_exactly_max_head_bytes_is_accepted() -> None:
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    head = start + b"p" * (MAX_HEAD_BYTES - len(start) - 4) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD_BYTES

    for sizes in ((len(head) + 2,), (len(head) - 1, 3), (4096,)):
        parser = ResponseParser(MAX_BODY)
        assert replay(parser, head + b"[]", sizes) == [HttpResponse(200, b"[]", None, None)]
        assert parser.reusable


def test_exactly_max_headers_are_accepted() -> None:
    headers = b"".join(b"X-H%d: v\r\n" % index for index in range(MAX_HEADERS - 1))
    wire = b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 2\r\n\r\n[]"

    assert ResponseParser(MAX_BODY).feed(wire) == HttpResponse(200, b"[]", None, None)


# Body limits.


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1),
        _CHUNKED_HEAD + b"200\r\n" + b"x" * 512 + b"\r\n201\r\n" + b"y" * 513 + b"\r\n0\r\n\r\n",
        _CHUNKED_HEAD + b"ffffffffffff\r\n" + b"z" * (MAX_BODY + 1),
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 1),
    ],
    ids=["content-length", "chunked", "chunked-huge-size", "close-delimited"],
)
def test_kept_body_over_the_limit_is_refused(wire: bytes, read_size: int) -> None:
    with pytest.raises(BodyTooLarge):
        replay(ResponseParser(MAX_BODY), wire, (read_size,))


def test_content_length_over_the_limit_is_refused_from_the_head() -> None:
    parser = ResponseParser(MAX_BODY)

    with pytest.raises(BodyTooLarge):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + b"x" * MAX_BODY,
        _CHUNKED_HEAD + b"200\r\n" + b"x" * 512 + b"\r\n200\r\n" + b"x" * 512 + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_kept_body_at_the_limit_is_whole(wire: bytes, read_size: int) -> None:
    parser = ResponseParser(MAX_BODY)

    assert replay(parser, wire, (read_size,)) == [HttpResponse(200, b"x" * MAX_BODY, None, None)]
    assert parser.reusable


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
        % (MAX_BODY + 1)
        + b"x" * (MAX_BODY + 1),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
        % (MAX_BODY + 1),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"100\r\n" + b"x" * 256 + b"\r\n") * 5
        + b"0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n" + b"x" * (MAX_BODY + 1),
    ],
    ids=["content-length", "content-length-head-only", "chunked", "close-delimited"],
)
def test_dropped_body_over_the_limit_ends_the_response_early(wire: bytes, read_size: int) -> None:
    parser = ResponseParser(MAX_BODY)

    assert replay(parser, wire, (read_size,)) == [HttpResponse(404, b"", "text/html", None)]
    assert not parser.reusable


def test_dropped_body_over_the_limit_completes_before_its_end() -> None:
    """Completion comes with the byte past the limit: the rest of an endless body is not read."""
    parser = ResponseParser(MAX_BODY)
    head = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n"
    assert parser.feed(head + b"x" * MAX_BODY) is None

    assert parser.feed(b"x") == HttpResponse(500, b"", None, None)
    assert not parser.reusable


# encode_request


def test_encode_request_without_body() -> None:
    assert (
        encode_request(b"GET", b"/a?key=b", b"Host: h\r\nX-Request-Id: 1\r\n", None)
        == b"GET /a?key=b HTTP/1.1\r\nHost: h\r\nX-Request-Id: 1\r\n\r\n"
    )


def test_encode_request_with_body_adds_its_length() -> None:
    assert (
        encode_request(b"POST", b"/p", b"Host: h\r\n", b"a=1&b=%C3%A9")
        == b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\na=1&b=%C3%A9"
    )
    assert encode_request(b"POST", b"/p", b"", b"").endswith(b"Content-Length: 0\r\n\r\n")


# Hypothesis: splits and fuzzing.


@dataclass(frozen=True)
class Built:
    wire: bytes
    response: HttpResponse
    reusable: bool
    until_eof: bool


@st.composite
def valid_responses(draw: st.DrawFn) -> Built:
    """A response with a random framing, version, status, fields and chunking, and what it
    must parse to; bodies stay under ``MAX_BODY``."""
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 500, 503]))
    framing = draw(st.sampled_from(["length", "chunked", "eof"]))
    connection = draw(st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, Upgrade"]))
    content_type = draw(st.none() | st.sampled_from([JSON, "text/plain; charset=utf-8"]))
    cache_control = draw(st.lists(st.sampled_from(["max-age=60", "no-cache", "private"])))
    body = draw(st.binary(max_size=300))
    interim = draw(st.lists(st.sampled_from([b"100 Continue", b"102 Processing", b"103 Early"])))
    has_body = status not in (204, 304)

    fields: list[bytes] = [b"Date: Mon, 01 Jan 2024 00:00:00 GMT"]
    if content_type is not None:
        fields.append(b"Content-Type: " + content_type.encode())
    fields += [b"Cache-Control: " + value.encode() for value in cache_control]
    if connection is not None:
        fields.append(b"Connection: " + connection)
    payload = b""
    if framing == "length":
        fields.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=5)))
        for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
            if piece := body[start:end]:
                extension = draw(st.sampled_from([b"", b";a=b", b" ;x"]))
                payload += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
        trailers = draw(st.lists(st.sampled_from([b"X-T: 1\r\n", b"Expires: 0\r\n"])))
        payload += b"0\r\n" + b"".join(trailers) + b"\r\n"
    else:
        payload = body
    fields = list(draw(st.permutations(fields)))
    joined = b", ".join(field[15:] for field in fields if field.startswith(b"Cache-Control: "))

    wire = b"".join(b"HTTP/1.1 %s\r\n\r\n" % line for line in interim)
    wire += b"HTTP/" + version + b" %d Reason\r\n" % status + b"\r\n".join(fields) + b"\r\n\r\n"
    if has_body:
        wire += payload
    lowered = (connection or b"").lower()
    keep_alive = b"close" not in lowered and (
        version == b"1.1" or (b"keep-alive" in lowered and framing != "chunked")
    )  # RFC 9112 6.1: chunked in an HTTP/1.0 answer means close after it
    until_eof = has_body and framing == "eof"
    expected = HttpResponse(
        status,
        body if status == 200 else b"",
        content_type,
        joined.decode() if cache_control else None,
    )
    return Built(wire, expected, keep_alive and not until_eof, until_eof)


def _parse(reads: Sequence[bytes], until_eof: bool) -> tuple[list[HttpResponse], bool]:
    parser = ResponseParser(MAX_BODY)
    responses = [response for read in reads if (response := parser.feed(read)) is not None]
    if until_eof:
        responses.append(parser.feed_eof())
    return responses, parser.reusable


@given(built=valid_responses(), data=st.data())
def test_any_split_of_a_valid_response_parses_as_one_feed(
    built: Built, data: st.DataObject
) -> None:
    wire = built.wire
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    # A socket read is never empty.
    bounds = zip([0, *cuts], [*cuts, len(wire)], strict=True)
    reads = [wire[start:end] for start, end in bounds if end > start]

    whole = _parse([wire], built.until_eof)
    split = _parse(reads, built.until_eof)

    assert whole == ([built.response], built.reusable)
    assert split == whole


FRAGMENTS = [
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 404 Not Found\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 70000\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Cache-Control: max-age=5\r\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"0\r\n",
    b"5;x=y\r\n",
    b"ffff\r\n",
    b"abcde",
    b"\x00",
    b" ",
    b":",
    b";",
    b"X-Pad: " + b"p" * 5000,
    b"e" * 3000,
]


@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=40),
    read_sizes=st.lists(st.sampled_from([1, 3, 16, 128, 4096]), min_size=1, max_size=4),
    max_body=st.sampled_from([0, 16, 1024]),
)
def test_arbitrary_bytes_raise_only_codec_errors_and_stay_bounded(
    pieces: list[bytes], read_sizes: list[int], max_body: int
) -> None:
    stream = b"".join(pieces)
    if len(stream) > 8192:
        read_sizes = [max(size, 128) for size in read_sizes]  # keep single-byte replay short
    parser = ResponseParser(max_body)
    try:
        for read in split_reads(stream, read_sizes):
            response = parser.feed(read)
            # The private buffer holds an incomplete head or line: never more than the limit.
            assert len(parser._buffer) <= MAX_HEAD_BYTES
            if response is not None:
                assert len(response.body) <= max_body
                assert response.status == 200 or response.body == b""
        response = parser.feed_eof()
        assert len(response.body) <= max_body
    except (HttpProtocolError, BodyTooLarge):
        pass
