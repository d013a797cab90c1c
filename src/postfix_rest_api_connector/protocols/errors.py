"""Typed codec errors: framing lost (close the connection) versus a reply that cannot be encoded."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any


class FramingError(Exception):
    """The byte stream cannot be split into requests any more; the connection must close.

    ``completed`` holds what the same ``feed`` call decoded before the framing broke: those
    requests came first and are still answered, in order, before the error.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.completed: tuple[Any, ...] = ()


class KeptOnFramingError:
    """``with KeptOnFramingError(completed):`` a ``FramingError`` raised inside carries what
    ``completed`` holds by then. A class rather than ``@contextmanager``: it runs on every read,
    and a generator-based one costs several times more."""

    __slots__ = ("_completed",)

    def __init__(self, completed: Sequence[Any]) -> None:
        self._completed = completed

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, FramingError):
            error.completed = tuple(self._completed)


class RequestTooLarge(FramingError):
    """A request grew past the configured size limit before it was complete."""


class BadNetstring(FramingError):
    """The bytes do not form a netstring (length not digits, missing colon or comma)."""


EMPTY_VALUE = "empty value"
"""Every lookup protocol would turn an empty found value into a warning or a miss: the reply
tables send an error with this reason instead."""


class UnsendableReply(ValueError):
    """Postfix would refuse this reply (too long, or not one line); send an error instead."""
