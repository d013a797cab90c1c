"""The three Postfix decoders as the harnesses see them: how to make one with a given limit, how
many bytes it holds back, and what a well-formed decoded item is.

The only module of ``fuzz/`` that imports the decoders (and reads their private buffers): when
the codecs move, this is the one place to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from postfix_rest_api_connector.core.model import LookupRequest, Malformed, PolicyRequest
from postfix_rest_api_connector.protocols.errors import FramingError
from postfix_rest_api_connector.protocols.policy import PolicyDecoder
from postfix_rest_api_connector.protocols.socketmap import SocketmapDecoder
from postfix_rest_api_connector.protocols.tcp_table import TcpTableDecoder

__all__ = ["TARGETS", "DecoderTarget", "FramingError"]


@dataclass(frozen=True)
class DecoderTarget:
    name: str
    limits: tuple[int, ...]
    """Byte limits to fuzz with: small ones reach the limit paths within a short input."""
    make: Callable[[int], Any]
    """A fresh decoder with this limit; ``Any``: the three share ``feed`` but no base class."""
    pending: Callable[[Any], int]
    """Bytes the decoder holds for a request not yet complete."""
    bound: Callable[[int], int]
    """The most ``pending`` may ever be with this limit."""
    check: Callable[[object, int], None]
    """Raises ``AssertionError`` unless the item is one the decoder may return."""


def _check_lookup(item: object, _: int) -> None:
    if not isinstance(item, Malformed):
        assert isinstance(item, LookupRequest), item
        assert item.key, item
        assert item.map_name is None, item


def _check_socketmap(item: object, _: int) -> None:
    if not isinstance(item, Malformed):
        assert isinstance(item, LookupRequest), item
        assert item.key, item
        assert item.map_name, item
        assert b" " not in item.map_name, item


POLICY_ATTRIBUTES = {16: 2, 64: 4, 65536: 256}
"""The attribute limit that goes with each byte limit."""


def _check_policy(item: object, limit: int) -> None:
    if not isinstance(item, Malformed):
        assert isinstance(item, PolicyRequest), item
        names = [name for name, _ in item.attributes]
        assert 0 < len(names) <= POLICY_ATTRIBUTES[limit], item
        assert len(set(names)) == len(names), item
        assert all(name and b"=" not in name and b"\n" not in name for name in names), item
        assert all(b"\n" not in value for _, value in item.attributes), item


def _policy_pending(decoder: PolicyDecoder) -> int:
    return len(decoder._buffer) + decoder._request_bytes


TARGETS = {
    target.name: target
    for target in (
        DecoderTarget(
            "tcp_table",
            limits=(8, 32, 65536),
            make=lambda limit: TcpTableDecoder(max_line=limit),
            pending=lambda decoder: len(decoder._buffer),
            bound=lambda limit: limit - 1,
            check=_check_lookup,
        ),
        DecoderTarget(
            "socketmap",
            limits=(0, 5, 19, 65536),
            make=lambda limit: SocketmapDecoder(max_request=limit),
            pending=lambda decoder: len(decoder._netstrings._buffer),
            # the length's digits, its colon and the payload; the comma completes it
            bound=lambda limit: len(str(limit)) + 1 + limit,
            check=_check_socketmap,
        ),
        DecoderTarget(
            "policy",
            limits=tuple(POLICY_ATTRIBUTES),
            make=lambda limit: PolicyDecoder(limit, POLICY_ATTRIBUTES[limit]),
            pending=_policy_pending,
            bound=lambda limit: limit,
            check=_check_policy,
        ),
    )
}
