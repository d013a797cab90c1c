"""Logging set-up: a request id on every line of a request, no timestamps of our own under journald.

The id travels in a ``ContextVar``; each connection task copies the context, so concurrent requests
never see each other's id.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_PROCESS_TAG = f"{os.getpid():x}-{os.urandom(3).hex()}"
_sequence = itertools.count(1)


def new_request_id() -> str:
    """Unique per process run and cheap: a random process tag and a counter."""
    return f"{_PROCESS_TAG}-{next(_sequence)}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str) -> None:
    """Log to stderr; journald adds its own timestamps, so we add none when it is our sink."""
    timestamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"{timestamp}%(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
