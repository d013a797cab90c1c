"""Typed codec errors: framing lost (close the connection) versus a reply that cannot be encoded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class FramingError(Exception):
    """The byte stream cannot be split into requests any more; the connection must close.

    ``completed`` holds what the same ``feed`` call decoded before the framing broke: those
    requests came first and are still answered, in order, before the error.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.completed: tuple[Any, ...] = ()


@contextmanager
def kept_on_framing_error(completed: Sequence[Any]) -> Iterator[None]:
    """A ``FramingError`` raised inside carries what ``completed`` holds by then."""
    try:
        yield
    except FramingError as error:
        error.completed = tuple(completed)
        raise


class RequestTooLarge(FramingError):
    """A request grew past the configured size limit before it was complete."""


class BadNetstring(FramingError):
    """The bytes do not form a netstring (length not digits, missing colon or comma)."""


class UnsendableReply(ValueError):
    """Postfix would refuse this reply (too long, or not one line); send an error instead."""
