"""The request id: made by the service for each request, read by every log line and the backend.

It travels in a ``ContextVar``; each request runs in its own task, which copies the context, so
concurrent requests never see each other's id.
"""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")

_PROCESS_TAG = f"{os.getpid():x}-{os.urandom(3).hex()}"
_sequence = itertools.count(1)


def new_request_id() -> str:
    """Unique per process run and cheap: a random process tag and a counter."""
    return f"{_PROCESS_TAG}-{next(_sequence)}"
