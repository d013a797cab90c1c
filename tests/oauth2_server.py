"""A real OAuth2 token endpoint (client-credentials grant) and an API that wants its tokens,
on one aiohttp.web server on loopback: it counts grants and answers 401 to an expired or
unknown token, as a real authorisation server and resource server would."""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from aiohttp import web

from tls_serving import serving

CLIENT_ID = "connector id:1"
"""With a space and a colon: the Basic encoding must form-encode it first (RFC 6749 2.3.1)."""
CLIENT_SECRET = "s3cret+/:é pass"


@dataclass(frozen=True)
class GrantSeen:
    """A token request as the token endpoint received it."""

    at: float
    """``time.monotonic()`` when it arrived."""
    authorization: str | None
    form: dict[str, str]


@dataclass
class OAuth2Servers:
    url: str = ""
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    lifetime: int = 1
    """Seconds a token is valid for, sent as ``expires_in``."""
    grants: list[GrantSeen] = field(default_factory=list)
    """Every token request, refused ones included."""
    issued: dict[str, float] = field(default_factory=dict)
    """Token -> its expiry (``time.monotonic()``)."""
    tokens: list[str] = field(default_factory=list)
    """Every token issued, forgotten ones too."""
    issued_at: list[float] = field(default_factory=list)
    """When each token was issued (``time.monotonic()``)."""
    api_refuses: bool = False
    """The API answers 401 to every token."""
    api_answers: Counter[int] = field(default_factory=Counter)
    api_keys: list[str | None] = field(default_factory=list)
    """The ``X-Api-Key`` of every API request: headers an endpoint sends beside the token."""
    token_answer: Callable[[], Awaitable[web.StreamResponse]] | None = None
    """Replaces the grant (a broken token endpoint) once the client is authenticated."""
    granted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at each token issued; the test clears it to await the next one."""

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def _client(self, request: web.Request, form: dict[str, str]) -> tuple[str, str] | None:
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, encoded = authorization.partition(" ")
            if scheme != "Basic":
                return None
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            return unquote_plus(user), unquote_plus(password)
        if "client_id" in form:
            return form["client_id"], form.get("client_secret", "")
        return None

    async def token(self, request: web.Request) -> web.StreamResponse:
        form = {name: str(value) for name, value in (await request.post()).items()}
        self.grants.append(GrantSeen(time.monotonic(), request.headers.get("Authorization"), form))
        if self._client(request, form) != (self.client_id, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.token_answer is not None:
            return await self.token_answer()
        token = secrets.token_urlsafe(24)
        self.tokens.append(token)
        self.issued_at.append(time.monotonic())
        self.issued[token] = self.issued_at[-1] + self.lifetime
        self.granted.set()
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        )

    async def api(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.api_keys.append(request.headers.get("X-Api-Key"))
        if self.api_refuses or self.issued.get(token, 0.0) <= time.monotonic():
            self.api_answers[401] += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        self.api_answers[200] += 1
        return web.json_response([f"value-of-{request.query.get('key', '')}"])


@asynccontextmanager
async def oauth2_servers(
    port: int = 0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[OAuth2Servers]:
    """Both on one server; HTTPS with ``ssl_context``."""
    servers = OAuth2Servers()
    app = web.Application()
    app.router.add_post("/token", servers.token)
    app.router.add_route("*", "/api", servers.api)
    async with serving(app, ssl_context, port) as url:
        servers.url = url
        yield servers
