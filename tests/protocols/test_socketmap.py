"""socketmap_table(5) codec: golden netstrings from real Postfix, round-trips, limits, fuzzing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeding import Decoded, replay, split_reads
from postfix_rest_api_connector.core.model import LookupRequest, Malformed
from postfix_rest_api_connector.protocols import DEFAULT_MAX_REQUEST
from postfix_rest_api_connector.protocols.errors import BadNetstring, FramingError, RequestTooLarge
from postfix_rest_api_connector.protocols.socketmap import (
    NetstringDecoder,
    SocketmapDecoder,
    encode_netstring,
)

READ_SIZES = (1, 16, 128, 4096)

# (id, bytes Postfix sends, the request the connector must see); the first three read off real
# Postfix, the last built the same way.
GOLDEN = [
    ("simple", b"11:aliases one,", LookupRequest(b"one", map_name=b"aliases")),
    (
        "key-raw-with-space-percent-comma-colon",
        b"17:aliases a b%c,d:e,",
        LookupRequest(b"a b%c,d:e", map_name=b"aliases"),
    ),
    (
        "utf8-and-case",
        b"30:MixedName m\xc3\xbcller@ex\xc3\xa4mple.com,",
        LookupRequest(b"m\xc3\xbcller@ex\xc3\xa4mple.com", map_name=b"MixedName"),
    ),
    ("plus-kept", b"23:virtual plus+ext@ex.com,", LookupRequest(b"plus+ext@ex.com", b"virtual")),
]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    ("wire", "request_"),
    [(wire, request) for _, wire, request in GOLDEN],
    ids=[name for name, _, _ in GOLDEN],
)
def test_golden_request_decodes_raw(wire: bytes, request_: LookupRequest, read_size: int) -> None:
    assert replay(SocketmapDecoder(), wire, read_size) == [request_]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_golden_requests_in_one_stream_decode_in_order(read_size: int) -> None:
    stream = b"".join(wire for _, wire, _ in GOLDEN) * 3
    expected = [request for _, _, request in GOLDEN] * 3

    assert replay(SocketmapDecoder(), stream, read_size) == expected


@pytest.mark.parametrize(
    ("payload", "wire"),
    [(b"", b"0:,"), (b"OK a b  c", b"9:OK a b  c,"), (b"x" * 12, b"12:" + b"x" * 12 + b",")],
    ids=["empty", "spaces-raw", "two-digit-length"],
)
def test_encode_netstring(payload: bytes, wire: bytes) -> None:
    assert encode_netstring(payload) == wire


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=5),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_netstring_round_trip_at_random_chunkings(payloads: list[bytes], sizes: list[int]) -> None:
    decoder = NetstringDecoder(max_payload=300)
    stream = b"".join(encode_netstring(payload) for payload in payloads)

    decoded = [payload for read in split_reads(stream, sizes) for payload in decoder.feed(read)]

    assert decoded == payloads


@given(
    requests=st.lists(
        st.builds(
            LookupRequest,
            key=st.binary(min_size=1, max_size=200),
            map_name=st.binary(min_size=1, max_size=20).filter(lambda name: b" " not in name),
        ),
        max_size=4,
    ),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_request_encoded_as_postfix_does_decodes_back(
    requests: list[LookupRequest], sizes: list[int]
) -> None:
    decoder = SocketmapDecoder()
    stream = b"".join(
        encode_netstring((request.map_name or b"") + b" " + request.key) for request in requests
    )

    decoded = [item for read in split_reads(stream, sizes) for item in decoder.feed(read)]

    assert decoded == requests


@pytest.mark.parametrize(
    "payload",
    [b"aliases", b" one", b"aliases ", b""],
    ids=["no-space", "empty-name", "empty-key", "empty-payload"],
)
def test_bad_payload_is_malformed_and_the_stream_goes_on(payload: bytes) -> None:
    decoded = SocketmapDecoder().feed(encode_netstring(payload) + b"11:aliases one,")

    assert len(decoded) == 2
    assert isinstance(decoded[0], Malformed)
    assert decoded[1] == LookupRequest(b"one", map_name=b"aliases")


def test_key_keeps_every_space_after_the_first() -> None:
    assert SocketmapDecoder().feed(b"8:m  a b  ,") == [LookupRequest(b" a b  ", map_name=b"m")]


def test_incomplete_netstring_waits() -> None:
    decoder = SocketmapDecoder()

    assert decoder.feed(b"11") == []
    assert decoder.feed(b":aliases") == []
    assert decoder.feed(b" one") == []
    assert decoder.feed(b",11:aliases two") == [LookupRequest(b"one", b"aliases")]
    assert decoder.feed(b",") == [LookupRequest(b"two", b"aliases")]


@pytest.mark.parametrize(
    "stream",
    [b"x:abc,", b"1a:a,", b"-1:a,", b"+1:a,", b" 1:a,", b":a,", b"\xd9\xa1:a,"],
    ids=["letter", "digit-letter", "minus", "plus", "leading-space", "no-digits", "arabic-digit"],
)
def test_non_digit_length_is_bad_netstring(stream: bytes) -> None:
    with pytest.raises(BadNetstring):
        SocketmapDecoder().feed(stream)


@pytest.mark.parametrize(
    "prefix", [b"x", b"1a", b"-", b" "], ids=["letter", "digit-letter", "minus", "space"]
)
def test_non_digit_length_fails_before_the_colon_arrives(prefix: bytes) -> None:
    with pytest.raises(BadNetstring):
        SocketmapDecoder().feed(prefix)


def test_missing_comma_is_bad_netstring() -> None:
    with pytest.raises(BadNetstring):
        SocketmapDecoder().feed(b"11:aliases one;")


def test_missing_comma_fails_as_soon_as_the_byte_after_the_payload_arrives() -> None:
    decoder = SocketmapDecoder()
    assert decoder.feed(b"11:aliases one") == []

    with pytest.raises(BadNetstring):
        decoder.feed(b"1")


def test_length_at_the_limit_is_accepted() -> None:
    payload = b"m " + b"k" * 98

    assert SocketmapDecoder(max_request=100).feed(encode_netstring(payload)) == [
        LookupRequest(b"k" * 98, map_name=b"m")
    ]


def test_length_over_the_limit_fails_before_the_payload_arrives() -> None:
    with pytest.raises(RequestTooLarge):
        SocketmapDecoder(max_request=100).feed(b"101:")


def test_length_over_the_default_limit_fails_before_the_payload_arrives() -> None:
    with pytest.raises(RequestTooLarge):
        SocketmapDecoder().feed(b"%d:" % (DEFAULT_MAX_REQUEST + 1))


@pytest.mark.parametrize("max_request", [100, DEFAULT_MAX_REQUEST], ids=["small", "default"])
def test_long_digit_run_without_colon_fails_early(max_request: int) -> None:
    """A length that could never be within the limit is refused a byte after the longest one."""
    decoder = SocketmapDecoder(max_request=max_request)
    longest = len(str(max_request))
    for _ in range(longest):
        assert decoder.feed(b"1") == []

    with pytest.raises(BadNetstring):
        decoder.feed(b"1")


def test_absurdly_long_digit_run_in_one_read_is_bad_netstring() -> None:
    with pytest.raises(BadNetstring):
        SocketmapDecoder().feed(b"9" * 10_000)


ALPHABET = [b"0", b"1", b"3", b"9", b"11", b":", b",", b" ", b"a", b"aliases one", b"\xff"]

fuzz_streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(b"".join),
    st.lists(st.binary(max_size=20).map(encode_netstring), max_size=6).map(b"".join),
)


@given(
    stream=fuzz_streams,
    max_request=st.sampled_from([0, 5, 19, DEFAULT_MAX_REQUEST]),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_fuzz_only_requests_or_framing_errors_and_independent_of_chunking(
    stream: bytes, max_request: int, sizes: list[int]
) -> None:
    def decode(feed_sizes: Sequence[int]) -> Decoded | type[FramingError]:
        decoder = SocketmapDecoder(max_request=max_request)
        decoded: Decoded = []
        try:
            for read in split_reads(stream, feed_sizes):
                result = decoder.feed(read)
                assert isinstance(result, list)
                decoded.extend(result)
        except FramingError as error:
            return type(error)
        for item in decoded:
            assert isinstance(item, Malformed) or (
                isinstance(item, LookupRequest) and item.key and item.map_name
            )
        return decoded

    assert decode(sizes) == decode([max(len(stream), 1)])
