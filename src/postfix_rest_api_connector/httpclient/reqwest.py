"""pyreqwest for what the native client leaves out: ``https://`` (rustls, a custom CA, HTTP/2),
proxies from the environment and user info in the URL, as the Rust predecessor handled them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import ConnectError as ReqwestConnectError
from pyreqwest.exceptions import NetworkError, PyreqwestError, RequestTimeoutError
from pyreqwest.request import RequestBuilder

from .base import (
    ClientSettings,
    ConnectError,
    ConnectionClosed,
    HttpError,
    InvalidRequest,
    InvalidResponse,
    RequestTimeout,
    ResponseTooLarge,
    Target,
)
from .codec import HttpResponse
from .headers import Headers

_POOL_IDLE_PER_HOST = 1024
"""Enough idle keep-alive connections that steady load opens no new ones."""
_FORM = "application/x-www-form-urlencoded"


class ReqwestClient:
    """One pyreqwest client per endpoint, for any of its targets; its errors come out as
    ``HttpError``."""

    def __init__(self, settings: ClientSettings) -> None:
        self._max_body = settings.max_body_bytes
        headers = {"Accept": "application/json"} if settings.accept_json else {}
        builder = (
            ClientBuilder()
            .user_agent(settings.user_agent)
            .default_headers(headers)
            .timeout(timedelta(seconds=settings.timeout))
            .pool_max_idle_per_host(_POOL_IDLE_PER_HOST)
            .follow_redirects(False)
            .referer(False)
        )
        if settings.ca_pem is not None:
            builder = builder.add_root_certificate_pem(settings.ca_pem)
        if settings.identity_pem is not None:
            builder = builder.identity_pem(settings.identity_pem)
        self._client = builder.build()

    def get(
        self, target: Target, query: str, headers: Headers, request_id: str, budget: float | None
    ) -> Awaitable[HttpResponse]:
        url = target.url_prefix + query
        return self._send(lambda: self._client.get(url), headers, request_id, budget)

    def post_form(
        self, target: Target, body: bytes, headers: Headers, request_id: str, budget: float | None
    ) -> Awaitable[HttpResponse]:
        def build() -> RequestBuilder:
            return self._client.post(target.url).header("Content-Type", _FORM).body_bytes(body)

        return self._send(build, headers, request_id, budget)

    def post(
        self,
        target: Target,
        body: bytes,
        headers: Headers,
        request_id: str,
        budget: float | None,
        *,
        content_type: str,
    ) -> Awaitable[HttpResponse]:
        def build() -> RequestBuilder:
            request = self._client.post(target.url)
            return request.header("Content-Type", content_type).body_bytes(body)

        return self._send(build, headers, request_id, budget)

    async def _send(
        self,
        build: Callable[[], RequestBuilder],
        headers: Headers,
        request_id: str,
        budget: float | None,
    ) -> HttpResponse:
        """The body is read only for a 200, and only up to the limit. Building the request is
        inside the guard too: pyreqwest may refuse it, and that must come out as an HttpError."""
        try:
            builder = build()
            for name, value in headers.pairs:
                builder = builder.header(name, value)
            builder = builder.header("X-Request-Id", request_id)
            if budget is not None:
                builder = builder.timeout(timedelta(seconds=budget))
            async with builder.build_streamed() as response:
                body = bytearray()
                if response.status == 200:
                    reader = response.body_reader
                    while (chunk := await reader.read(65536)) is not None:
                        body += chunk
                        if len(body) > self._max_body:
                            raise ResponseTooLarge("API answer exceeds max-response-bytes")
                fields = response.headers
                return HttpResponse(
                    response.status,
                    bytes(body),
                    fields.get("content-type"),
                    ", ".join(fields.getall("cache-control")) or None,  # as the native client
                )
        except PyreqwestError as error:
            raise _http_error(error) from None
        except (ValueError, OverflowError):
            # pyreqwest refusing to build the request (a header value, a duration)
            raise InvalidRequest("the request could not be built") from None

    async def close(self) -> None:
        await self._client.close()


def _http_error(error: PyreqwestError) -> HttpError:
    """By kind only: pyreqwest's messages carry the URL, and with it the key and maybe a secret."""
    if isinstance(error, RequestTimeoutError):
        return RequestTimeout("API did not answer in time")
    if isinstance(error, ReqwestConnectError):
        return ConnectError("API could not be reached")
    if isinstance(error, NetworkError):
        return ConnectionClosed("API connection failed")
    return InvalidResponse(type(error).__name__)


def identity_accepted(pem: bytes) -> bool:
    """Whether pyreqwest takes ``pem`` as a client certificate and its key (checked at start:
    the OpenSSL that checks the pair first accepts forms rustls does not)."""
    try:
        ClientBuilder().identity_pem(pem)
    except ValueError:
        return False
    return True
