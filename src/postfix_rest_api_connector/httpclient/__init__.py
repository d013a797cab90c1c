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
    Target,
)
from .codec import HttpResponse
from .headers import NO_HEADERS, Credentials, Headers, StaticCredentials
from .native import NativeClient
from .reqwest import ReqwestClient

__all__ = [
    "NO_HEADERS",
    "ClientSettings",
    "ConnectError",
    "ConnectionClosed",
    "Credentials",
    "Headers",
    "HttpClient",
    "HttpError",
    "HttpResponse",
    "InvalidRequest",
    "InvalidResponse",
    "RequestTimeout",
    "ResponseTooLarge",
    "StaticCredentials",
    "Target",
    "open_client",
    "uses_native_client",
]

_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def uses_native_client(url: str) -> bool:
    """Plain HTTP with nothing the native client leaves to pyreqwest: no user info, no proxy
    from the environment (pyreqwest honours them, as the Rust predecessor does), ASCII only."""
    parts = urlsplit(url)
    return (
        parts.scheme == "http"
        and parts.username is None
        and url.isascii()
        and url.isprintable()
        and " " not in url
        and not any(os.environ.get(name) for name in _PROXY_VARIABLES)
    )


def open_client(target: Target, settings: ClientSettings) -> HttpClient:
    """A client for ``target`` and any other target on its host: the native one for plain
    ``http://``, pyreqwest for everything else."""
    if uses_native_client(target.configured):
        return NativeClient(target, settings)
    return ReqwestClient(settings)
