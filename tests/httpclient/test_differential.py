"""The native client's HTTP response parser against llhttp (``httptools``: the parser of Node.js
and uvicorn) and h11, fed the same byte streams in the same reads: the codec tests' vectors,
mutations of them, and generated responses.

Where a peer accepts a response and ours does too, ours must read the same status, the same
body (ours keeps only a 200's) and make the same framing decision: keep the connection for the
next request, or close it. Ours may always refuse. Where ours accepts what a peer refuses, or
decides otherwise, the case must match a ``KNOWN_DIFFERENCES`` entry: each says why ours is
right, and ``test_every_known_difference_is_still_needed`` keeps the list from outgrowing the
differences that exist. docs/reliability.md lists them too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h11
import httptools
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from test_codec import GOLDEN, MALFORMED, valid_responses

from postfix_rest_api_connector.httpclient.codec import (
    MAX_HEAD_BYTES,
    BodyTooLarge,
    HttpProtocolError,
    ResponseParser,
)

MAX_BODY = 1 << 20
"""Above every body here: a limit only ours has would be a refusal, never a difference."""
READ_SIZES = (4096, 7, 1)


@dataclass(frozen=True)
class Accepted:
    status: int
    body: bytes
    """The body of a 200; empty for any other status, whose body ours reads and drops."""
    keep_alive: bool
    """The connection may carry the next request: the response's framing was definite, it
    asked for no close, and no byte followed it."""


@dataclass(frozen=True)
class Refused:
    reason: str


Outcome = Accepted | Refused


def accepted(status: int, body: bytes, keep_alive: bool) -> Accepted:
    return Accepted(status, body if status == 200 else b"", keep_alive)


def ours(reads: Sequence[bytes]) -> Outcome:
    parser = ResponseParser(MAX_BODY)
    try:
        response = None
        for read in reads:
            response = parser.feed(read) or response
        if response is None:
            response = parser.feed_eof()
    except (HttpProtocolError, BodyTooLarge) as error:
        return Refused(str(error))
    return Accepted(response.status, response.body, parser.reusable)


def h11_outcome(reads: Sequence[bytes]) -> Outcome:
    """h11 as a client that sent one GET; the end of ``reads`` is the connection's close."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "api")]))
    connection.send(h11.EndOfMessage())
    status, body, complete = 0, bytearray(), False
    try:
        for data in [*reads, b""]:
            if complete and not data:
                break  # the response ended before the connection did
            connection.receive_data(data)
            while not complete:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                elif isinstance(event, h11.ConnectionClosed):
                    return Refused("closed before the response")
    except h11.ProtocolError as error:
        return Refused(str(error))
    if not complete:
        return Refused("incomplete")
    trailing, closed = connection.trailing_data
    keep_alive = connection.their_state is h11.DONE and not trailing and not closed
    return accepted(status, bytes(body), keep_alive)


