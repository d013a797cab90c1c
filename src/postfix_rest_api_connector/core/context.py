"""The request id: made by the service for each request, read by every log line and the backend.

It travels in a ``ContextVar``; each request runs in its own task, which copies the context, so
concurrent requests never see each other's id.
"""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("request_id", default="-")


def _new_process_tag() -> None:
    global _process_tag  # noqa: PLW0603 - one per process, renewed in a forked worker
    _process_tag = f"{os.getpid():x}-{os.urandom(3).hex()}"


_process_tag = ""
_new_process_tag()
os.register_at_fork(after_in_child=_new_process_tag)
_sequence = itertools.count(1)


def new_request_id() -> str:
    """Unique per process run and cheap: a random process tag (the pid first) and a counter."""
    return f"{_process_tag}-{next(_sequence)}"
