"""Pure, incremental codecs for Postfix's three protocols: bytes in, requests out, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model import LookupRequest, Malformed, PolicyRequest
from .errors import FramingError, UnsendableReply

__all__ = ["Decoder", "FramingError", "UnsendableReply"]


class Decoder(Protocol):
    """Fed whatever one read returned; gives back every request it completes, in order.

    Raises ``FramingError`` when the stream can no longer be framed; the decoder is then spent.
    """

    def feed(self, data: bytes) -> Sequence[LookupRequest | PolicyRequest | Malformed]: ...

    @property
    def has_partial(self) -> bool:
        """Whether part of a request has arrived and the rest has not."""
        ...