class _Llhttp:
    """httptools' callbacks, kept until the first final (not 1xx) response is complete."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.fields: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: str | None = None

    def on_message_begin(self) -> None:
        if not self.complete:
            self.fields, self.body, self.head_done = [], bytearray(), False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if not self.complete:
            self.status, self.head_done = self.parser.get_status_code(), True

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.body += body

    def on_message_complete(self) -> None:
        if not self.complete and self.status >= 200:
            self.complete, self.keep_alive = True, self.parser.should_keep_alive()

    def feed(self, reads: Sequence[bytes]) -> _Llhttp:
        for data in reads:
            try:
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
                if not self.complete:  # after the response: bytes nobody asked for
                    self.error = f"{type(error).__name__}: {error}"
                return self
        return self

    def ends_with_the_close(self) -> bool:
        """RFC 9112 section 6.3: a response's body with neither a length nor chunked as its last
        coding ends when the connection does. httptools has no call for the close itself, and
        llhttp frames the rest by these same fields."""
        names = {name for name, _ in self.fields}
        codings = b",".join(value for name, value in self.fields if name == b"transfer-encoding")
        last_coding = codings.rsplit(b",", 1)[-1].strip(b" \t").lower()
        return (
            self.status not in (204, 304)
            and b"content-length" not in names
            and last_coding != b"chunked"
        )


def llhttp_outcome(reads: Sequence[bytes]) -> Outcome:
    llhttp = _Llhttp().feed(reads)
    if llhttp.error is not None:
        return Refused(llhttp.error)
    if not llhttp.complete:
        if llhttp.head_done and llhttp.ends_with_the_close():
            return accepted(llhttp.status, bytes(llhttp.body), keep_alive=False)
        return Refused("incomplete")
    wire = b"".join(reads)
    # llhttp reads on past the response; where it ended is the shortest prefix it completes
    low, high = 0, len(wire)
    while low < high:
        middle = (low + high) // 2
        if _Llhttp().feed([wire[:middle]]).complete:
            high = middle
        else:
            low = middle + 1
    return accepted(llhttp.status, bytes(llhttp.body), llhttp.keep_alive and high == len(wire))


PEERS: dict[str, Callable[[Sequence[bytes]], Outcome]] = {
    "llhttp": llhttp_outcome,
    "h11": h11_outcome,
}


# The known differences.


def final_head(wire: bytes) -> list[bytes]:
    """The lower-cased lines of the first head that is not an interim (1xx) one."""
    position = 0
    while True:
        end = wire.find(b"\r\n\r\n", position)
        lines = wire[position : end if end >= 0 else len(wire)].lower().split(b"\r\n")
        if lines[0][9:10] != b"1" or end < 0:
            return lines
        position = end + 4


def interim_field_values(wire: bytes, name: bytes) -> list[bytes]:
    """The values of ``name`` in the interim (1xx) heads before the final one."""
    values, position = [], 0
    while (end := wire.find(b"\r\n\r\n", position)) >= 0:
        lines = wire[position:end].lower().split(b"\r\n")
        if lines[0][9:10] != b"1":
            break
        values += [
            line.partition(b":")[2].strip(b" \t")
            for line in lines[1:]
            if line.partition(b":")[0] == name
        ]
        position = end + 4
    return values


def field_values(wire: bytes, name: bytes) -> list[bytes]:
    return [
        line.partition(b":")[2].strip(b" \t")
        for line in final_head(wire)[1:]
        if line.partition(b":")[0] == name
    ]


def framing_only(mine: Accepted, theirs: Outcome) -> bool:
    """The same response read, only the keep-alive decision differs."""
    return isinstance(theirs, Accepted) and (theirs.status, theirs.body) == (
        mine.status,
        mine.body,
    )


@dataclass(frozen=True)
class Difference:
    name: str
    peer: str
    reason: str
    applies: Callable[[bytes, Accepted, Outcome], bool]
    example: bytes
    """A response that shows it, for ``test_every_known_difference_is_still_needed``."""


def refused_for(theirs: Outcome, *words: str) -> bool:
    """The peer refused, naming one of ``words`` (case aside) in its reason."""
    return isinstance(theirs, Refused) and any(w in theirs.reason.lower() for w in words)


def identical_lengths(wire: bytes) -> bool:
    values = [
        part.strip()
        for value in field_values(wire, b"content-length")
        for part in value.split(b",")
    ]
    return len(values) > 1 and len(set(values)) == 1


_CHUNK_EXTENSION = re.compile(rb"\r\n[0-9a-fA-F]{1,16}[ \t]*;")


def length_past_the_limit(wire: bytes) -> bool:
    values = field_values(wire, b"content-length")
    return any(value.isdigit() and int(value) > MAX_BODY for value in values)


KNOWN_DIFFERENCES = (
    Difference(
        "h11-closes-every-http-1.0-connection",
        "h11",
        "h11 does not implement HTTP/1.0 keep-alive; RFC 9112 section 9.3 lets a client keep an"
        " HTTP/1.0 connection whose response says 'Connection: keep-alive', as llhttp does.",
        lambda wire, mine, theirs: (
            final_head(wire)[0].startswith(b"http/1.0")
            and mine.keep_alive
            and framing_only(mine, theirs)
        ),
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n[]",
    ),
    Difference(
        "length-beside-a-transfer-coding-closes",
        "both",
        "RFC 9112 section 6.3 item 3: Content-Length beside Transfer-Encoding may be response"
        " splitting and ought to be handled as an error. Ours reads the body by the coding and"
        " closes the connection after it; llhttp refuses the response; h11 reads it and keeps"
        " the connection, which is the one thing a client must not do.",
        lambda wire, mine, theirs: (
            bool(field_values(wire, b"content-length"))
            and bool(field_values(wire, b"transfer-encoding"))
            and not mine.keep_alive
            and (framing_only(mine, theirs) or refused_for(theirs, "content-length"))
        ),
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n[]\r\n0\r\n\r\n",
    ),
    Difference(
        "http-1.0-transfer-coding-closes",
        "llhttp",
        "RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding must be treated as"
        " faulty framing and the connection closed after it; llhttp keeps it when the response"
        " says 'Connection: keep-alive'. (h11 closes every HTTP/1.0 connection.)",
        lambda wire, mine, theirs: (
            final_head(wire)[0].startswith(b"http/1.0")
            and bool(field_values(wire, b"transfer-encoding"))
            and not mine.keep_alive
            and framing_only(mine, theirs)
        ),
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n[]\r\n0\r\n\r\n",
    ),
    Difference(
        "identical-content-lengths",
        "llhttp",
        "RFC 9110 section 8.6: a recipient may take a Content-Length of identical values (in one"
        " list or several fields) as that one value, as h11 does; llhttp refuses it.",
        lambda wire, mine, theirs: (
            identical_lengths(wire) and refused_for(theirs, "content-length")
        ),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n[]",
    ),
    Difference(
        "interim-responses-are-skipped-whole",
        "llhttp",
        "RFC 9110 section 15.2: a client reads past interim (1xx) responses to the final one;"
        " theirs have no content, so ours skips them, fields and all, while llhttp checks an"
        " interim head's Content-Length fields as if they framed a body.",
        lambda wire, mine, theirs: (
            len(interim_field_values(wire, b"content-length")) > 1
            and refused_for(theirs, "content-length")
        ),
        b"HTTP/1.1 102 Processing\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    ),
    Difference(
        "chunk-extensions-are-ignored",
        "both",
        "RFC 9112 section 7.1.1: a recipient must ignore chunk extensions it does not know; ours"
        " reads one to the line's CRLF, refusing control characters, and accepts the blanks"
        " (BWS) the RFC 9112 grammar allows before its ';'. Neither peer accepts those blanks"
        " (RFC 7230 had none), and llhttp also checks the extension's name and value grammar.",
        lambda wire, mine, theirs: (
            _CHUNK_EXTENSION.search(wire) is not None and refused_for(theirs, "chunk")
        ),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 ;a=b\r\n[]\r\n0\r\n\r\n",
    ),
    Difference(
        "no-body-statuses-ignore-framing-fields",
        "both",
        "RFC 9112 section 6.3 item 1: a 204 or 304 response ends at its head whatever its fields"
        " say, so ours reads no body and does not look at them; h11 refuses framing fields it"
        " would refuse on a body (a coding other than chunked, two Transfer-Encoding fields,"
        " unequal lengths), llhttp refuses unequal lengths.",
        lambda wire, mine, theirs: (
            mine.status in (204, 304) and refused_for(theirs, "content-length", "transfer-encoding")
        ),
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\nContent-Length: 12\r\n\r\n",
    ),
    Difference(
        "connection-close-wins-over-keep-alive",
        "llhttp",
        "RFC 9112 section 9.6: a response with the 'close' connection option ends the connection,"
        " whatever else the Connection fields say; llhttp keeps an HTTP/1.0 connection whose"
        " response names both 'close' and 'keep-alive'. h11 closes it, as ours does.",
        lambda wire, mine, theirs: (
            any(
                token.strip(b" \t") == b"close"
                for value in field_values(wire, b"connection")
                for token in value.split(b",")
            )
            and not mine.keep_alive
            and framing_only(mine, theirs)
        ),
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n"
        b"Connection: keep-alive\r\n\r\n",
    ),
    Difference(
        "dropped-body-past-the-limit-answered-from-the-head",
        "both",
        "Ours keeps only a 200's body; another status whose Content-Length exceeds the body"
        " limit is answered from its head and its connection closed, rather than read to its"
        " end. The peers, which have no such limit, wait for the body.",
        lambda wire, mine, theirs: (
            mine.status != 200
            and not mine.keep_alive
            and length_past_the_limit(wire)
            and (framing_only(mine, theirs) or refused_for(theirs, "incomplete", "closed"))
        ),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 999999999999\r\n\r\n",
    ),
)


def known(peer: str, wire: bytes, mine: Accepted, theirs: Outcome) -> list[str]:
    return [
        difference.name
        for difference in KNOWN_DIFFERENCES
        if difference.peer in (peer, "both") and difference.applies(wire, mine, theirs)
    ]


def check(wire: bytes, reads: Sequence[bytes]) -> list[str]:
    """Ours refuses, or agrees with each peer, or differs in a known way; what happened, for
    Hypothesis' statistics."""
    mine = ours(reads)
    if isinstance(mine, Refused):
        return ["ours refuses"]
    verdicts = []
    for peer, outcome in PEERS.items():
        theirs = outcome(reads)
        if theirs == mine:
            verdicts.append(f"{peer} agrees")
            continue
        names = known(peer, wire, mine, theirs)
        assert names, f"ours: {mine}\n{peer}: {theirs}\nwire: {wire!r}"
        verdicts += [f"{peer} differs: {name}" for name in names]
    return verdicts


