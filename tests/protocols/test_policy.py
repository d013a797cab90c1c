"""Policy-delegation codec: smtpd's 29-attribute request, round-trips, limits, fuzzing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feeding import Decoded, replay, split_reads
from postfix_rest_api_connector.core.model import Malformed, PolicyRequest
from postfix_rest_api_connector.protocols import DEFAULT_MAX_REQUEST
from postfix_rest_api_connector.protocols.errors import FramingError, RequestTooLarge
from postfix_rest_api_connector.protocols.policy import PolicyDecoder

Attributes = tuple[tuple[bytes, bytes], ...]

READ_SIZES = (1, 16, 128, 4096)

# What smtpd sends at RCPT TO, in its fixed order, empty values included; the values an attacker
# controls (HELO name, sender, recipient) carry &, =, %, + and UTF-8.
SMTPD_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=192.0.2.1\n"
    b"client_name=unknown\n"
    b"client_port=40000\n"
    b"reverse_client_name=unknown\n"
    b"server_address=127.0.0.1\n"
    b"server_port=25\n"
    b"helo_name=evil&sender=x%40y+z=1.example\n"
    b"sender=m\xc3\xbcller+tag@ex\xc3\xa4mple.com\n"
    b"recipient=user&admin=1@example.com\n"
    b"recipient_count=0\n"
    b"queue_id=\n"
    b"instance=1a2b.65f1c0de.1f2e3.0\n"
    b"size=12345\n"
    b"etrn_domain=\n"
    b"stress=\n"
    b"sasl_method=\n"
    b"sasl_username=\n"
    b"sasl_sender=\n"
    b"ccert_subject=\n"
    b"ccert_issuer=\n"
    b"ccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\n"
    b"encryption_protocol=TLSv1.3\n"
    b"encryption_cipher=TLS_AES_256_GCM_SHA384\n"
    b"encryption_keysize=256\n"
    b"policy_context=a=b&c%20d\n"
    b"\n"
)
SMTPD_ATTRIBUTES: Attributes = (
    (b"request", b"smtpd_access_policy"),
    (b"protocol_state", b"RCPT"),
    (b"protocol_name", b"ESMTP"),
    (b"client_address", b"192.0.2.1"),
    (b"client_name", b"unknown"),
    (b"client_port", b"40000"),
    (b"reverse_client_name", b"unknown"),
    (b"server_address", b"127.0.0.1"),
    (b"server_port", b"25"),
    (b"helo_name", b"evil&sender=x%40y+z=1.example"),
    (b"sender", "müller+tag@exämple.com".encode()),
    (b"recipient", b"user&admin=1@example.com"),
    (b"recipient_count", b"0"),
    (b"queue_id", b""),
    (b"instance", b"1a2b.65f1c0de.1f2e3.0"),
    (b"size", b"12345"),
    (b"etrn_domain", b""),
    (b"stress", b""),
    (b"sasl_method", b""),
    (b"sasl_username", b""),
    (b"sasl_sender", b""),
    (b"ccert_subject", b""),
    (b"ccert_issuer", b""),
    (b"ccert_fingerprint", b""),
    (b"ccert_pubkey_fingerprint", b""),
    (b"encryption_protocol", b"TLSv1.3"),
    (b"encryption_cipher", b"TLS_AES_256_GCM_SHA384"),
    (b"encryption_keysize", b"256"),
    (b"policy_context", b"a=b&c%20d"),
)
SMTPD_ORDER = (
    b"request protocol_state protocol_name client_address client_name client_port"
    b" reverse_client_name server_address server_port helo_name sender recipient recipient_count"
    b" queue_id instance size etrn_domain stress sasl_method sasl_username sasl_sender"
    b" ccert_subject ccert_issuer ccert_fingerprint ccert_pubkey_fingerprint encryption_protocol"
    b" encryption_cipher encryption_keysize policy_context"
).split()

# The same client's next recipient on the same connection: only a few values change.
NEXT_RECIPIENT = SMTPD_REQUEST.replace(
    b"recipient=user&admin=1@example.com\n", b"recipient=second@example.com\n"
).replace(b"recipient_count=0\n", b"recipient_count=1\n")
NEXT_ATTRIBUTES = tuple(
    (name, {b"recipient": b"second@example.com", b"recipient_count": b"1"}.get(name, value))
    for name, value in SMTPD_ATTRIBUTES
)

GOLDEN = [
    ("smtpd-rcpt", SMTPD_REQUEST, SMTPD_ATTRIBUTES),
    ("smtpd-next-rcpt", NEXT_RECIPIENT, NEXT_ATTRIBUTES),
    ("one-attribute", b"request=smtpd_access_policy\n\n", ((b"request", b"smtpd_access_policy"),)),
]


def serialize(attributes: Attributes) -> bytes:
    """As smtpd writes a request: ``name=value\\n`` per attribute, then an empty line."""
    return b"".join(name + b"=" + value + b"\n" for name, value in attributes) + b"\n"


def test_golden_request_has_smtpds_29_attributes_in_order() -> None:
    """Guards the vector itself against the protocol notes."""
    assert len(SMTPD_ORDER) == 29
    assert [name for name, _ in SMTPD_ATTRIBUTES] == SMTPD_ORDER
    assert serialize(SMTPD_ATTRIBUTES) == SMTPD_REQUEST


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    ("wire", "attributes"),
    [(wire, attributes) for _, wire, attributes in GOLDEN],
    ids=[name for name, _, _ in GOLDEN],
)
def test_golden_request_decodes_raw_in_order(
    wire: bytes, attributes: Attributes, read_size: int
) -> None:
    assert replay(PolicyDecoder(), wire, read_size) == [PolicyRequest(attributes)]


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_many_requests_on_one_connection_decode_in_order(read_size: int) -> None:
    stream = b"".join(wire for _, wire, _ in GOLDEN) * 3
    expected = [PolicyRequest(attributes) for _, _, attributes in GOLDEN] * 3

    assert replay(PolicyDecoder(), stream, read_size) == expected


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
def test_crlf_is_accepted_and_the_cr_stripped(read_size: int) -> None:
    stream = b"request=smtpd_access_policy\r\nhelo_name=a\rb\r\n\r\nsize=1\n\n"

    assert replay(PolicyDecoder(), stream, read_size) == [
        PolicyRequest(((b"request", b"smtpd_access_policy"), (b"helo_name", b"a\rb"))),
        PolicyRequest(((b"size", b"1"),)),
    ]


def test_partial_request_waits_for_its_empty_line() -> None:
    decoder = PolicyDecoder()

    assert decoder.feed(b"request=smtpd_access_policy\nsen") == []
    assert decoder.feed(b"der=a@b\n") == []
    assert decoder.feed(b"\nsize=") == [
        PolicyRequest(((b"request", b"smtpd_access_policy"), (b"sender", b"a@b")))
    ]
    assert decoder.feed(b"1\n\n") == [PolicyRequest(((b"size", b"1"),))]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=24).map(
    str.encode
)
# Any bytes but a newline; a trailing CR would be taken for a CRLF line end, so smtpd's values
# are assumed not to end with one.
values = st.binary(max_size=80).map(lambda value: value.replace(b"\n", b"").rstrip(b"\r"))
attribute_lists = st.lists(
    st.tuples(names, values), min_size=1, max_size=40, unique_by=lambda attribute: attribute[0]
).map(tuple)


@given(
    requests=st.lists(attribute_lists, min_size=1, max_size=3),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_request_serialized_as_smtpd_does_decodes_back(
    requests: list[Attributes], sizes: list[int]
) -> None:
    decoder = PolicyDecoder()
    stream = b"".join(serialize(attributes) for attributes in requests)

    decoded = [item for read in split_reads(stream, sizes) for item in decoder.feed(read)]

    assert decoded == [PolicyRequest(attributes) for attributes in requests]


@pytest.mark.parametrize(
    "bad_request",
    [
        b"request=smtpd_access_policy\nno equals sign\nsize=1\n\n",
        b"request=smtpd_access_policy\n=value\n\n",
        b"request=smtpd_access_policy\nsender=a\nsender=b\n\n",
        b"\n",
        b"\r\n",
    ],
    ids=["line-without-equals", "empty-name", "duplicate", "empty-request", "empty-request-crlf"],
)
def test_bad_request_is_malformed_and_the_next_one_decodes(bad_request: bytes) -> None:
    decoded = PolicyDecoder().feed(bad_request + b"request=smtpd_access_policy\nsize=2\n\n")

    assert len(decoded) == 2
    assert isinstance(decoded[0], Malformed)
    assert decoded[1] == PolicyRequest(((b"request", b"smtpd_access_policy"), (b"size", b"2")))


def test_attributes_up_to_the_limit_are_accepted() -> None:
    decoded = PolicyDecoder(max_attributes=3).feed(b"a=1\nb=2\nc=3\n\n")

    assert decoded == [PolicyRequest(((b"a", b"1"), (b"b", b"2"), (b"c", b"3")))]


def test_more_attributes_than_the_limit_is_malformed_and_the_next_one_decodes() -> None:
    decoded = PolicyDecoder(max_attributes=3).feed(b"a=1\nb=2\nc=3\nd=4\n\na=5\n\n")

    assert len(decoded) == 2
    assert isinstance(decoded[0], Malformed)
    assert decoded[1] == PolicyRequest(((b"a", b"5"),))


def test_attribute_limit_counts_per_request() -> None:
    decoded = PolicyDecoder(max_attributes=2).feed(b"a=1\nb=2\n\na=3\nb=4\n\n")

    assert decoded == [
        PolicyRequest(((b"a", b"1"), (b"b", b"2"))),
        PolicyRequest(((b"a", b"3"), (b"b", b"4"))),
    ]


def test_request_at_the_byte_limit_is_accepted() -> None:
    request = b"a=" + b"v" * 60 + b"\n\n"
    assert len(request) == 64

    assert PolicyDecoder(max_request=64).feed(request) == [PolicyRequest(((b"a", b"v" * 60),))]


def test_request_over_the_byte_limit_is_too_large() -> None:
    with pytest.raises(RequestTooLarge):
        PolicyDecoder(max_request=64).feed(b"a=" + b"v" * 61 + b"\n\n")


def test_request_over_the_byte_limit_in_many_short_lines_is_too_large() -> None:
    with pytest.raises(RequestTooLarge):
        PolicyDecoder(max_request=64).feed(b"".join(b"a%02d=1\n" % n for n in range(20)) + b"\n")


def test_byte_limit_counts_per_request() -> None:
    request = b"a=" + b"v" * 60 + b"\n\n"

    assert (
        PolicyDecoder(max_request=64).feed(request * 5) == [PolicyRequest(((b"a", b"v" * 60),))] * 5
    )


def bytes_fed_until_too_large(decoder: PolicyDecoder, stream: bytes, read_size: int) -> int:
    """Feed ``stream`` in reads of ``read_size``; how many bytes went in at ``RequestTooLarge``."""
    for offset in range(0, len(stream), read_size):
        try:
            decoder.feed(stream[offset : offset + read_size])
        except RequestTooLarge:
            return min(offset + read_size, len(stream))
    pytest.fail(f"no RequestTooLarge after {len(stream)} bytes")


@pytest.mark.parametrize("read_size", READ_SIZES, ids=lambda size: f"read{size}")
@pytest.mark.parametrize(
    "line", [b"x", b"a=1\n"], ids=["one-endless-line", "endless-attribute-lines"]
)
def test_endless_request_fails_before_buffering_past_the_limit(line: bytes, read_size: int) -> None:
    """Memory stays bounded: the error comes as soon as the request passes the limit."""
    endless = line * (2 * DEFAULT_MAX_REQUEST // len(line))

    fed = bytes_fed_until_too_large(PolicyDecoder(), endless, read_size)

    assert DEFAULT_MAX_REQUEST < fed <= DEFAULT_MAX_REQUEST + read_size


ALPHABET = [b"a=1\n", b"a", b"=", b"\n", b"\r", b"\r\n", b"b=", b"x" * 10, b"&", b"\xff"]

fuzz_streams = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(ALPHABET), max_size=80).map(b"".join),
)


@given(
    stream=fuzz_streams,
    limits=st.sampled_from([(16, 2), (64, 4), (DEFAULT_MAX_REQUEST, 256)]),
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8),
)
def test_fuzz_only_requests_or_framing_errors_and_independent_of_chunking(
    stream: bytes, limits: tuple[int, int], sizes: list[int]
) -> None:
    max_request, max_attributes = limits

    def decode(feed_sizes: Sequence[int]) -> Decoded | type[FramingError]:
        decoder = PolicyDecoder(max_request=max_request, max_attributes=max_attributes)
        decoded: Decoded = []
        try:
            for read in split_reads(stream, feed_sizes):
                result = decoder.feed(read)
                assert isinstance(result, list)
                decoded.extend(result)
        except FramingError as error:
            return type(error)
        for item in decoded:
            if isinstance(item, PolicyRequest):
                request_names = [name for name, _ in item.attributes]
                assert 0 < len(request_names) <= max_attributes
                assert len(set(request_names)) == len(request_names)
                assert all(name and b"=" not in name for name in request_names)
                assert all(b"\n" not in value for _, value in item.attributes)
            else:
                assert isinstance(item, Malformed)
        return decoded

    assert decode(sizes) == decode([max(len(stream), 1)])
