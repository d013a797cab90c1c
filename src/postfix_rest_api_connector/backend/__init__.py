"""The REST side of an endpoint: the contract (``contract``), how requests are encoded for the
API (``encoding``), and the backend that asks the HTTP client (``rest``)."""

from __future__ import annotations

from .rest import BackendSettings, RestBackend

__all__ = ["BackendSettings", "RestBackend"]
