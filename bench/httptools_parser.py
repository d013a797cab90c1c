"""The alternative to the native client's own response parser, for one bench run: the same
interface as ``httpclient.codec.ResponseParser``, built on httptools (llhttp, the parser of
Node.js and uvicorn). docs/performance.md has the comparison and the decision.

    python bench/httptools_parser.py PEER_DIR    # then: bench/run.py --peer-src PEER_DIR

writes a peer source directory: this checkout's package, interpreted, with a ``sitecustomize``
that makes the native client parse with this class (compiled, ``native_connection`` calls its
parser directly, so the swap needs the interpreted one; it says so on stderr).

What it keeps of ours, on top of llhttp: only a 200's body, the body limit (a dropped body past
it ends the response early and closes), no compressed 200, ``chunked`` as the only transfer
coding, at most ``MAX_HEADERS`` fields, a close after an HTTP/1.0 response with a transfer
coding, and no reuse after bytes nobody asked for. Where it differs from ours, llhttp decides
(tests/httpclient/test_differential.py lists how llhttp differs): a response with Content-Length
beside Transfer-Encoding is refused rather than read and closed, so are identical lengths and
blanks before a chunk extension's ';'; a status under 100 and control characters or a NUL in the
reason phrase are accepted; lines, heads and lengths are not limited to ours' sizes (a length
of 19 digits is only "over the body limit"); and bare CR or LF bytes after the response go
unnoticed (llhttp skips them between messages, as it would on the next request's parser too).
Run against tests/httpclient/test_codec.py, it fails exactly those 17 vectors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httptools

from postfix_rest_api_connector.httpclient import native_connection as native
from postfix_rest_api_connector.httpclient.codec import (
    _COMPRESSIONS,
    MAX_HEADERS,
    BodyTooLarge,
    HttpProtocolError,
    HttpResponse,
    ResponseIncomplete,
    _split_list,
)

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "postfix_rest_api_connector"


class _Halt(Exception):
    """Raised in a callback to stop llhttp where it is; ``_error`` says why, if anything went
    wrong (httptools turns any callback exception into its own)."""


class HttptoolsResponseParser:
    """Fed the bytes of one connection after one request; returns the response once complete."""

    __slots__ = (
        "_body",
        "_body_size",
        "_cache_control",
        "_close_after",
        "_codings",
        "_compressed",
        "_content_type",
        "_error",
        "_fields",
        "_final",
        "_head_done",
        "_keep_body",
        "_lengths",
        "_max_body",
        "_parser",
        "_received",
        "_response",
        "_status",
        "reusable",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._received = 0
        self._response: HttpResponse | None = None
        self._error: Exception | None = None
        self._body = bytearray()
        self._body_size = 0
        self._start_message()
        self.reusable = False

    def _start_message(self) -> None:
        self._status = 0
        self._fields = 0
        self._content_type: str | None = None
        self._cache_control: list[bytes] = []
        self._lengths: set[bytes] = set()
        self._codings: list[bytes] = []
        self._compressed = False
        self._head_done = False
        self._final = False
        self._keep_body = False
        self._close_after = False

    @property
    def started(self) -> bool:
        return self._received > 0

    def feed(self, data: bytes) -> HttpResponse | None:
        if not data:
            return None
        if self._response is not None:
            self.reusable = False  # bytes after a complete response: the stream is out of step
            return None
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            if self._error is not None:
                raise self._error from None
            if self._response is None:
                raise HttpProtocolError(f"llhttp: {error}") from None
            self.reusable = False  # what followed the response was not asked for
        return self._response

    def feed_eof(self) -> HttpResponse:
        """The peer closed: complete only for a body delimited by the close itself."""
        if self._response is None and self._final and self._until_eof():
            self._complete(reusable=False)
            assert self._response is not None
            return self._response
        raise ResponseIncomplete(self.started)

    def _until_eof(self) -> bool:
        return self._status not in (204, 304) and not self._lengths and not self._codings

    def _halt(self, error: Exception | None = None) -> _Halt:
        self._error = error
        return _Halt()

    def _complete(self, reusable: bool) -> None:
        body = bytes(self._body) if self._keep_body else b""
        joined = b", ".join(self._cache_control).decode("latin-1") if self._cache_control else None
        self._response = HttpResponse(self._status, body, self._content_type, joined)
        self.reusable = reusable

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._response is not None:
            self.reusable = False
            raise self._halt()  # a second response nobody asked for
        self._start_message()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise self._halt(HttpProtocolError("too many headers"))
        name = name.lower()
        if name == b"content-type":
            if self._content_type is None:
                self._content_type = value.rstrip(b" \t").decode("latin-1")
        elif name == b"cache-control":
            self._cache_control.append(value.rstrip(b" \t"))  # llhttp keeps trailing blanks
        elif name == b"content-length":
            self._lengths.update(_split_list(value))
        elif name == b"transfer-encoding":
            self._codings += _split_list(value.lower())
        elif name == b"content-encoding":
            self._compressed |= not _COMPRESSIONS.isdisjoint(_split_list(value.lower()))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = True
        if self._status < 200:
            return  # an interim answer: the real one follows
        self._final, self._keep_body = True, self._status == 200
        if self._keep_body and self._compressed:
            raise self._halt(HttpProtocolError("compressed body (Content-Encoding)"))
        if self._status in (204, 304):
            return
        if self._codings:
            if self._codings != [b"chunked"]:
                raise self._halt(HttpProtocolError("unsupported transfer coding"))
            self._close_after = self._parser.get_http_version() == "1.0"  # RFC 9112 6.1
        elif self._lengths and int(next(iter(self._lengths))) > self._max_body:
            if self._keep_body:
                raise self._halt(BodyTooLarge())
            self._complete(reusable=False)  # answer from the head and close the connection
            raise self._halt()

    def on_body(self, body: bytes) -> None:
        if not self._final:
            return
        self._body_size += len(body)
        if self._keep_body:
            if self._body_size > self._max_body:
                raise self._halt(BodyTooLarge())
            self._body += body
        elif self._body_size > self._max_body:
            self._complete(reusable=False)  # a dropped body over the limit: stop reading it
            raise self._halt()

    def on_message_complete(self) -> None:
        if self._final:
            self._complete(self._parser.should_keep_alive() and not self._close_after)


def install() -> None:
    """Makes the native client parse with ``HttptoolsResponseParser`` in this process."""
    if not native.__file__ or not native.__file__.endswith(".py"):
        raise RuntimeError(f"{native.__file__}: a compiled native client cannot be switched")
    native.ResponseParser = HttptoolsResponseParser  # type: ignore[assignment,attr-defined]
    print("bench: the native client parses with httptools (llhttp)", file=sys.stderr)


def write_peer(directory: Path) -> None:
    """``directory`` for ``--peer-src``: the package (a link to this checkout's source), this
    module, and a ``sitecustomize`` that calls ``install`` at every interpreter's start."""
    directory.mkdir(parents=True, exist_ok=True)
    for link, target in (
        (directory / "postfix_rest_api_connector", PACKAGE),
        (directory / "httptools_parser.py", Path(__file__).resolve()),
    ):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    (directory / "sitecustomize.py").write_text(
        '"""Written by bench/httptools_parser.py."""\n\nimport httptools_parser\n\n'
        "httptools_parser.install()\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    write_peer(parser.parse_args().directory)


if __name__ == "__main__":
    main()
