"""The lookup service between connections and the REST backend.

It gives each request its id, guards the mail path against any unexpected exception (which becomes
a temporary error, never "not found"), and is where caching and coalescing belong.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .log import new_request_id, request_id
from .model import LookupRequest, Outcome, PolicyRequest, TemporaryError

log = logging.getLogger(__name__)

R = TypeVar("R", LookupRequest, PolicyRequest)


class Backend(Protocol):
    async def lookup(self, request: LookupRequest, request_id: str) -> Outcome: ...

    async def check_policy(self, request: PolicyRequest, request_id: str) -> Outcome: ...


class EndpointService:
    """Answers one endpoint's requests from its backend."""

    def __init__(self, endpoint_name: str, backend: Backend) -> None:
        self._name = endpoint_name
        self._backend = backend

    async def lookup(self, request: LookupRequest) -> Outcome:
        return await self._guarded(self._backend.lookup, request)

    async def check_policy(self, request: PolicyRequest) -> Outcome:
        return await self._guarded(self._backend.check_policy, request)

    async def _guarded(self, call: Callable[[R, str], Awaitable[Outcome]], request: R) -> Outcome:
        rid = new_request_id()
        request_id.set(rid)
        try:
            outcome = await call(request, rid)
        except Exception:
            log.exception("%s: unexpected error, answering a temporary error", self._name)
            return TemporaryError("internal error")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %r -> %r", self._name, request, outcome)
        return outcome
