"""Requests completed in the same read as a framing error are still handed out, before it."""

from __future__ import annotations

import pytest

from postfix_rest_api_connector.core.model import LookupRequest, PolicyRequest
from postfix_rest_api_connector.protocols import Decoder, FramingError
from postfix_rest_api_connector.protocols.policy import PolicyDecoder
from postfix_rest_api_connector.protocols.socketmap import SocketmapDecoder
from postfix_rest_api_connector.protocols.tcp_table import TcpTableDecoder


@pytest.mark.parametrize(
    ("decoder", "data", "completed"),
    [
        (
            TcpTableDecoder(64),
            b"get a\nget b\n" + b"x" * 100,
            (LookupRequest(b"a"), LookupRequest(b"b")),
        ),
        (SocketmapDecoder(64), b"5:map a,x:", (LookupRequest(b"a", map_name=b"map"),)),
        (
            PolicyDecoder(64),
            b"a=1\n\n" + b"b" * 100,
            (PolicyRequest(((b"a", b"1"),)),),
        ),
    ],
    ids=["tcp", "socketmap", "policy"],
)
def test_framing_error_carries_the_requests_completed_before_it(
    decoder: Decoder, data: bytes, completed: tuple[object, ...]
) -> None:
    with pytest.raises(FramingError) as raised:
        decoder.feed(data)
    assert raised.value.completed == completed