def cut(wire: bytes, cuts: list[int]) -> list[bytes]:
    bounds = zip([0, *sorted(cuts)], [*sorted(cuts), len(wire)], strict=True)
    return [wire[start:end] for start, end in bounds if end > start]


# The vectors, each at several read sizes.

VECTORS = [(golden.name, golden.wire) for golden in GOLDEN] + MALFORMED


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize("wire", [wire for _, wire in VECTORS], ids=[name for name, _ in VECTORS])
def test_codec_vectors(wire: bytes, read_size: int) -> None:
    check(wire, [wire[at : at + read_size] for at in range(0, len(wire), read_size)])


@pytest.mark.parametrize(
    "difference", KNOWN_DIFFERENCES, ids=[difference.name for difference in KNOWN_DIFFERENCES]
)
def test_every_known_difference_is_still_needed(difference: Difference) -> None:
    mine = ours([difference.example])
    assert isinstance(mine, Accepted)
    peers = [difference.peer] if difference.peer != "both" else list(PEERS)
    for peer in peers:
        theirs = PEERS[peer]([difference.example])
        assert theirs != mine
        assert difference.name in known(peer, difference.example, mine, theirs)


# Mutations and generated responses, split at random points.

TOKENS = [
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xff",
    b"0",
    b"1",
    b"f",
    b"chunked",
    b"close",
    b"keep-alive",
    b"Content-Length: 2\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"0\r\n\r\n",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A vector with a few bytes inserted, deleted or replaced, or a line repeated."""
    wire = bytearray(draw(st.sampled_from([wire for _, wire in VECTORS])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        end = min(len(wire), at + draw(st.integers(1, 8)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "repeat-line", "case"]))
        if kind == "insert":
            wire[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del wire[at:end]
        elif kind == "replace":
            wire[at:end] = draw(st.binary(min_size=end - at, max_size=end - at))
        elif kind == "case":
            wire[at:end] = bytes(wire[at:end]).swapcase()
        else:
            start = wire.rfind(b"\r\n", 0, at)
            start = start + 2 if start >= 0 else 0
            stop = wire.find(b"\r\n", at)
            if stop >= start:
                wire[stop + 2 : stop + 2] = wire[start : stop + 2]
    return bytes(wire)


FIELDS = [
    b"Content-Length: %d",
    b"content-length:%d ",
    b"Content-Length: %d, %d",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"transfer-encoding: Chunked ",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding: identity",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: Keep-Alive, Upgrade",
    b"Connection: upgrade",
    b"Upgrade: h2c",
    b"Content-Type: application/json",
    b"Content-Encoding: gzip",
    b"Content-Encoding: identity",
    b"Cache-Control: max-age=60",
    b"X-Empty:",
    b"X-Tab:\tv\t",
    b"X-Obs-Text: caf\xe9",
    b"X-Control: a\x01b",
    b"X-Del: a\x7fb",
    b"Trailer: X-T",
]


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """A response assembled from parts that need not agree: any version and status, fields
    drawn from framing and connection fields (conflicting ones included), and a body sent as
    a length, chunked, or until the close, whatever the fields say."""
    interim = draw(st.lists(st.sampled_from([b"100 Continue", b"103 Early Hints"]), max_size=2))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 200, 200, 204, 304, 404, 500]))
    body = draw(st.binary(max_size=40))
    fields = [
        field % ((len(body),) * field.count(b"%d"))
        for field in draw(st.lists(st.sampled_from(FIELDS), max_size=5))
    ]
    encoding = draw(st.sampled_from(["raw", "chunked"]))
    if encoding == "chunked":
        size_line = draw(st.sampled_from([b"%x", b"%X", b"%x;ext=1", b"%x ;ext", b"%x ", b" %x"]))
        payload = (b"%s\r\n%s\r\n" % (size_line % len(body), body) if body else b"") + b"0\r\n"
        payload += draw(st.sampled_from([b"", b"X-T: 1\r\n", b"bad trailer\r\n"])) + b"\r\n"
    else:
        payload = body
    wire = b"".join(b"HTTP/1.1 %s\r\n\r\n" % line for line in interim)
    wire += b"HTTP/%s %d Reason\r\n" % (version, status)
    wire += b"".join(field + b"\r\n" for field in fields) + b"\r\n" + payload
    return wire + draw(st.sampled_from([b"", b"", b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n"]))


streams = st.one_of(mutated(), generated(), valid_responses().map(lambda built: built.wire))


@given(wire=streams, cuts=st.lists(st.integers(0, 1 << 16), max_size=8))
def test_random_streams_at_random_splits(wire: bytes, cuts: list[int]) -> None:
    for verdict in check(wire, cut(wire, [at % (len(wire) + 1) for at in cuts])):
        event(verdict)
