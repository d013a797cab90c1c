"""Typed codec errors: framing lost (close the connection) versus a reply that cannot be encoded."""

from __future__ import annotations


class FramingError(Exception):
    """The byte stream cannot be split into requests any more; the connection must close."""


class RequestTooLarge(FramingError):
    """A request grew past the configured size limit before it was complete."""


class BadNetstring(FramingError):
    """The bytes do not form a netstring (length not digits, missing colon or comma)."""


class UnsendableReply(ValueError):
    """Postfix would refuse this reply (too long, or not one line); send an error instead."""
