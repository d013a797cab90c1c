"""What a connection calls for every request before and after the service: the reply table
counted by outcome, and the answer that needs no waiting.

``runtime.endpoint`` builds these once per endpoint from its config; they live here, in a
compiled package, because they run on every request (interpreted, they were two Python frames
per lookup: docs/performance.md, 2026-12-03 "Instructions per request").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ..core.model import Malformed, Outcome, PermanentError, Request
from ..protocols import ReplyTable

Cached = Callable[[Request], Outcome | None]
AnswerNow = Callable[[Request], bytes | None]


def counted(reply: ReplyTable, answered: Counter[type]) -> ReplyTable:
    """Every reply passes here, so the count by outcome is complete (for the metrics)."""

    def count_and_reply(request: Request | None, outcome: Outcome) -> bytes:
        answered[type(outcome)] += 1
        return reply(request, outcome)

    return count_and_reply


def answering_now(
    reply: ReplyTable, cached: Cached | None, itself: Callable[[Request], bytes | None] | None
) -> AnswerNow:
    """The reply when it needs no waiting (a malformed request, a cache hit), else ``None``.

    A mode whose codec answers some requests itself (sasl, ``itself``) asks it first; the other
    modes' requests do not pay for the question."""

    def answer_now(request: Request) -> bytes | None:
        if isinstance(request, Malformed):
            return reply(request, PermanentError(f"malformed request: {request.reason}"))
        if cached is not None and (outcome := cached(request)) is not None:
            return reply(request, outcome)
        return None

    if itself is None:
        return answer_now
    codec_answer: Callable[[Request], bytes | None] = itself

    def answer_itself_or_now(request: Request) -> bytes | None:
        own = codec_answer(request)
        return own if own is not None else answer_now(request)

    return answer_itself_or_now
