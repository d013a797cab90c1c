"""Feeding a decoder the way a socket does: in reads of given sizes, whatever the framing."""

from __future__ import annotations

from collections.abc import Sequence

from postfix_rest_api_connector.core.model import Request
from postfix_rest_api_connector.protocols import Decoder

Decoded = list[Request]


def split_reads(stream: bytes, sizes: Sequence[int]) -> list[bytes]:
    """``stream`` cut into reads whose sizes cycle through ``sizes``."""
    reads = []
    offset = 0
    turn = 0
    while offset < len(stream):
        size = sizes[turn % len(sizes)]
        reads.append(stream[offset : offset + size])
        offset += size
        turn += 1
    return reads


def replay_sizes(decoder: Decoder, stream: bytes, sizes: Sequence[int]) -> Decoded:
    """Everything decoded from ``stream`` fed in reads of the given sizes, in order."""
    return [request for read in split_reads(stream, sizes) for request in decoder.feed(read)]


def replay(decoder: Decoder, stream: bytes, read_size: int) -> Decoded:
    """Everything decoded from ``stream`` fed in reads of ``read_size`` bytes, in order."""
    return replay_sizes(decoder, stream, (read_size,))
