"""Pure, incremental codecs for Postfix's protocols: bytes in, requests out, no I/O.

One module per mode, each with its decoder, its reply encoder and its reply table (the one place
where an outcome becomes that protocol's bytes); ``modes`` is the table of modes that names them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core.model import Outcome, Request
from .errors import FramingError, UnsendableReply

__all__ = [
    "DEFAULT_MAX_REQUEST",
    "Decoder",
    "DecoderLimits",
    "FramingError",
    "ReplyTable",
    "UnsendableReply",
]

DEFAULT_MAX_REQUEST = 65536
"""Bytes of one request line, netstring or policy request, unless ``max-request-bytes`` says."""
DEFAULT_MAX_ATTRIBUTES = 256
"""Attributes of one policy request (smtpd sends 29), unless ``max-policy-attributes`` says."""


@dataclass(frozen=True, slots=True)
class DecoderLimits:
    """What bounds a decoder, from the endpoint's config."""

    max_request: int = DEFAULT_MAX_REQUEST
    max_attributes: int = DEFAULT_MAX_ATTRIBUTES
    allow_plaintext: bool = False
    """sasl: plaintext mechanisms outside TLS too (``allow-plaintext``)."""


class Decoder(Protocol):
    """Fed whatever one read returned; gives back every request it completes, in order.

    Raises ``FramingError`` when the stream can no longer be framed; the decoder is then spent.
    """

    def feed(self, data: bytes) -> Sequence[Request]: ...

    @property
    def has_partial(self) -> bool:
        """Whether part of a request has arrived and the rest has not."""
        ...


ReplyTable = Callable[[Request | None, Outcome], bytes]
"""A mode's replies: the request answered (``None`` for an error that belongs to the connection,
such as lost framing) and its outcome, to the exact bytes Postfix gets. In a mode whose
connections answer requests as they complete (sasl), no bytes mean: reset the connection."""
