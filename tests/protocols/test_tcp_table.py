"""tcp_table(5) codec: golden requests from real Postfix, quoting round-trips, limits, fuzzing."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeding import Decoded, replay, replay_sizes
from postfix_rest_api_connector.core.model import LookupRequest, Malformed
from postfix_rest_api_connector.protocols import DEFAULT_MAX_REQUEST
from postfix_rest_api_connector.protocols.errors import FramingError, RequestTooLarge
from postfix_rest_api_connector.protocols.tcp_table import (
    TcpTableDecoder,
    quote,
    unquote,
)

READ_SIZES = (1, 16, 128, 4096)

# (id, bytes Postfix sends, the key the connector must see), read off real Postfix.
GOLDEN = [
    ("space-and-percent", b"get a%20b%25c\n", b"a b%c"),
    ("utf8", b"get m%C3%BCller@ex%C3%A4mple.com\n", "müller@exämple.com".encode()),
    ("plus-stays-plus", b"get plus+ext@ex.com\n", b"plus+ext@ex.com"),
    ("case-kept", b"get User@Example.COM\n", b"User@Example.COM"),
    ("at-colon-comma-raw", b"get a@b:c,d\n", b"a@b:c,d"),
    ("control-bytes", b"get %09%0A%0D%00%7F%FF\n", b"\t\n\r\x00\x7f\xff"),
]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    ("wire", "key"), [(wire, key) for _, wire, key in GOLDEN], ids=[name for name, _, _ in GOLDEN]
)
def test_golden_request_decodes_to_raw_key(wire: bytes, key: bytes, read_size: int) -> None:
    assert replay(TcpTableDecoder(), wire, read_size) == [LookupRequest(key)]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_golden_requests_in_one_stream_decode_in_order(read_size: int) -> None:
    stream = b"".join(wire for _, wire, _ in GOLDEN) * 3
    expected = [LookupRequest(key) for _, _, key in GOLDEN] * 3

    assert replay(TcpTableDecoder(), stream, read_size) == expected


@pytest.mark.parametrize(
    ("key", "quoted"),
    [
        (b"a b%c", b"a%20b%25c"),
        ("müller@exämple.com".encode(), b"m%C3%BCller@ex%C3%A4mple.com"),
        (b"plus+ext@ex.com", b"plus+ext@ex.com"),
        (b"a@b:c,d!~", b"a@b:c,d!~"),
        (b"\t\n\r\x0b\x0c\x00\x7f\x80\xff", b"%09%0A%0D%0B%0C%00%7F%80%FF"),
    ],
    ids=["space-percent", "utf8-upper-hex", "plus", "punctuation-raw", "whitespace-control-high"],
)
def test_quote_matches_postfix(key: bytes, quoted: bytes) -> None:
    assert quote(key) == quoted
    assert unquote(quoted) == key


def test_unquote_accepts_lower_case_hex() -> None:
    assert unquote(b"m%c3%bcller") == "müller".encode()


@given(st.binary())
def test_unquote_inverts_quote(raw: bytes) -> None:
    assert unquote(quote(raw)) == raw


@given(st.binary())
def test_quote_output_is_printable_ascii_without_space(raw: bytes) -> None:
    quoted = quote(raw)

    assert all(0x21 <= byte <= 0x7E for byte in quoted)
    # Every % starts an upper-case escape, as Postfix writes them.
    assert re.fullmatch(rb"(?:[^%]|%[0-9A-F]{2})*", quoted)


@given(
    key=st.binary(min_size=1, max_size=300),
    count=st.integers(min_value=1, max_value=4),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_request_encoded_as_postfix_does_decodes_back(
    key: bytes, count: int, sizes: list[int]
) -> None:
    stream = (b"get " + quote(key) + b"\n") * count

    assert replay_sizes(TcpTableDecoder(), stream, sizes) == [LookupRequest(key)] * count


@pytest.mark.parametrize(
    "line",
    [b"get a%ZZ", b"get a%4", b"get a%", b"get %%41", b"get a%4Gb"],
    ids=["non-hex", "one-digit", "trailing-percent", "double-percent", "hex-then-non-hex"],
)
def test_bad_escape_is_malformed_and_the_stream_goes_on(line: bytes) -> None:
    decoder = TcpTableDecoder()

    decoded = decoder.feed(line + b"\nget next\n")

    assert len(decoded) == 2
    assert isinstance(decoded[0], Malformed)
    assert decoded[1] == LookupRequest(b"next")


@pytest.mark.parametrize(
    "line",
    [b"put key", b"GET key", b"get", b"getkey", b" get key", b"", b"get\tkey"],
    ids=["put", "upper-case", "bare-get", "no-space", "leading-space", "empty-line", "tab"],
)
def test_unknown_command_is_malformed_and_the_stream_goes_on(line: bytes) -> None:
    decoded = TcpTableDecoder().feed(line + b"\nget next\n")

    assert len(decoded) == 2
    assert isinstance(decoded[0], Malformed)
    assert decoded[1] == LookupRequest(b"next")


@pytest.mark.parametrize("line", [b"get ", b"get \r"], ids=["lf", "crlf"])
def test_empty_key_is_malformed(line: bytes) -> None:
    decoded = TcpTableDecoder().feed(line + b"\n")

    assert len(decoded) == 1
    assert isinstance(decoded[0], Malformed)


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_crlf_is_accepted_and_the_cr_stripped(read_size: int) -> None:
    stream = b"get a%20b\r\nget c%0D\r\nget d\n"

    assert replay(TcpTableDecoder(), stream, read_size) == [
        LookupRequest(b"a b"),
        LookupRequest(b"c\r"),
        LookupRequest(b"d"),
    ]


def test_partial_line_waits_for_its_newline() -> None:
    decoder = TcpTableDecoder()

    assert decoder.feed(b"get ab") == []
    assert decoder.feed(b"c") == []
    assert decoder.feed(b"\nget d") == [LookupRequest(b"abc")]
    assert decoder.feed(b"\n") == [LookupRequest(b"d")]


def test_line_at_the_limit_is_accepted() -> None:
    line = b"get " + b"k" * 59 + b"\n"
    assert len(line) == 64

    assert TcpTableDecoder(max_line=64).feed(line) == [LookupRequest(b"k" * 59)]


def test_line_over_the_limit_is_too_large() -> None:
    with pytest.raises(RequestTooLarge):
        TcpTableDecoder(max_line=64).feed(b"get " + b"k" * 60 + b"\n")


def test_line_over_the_limit_after_good_lines_is_too_large() -> None:
    decoder = TcpTableDecoder(max_line=64)
    assert decoder.feed(b"get a\n") == [LookupRequest(b"a")]

    with pytest.raises(RequestTooLarge):
        decoder.feed(b"get " + b"k" * 100 + b"\n")


def bytes_fed_until_too_large(decoder: TcpTableDecoder, read: bytes, give_up: int) -> int:
    """Feed ``read`` again and again; how many bytes went in when ``RequestTooLarge`` came."""
    fed = 0
    while fed < give_up:
        fed += len(read)
        try:
            decoder.feed(read)
        except RequestTooLarge:
            return fed
    pytest.fail(f"no RequestTooLarge after {fed} bytes without a newline")


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_long_line_without_newline_fails_before_buffering_past_the_limit(read_size: int) -> None:
    """Memory stays bounded: the error comes as soon as the pending line reaches the limit."""
    fed = bytes_fed_until_too_large(TcpTableDecoder(), b"k" * read_size, 10 * DEFAULT_MAX_REQUEST)

    assert DEFAULT_MAX_REQUEST <= fed < DEFAULT_MAX_REQUEST + read_size


ALPHABET = [b"get ", b"get", b"%", b"%4", b"%41", b"%zz", b"\n", b"\r", b" ", b"a", b"+", b"\xff"]

fuzz_streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(b"".join),
)


@given(
    stream=fuzz_streams,
    max_line=st.sampled_from([8, 32, DEFAULT_MAX_REQUEST]),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_fuzz_only_requests_or_framing_errors_and_independent_of_chunking(
    stream: bytes, max_line: int, sizes: list[int]
) -> None:
    def decode(feed_sizes: Sequence[int]) -> Decoded | type[FramingError]:
        try:
            decoded = replay_sizes(TcpTableDecoder(max_line=max_line), stream, feed_sizes)
        except FramingError as error:
            return type(error)
        assert isinstance(decoded, list)
        for item in decoded:
            assert isinstance(item, Malformed) or (
                isinstance(item, LookupRequest) and item.key and item.map_name is None
            )
        return decoded

    assert decode(sizes) == decode([max(len(stream), 1)])
