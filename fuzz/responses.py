"""The invariants of the HTTP response parser, checked on each fuzzer input: only its typed
errors escape, the same outcome however the stream is split, bounded buffers, no kept body over
the limit, and a connection called reusable only when the response's framing was definite."""

from __future__ import annotations

from dataclasses import dataclass

from fuzz.harness import parse_input, reads
from postfix_rest_api_connector.httpclient.codec import (
    MAX_HEAD_BYTES,
    BodyTooLarge,
    HttpProtocolError,
    HttpResponse,
    ResponseIncomplete,
    ResponseParser,
)

MAX_BODIES = (0, 16, 1024)


@dataclass(frozen=True)
class Parsed:
    response: HttpResponse | None
    reusable: bool
    error: str | None
    """The error's type name: the message may name where, which a split can change."""
    started: bool | None = None
    """For ``ResponseIncomplete``: whether any byte had arrived."""


def _check(response: HttpResponse, max_body: int) -> None:
    assert 200 <= response.status <= 999, response
    assert len(response.body) <= max_body, response
    assert response.status == 200 or not response.body, response


def parse(chunks: list[bytes], max_body: int) -> Parsed:
    """Feeds every chunk, then the end of the stream if the response is not complete by then."""
    parser = ResponseParser(max_body)
    response = None
    try:
        for chunk in chunks:
            response = parser.feed(chunk) or response
            assert len(parser._buffer) <= MAX_HEAD_BYTES, len(parser._buffer)
            assert len(parser._body) <= max_body, len(parser._body)
        if response is None:
            response = parser.feed_eof()
            assert not parser.reusable, "a response ended by the close is reusable"
    except ResponseIncomplete as error:
        return Parsed(response, parser.reusable, type(error).__name__, error.started)
    except (HttpProtocolError, BodyTooLarge) as error:
        return Parsed(response, parser.reusable, type(error).__name__)
    _check(response, max_body)
    reusable = parser.reusable
    if reusable:
        parser.feed(b"H")
        assert not parser.reusable, "bytes nobody asked for left the connection reusable"
    return Parsed(response, reusable, None)


def final_head(stream: bytes) -> list[bytes]:
    """The lower-cased lines of the head after any interim (1xx) ones; for a stream the parser
    accepted, so every head is there and ends in CRLF CRLF."""
    position = 0
    while True:
        end = stream.index(b"\r\n\r\n", position)
        lines = stream[position:end].lower().split(b"\r\n")
        if lines[0][9:10] != b"1":
            return lines
        position = end + 4


def check_reusable(stream: bytes, max_body: int) -> None:
    """Framing was definite: the response needed its last byte, and its head asks for neither
    a close nor anything that could be read two ways."""
    assert ResponseParser(max_body).feed(stream[:-1]) is None, "complete before its last byte"
    lines = final_head(stream)
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name, []).extend(token.strip(b" \t") for token in value.split(b","))
    no_body = lines[0][9:12] in (b"204", b"304")
    framed = no_body or b"content-length" in fields or b"transfer-encoding" in fields
    assert framed, "reusable after a body that only the close ends"
    assert not (b"content-length" in fields and b"transfer-encoding" in fields), "CL and TE"
    assert b"close" not in fields.get(b"connection", []), "reusable despite Connection: close"
    assert lines[0].startswith(b"http/1.1") or b"keep-alive" in fields.get(b"connection", [])


def one_input(data: bytes) -> None:
    choice, sizes, stream = parse_input(data)
    max_body = MAX_BODIES[choice % len(MAX_BODIES)]
    whole = parse(list(reads(stream, [])), max_body)
    if sizes:
        split = parse(list(reads(stream, sizes)), max_body)
        assert split == whole, (split, whole)
    if whole.reusable:
        check_reusable(stream, max_body)
