"""The lookup service between connections and the REST backend: request ids, the cache,
single-flight, retries, the circuit breaker and stale-if-error, and the guard that turns any
unexpected exception into a temporary error."""

from __future__ import annotations

from .resilience import RetryPolicy
from .service import Backend, EndpointService, ServiceSettings

__all__ = ["Backend", "EndpointService", "RetryPolicy", "ServiceSettings"]
