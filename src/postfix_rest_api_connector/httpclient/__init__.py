"""HTTP clients for the REST backend: one interface, two engines, chosen per endpoint."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .base import (
    ClientSettings,
    ConnectError,
    ConnectionClosed,
    HttpClient,
    HttpError,
    InvalidRequest,
    InvalidResponse,
    RequestTimeout,
    ResponseTooLarge,
)
from .codec import HttpResponse
from .native import NativeClient
from .reqwest import ReqwestClient

__all__ = [
    "ClientSettings",
    "ConnectError",
    "ConnectionClosed",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "InvalidRequest",
    "InvalidResponse",
    "RequestTimeout",
    "ResponseTooLarge",
    "open_client",
    "uses_native_client",
]

_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def uses_native_client(target: str) -> bool:
    """Plain HTTP with nothing the native client leaves to pyreqwest: no user info, no proxy
    from the environment (pyreqwest honours them, as the Rust predecessor does), ASCII only."""
    parts = urlsplit(target)
    return (
        parts.scheme == "http"
        and parts.username is None
        and target.isascii()
        and target.isprintable()
        and " " not in target
        and not any(os.environ.get(name) for name in _PROXY_VARIABLES)
    )


def open_client(settings: ClientSettings) -> HttpClient:
    if uses_native_client(settings.target):
        return NativeClient(settings)
    return ReqwestClient(settings)
