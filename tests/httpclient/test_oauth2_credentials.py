"""OAuth2Credentials against a real token endpoint on loopback, with the clock as an argument
so that expiry and the retry hold-off are tested without sleeping."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal
from urllib.parse import quote_plus

import pytest
from aiohttp import web

from oauth2_server import CLIENT_ID, CLIENT_SECRET, OAuth2Servers, oauth2_servers
from postfix_rest_api_connector.httpclient import ClientSettings, Target
from postfix_rest_api_connector.httpclient.oauth2 import (
    DEFAULT_LIFETIME,
    MAX_TOKEN_RESPONSE,
    MIN_GRANT_INTERVAL,
    RETRY_AFTER_FAILURE,
    OAuth2Credentials,
    OAuth2Settings,
    TokenUnavailable,
    parse_token_response,
    token_request,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def servers() -> AsyncIterator[OAuth2Servers]:
    async with oauth2_servers() as running:
        yield running


def settings_for(
    url: str, client_auth: Literal["basic", "post"] = "basic", secret: str = CLIENT_SECRET
) -> OAuth2Settings:
    return OAuth2Settings(
        endpoint="test",
        token_url=Target.parse(url),
        token_url_for_logs=url,
        http=ClientSettings("test-agent", True, 2.0, MAX_TOKEN_RESPONSE),
        client_id=CLIENT_ID,
        client_secret=secret,
        scope="read:users mail",
        audience="https://api.example",
        client_auth=client_auth,
    )


async def test_first_current_starts_the_grant_and_renew_waits_for_it(
    servers: OAuth2Servers,
) -> None:
    credentials = OAuth2Credentials(settings_for(servers.token_url), Clock())
    assert credentials.current() is None  # nothing yet, but the grant has started
    headers = await credentials.renew()
    (name, value), *rest = headers.pairs
    assert (name, rest) == ("Authorization", [])
    assert value.removeprefix("Bearer ") in servers.issued
    assert len(servers.grants) == 1
    assert credentials.current() is headers


async def test_concurrent_renewals_share_one_grant(servers: OAuth2Servers) -> None:
    credentials = OAuth2Credentials(settings_for(servers.token_url), Clock())
    results = await asyncio.gather(*(credentials.renew() for _ in range(50)))
    assert len(servers.grants) == 1
    assert all(headers is results[0] for headers in results)


async def test_renewal_ahead_of_expiry_keeps_the_token_in_use_until_the_new_one(
    servers: OAuth2Servers,
) -> None:
    """Lifetime 100 s: margin 10 s, so the token serves until 90 s and renewal starts at 80 s."""
    servers.lifetime = 100
    clock = Clock()
    credentials = OAuth2Credentials(settings_for(servers.token_url), clock)
    first = await credentials.renew()
    clock.now += 79.9
    assert credentials.current() is first
    assert len(servers.grants) == 1
    clock.now += 0.2
    assert credentials.current() is first  # still valid: served while the renewal runs
    assert credentials.current() is first  # and the renewal is not started twice
    second = await credentials.renew()  # joins the renewal in flight
    assert second is not first
    assert credentials.current() is second
    assert len(servers.grants) == 2


async def test_a_renewal_right_after_a_grant_reuses_its_token(servers: OAuth2Servers) -> None:
    """An API that refuses every token (a wrong audience) gets a grant per
    ``MIN_GRANT_INTERVAL``, not one per lookup."""
    servers.lifetime = 100
    clock = Clock()
    credentials = OAuth2Credentials(settings_for(servers.token_url), clock)
    first = await credentials.renew()
    clock.now += MIN_GRANT_INTERVAL - 0.01
    assert await credentials.renew() is first
    assert len(servers.grants) == 1
    clock.now += 0.01
    assert await credentials.renew() is not first
    assert len(servers.grants) == 2


async def test_an_expired_token_is_not_served(servers: OAuth2Servers) -> None:
    servers.lifetime = 100
    clock = Clock()
    credentials = OAuth2Credentials(settings_for(servers.token_url), clock)
    await credentials.renew()
    servers.token_answer = _answer(503)  # the renewal fails, so the token only ages
    clock.now += 89.9
    assert credentials.current() is not None
    clock.now += 0.2
    assert credentials.current() is None


def _answer(status: int, body: object = None) -> Callable[[], Awaitable[web.StreamResponse]]:
    async def answer() -> web.StreamResponse:
        return web.json_response(body, status=status)

    return answer


async def test_a_failing_token_endpoint_is_asked_again_only_after_the_hold_off(
    servers: OAuth2Servers,
) -> None:
    servers.token_answer = _answer(503, {"error": "down"})
    clock = Clock()
    credentials = OAuth2Credentials(settings_for(servers.token_url), clock)
    with pytest.raises(TokenUnavailable, match="HTTP 503"):
        await credentials.renew()
    with pytest.raises(TokenUnavailable, match="HTTP 503"):
        await credentials.renew()  # at once, without a request
    assert credentials.current() is None
    assert len(servers.grants) == 1
    clock.now += RETRY_AFTER_FAILURE
    servers.token_answer = None
    assert (await credentials.renew()).pairs[0][0] == "Authorization"
    assert len(servers.grants) == 2


async def test_a_wrong_secret_is_named_as_the_client_refused(servers: OAuth2Servers) -> None:
    credentials = OAuth2Credentials(settings_for(servers.token_url, secret="wrong"), Clock())
    with pytest.raises(TokenUnavailable, match=r"HTTP 401: client-id or client secret refused"):
        await credentials.renew()


async def test_an_unreachable_token_endpoint_is_a_token_failure() -> None:
    with socket_without_listener() as port:
        credentials = OAuth2Credentials(settings_for(f"http://127.0.0.1:{port}/token"), Clock())
        with pytest.raises(TokenUnavailable, match="request failed: ConnectError"):
            await credentials.renew()


@contextmanager
def socket_without_listener() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("client_auth", ["basic", "post"])
async def test_the_client_authenticates_as_configured(
    servers: OAuth2Servers, client_auth: Literal["basic", "post"]
) -> None:
    credentials = OAuth2Credentials(settings_for(servers.token_url, client_auth), Clock())
    await credentials.renew()
    (grant,) = servers.grants
    expected_form = {
        "grant_type": "client_credentials",
        "scope": "read:users mail",
        "audience": "https://api.example",
    }
    if client_auth == "basic":
        pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode()
        assert grant.authorization == "Basic " + base64.b64encode(pair).decode()
        assert grant.form == expected_form
    else:
        assert grant.authorization is None
        assert grant.form == {
            **expected_form,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }


def test_the_token_request_without_scope_and_audience_is_the_grant_type_only() -> None:
    settings = settings_for("http://127.0.0.1:1/token")
    bare = OAuth2Settings(
        settings.endpoint,
        settings.token_url,
        settings.token_url_for_logs,
        settings.http,
        "id",
        "secret",
    )
    body, headers = token_request(bare)
    assert body == b"grant_type=client_credentials"
    assert headers.pairs == (("Authorization", "Basic " + base64.b64encode(b"id:secret").decode()),)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no usable access_token"),
        (b'{"access_token": "", "token_type": "Bearer"}', "no usable access_token"),
        (b'{"access_token": "a b", "token_type": "Bearer"}', "no usable access_token"),
        (b'{"access_token": "a\\r\\nX: y", "token_type": "Bearer"}', "no usable access_token"),
        (b'{"access_token": 7, "token_type": "Bearer"}', "no usable access_token"),
        (b'{"access_token": "t"}', "not Bearer"),
        (b'{"access_token": "t", "token_type": "mac"}', "not Bearer"),
        (b'{"access_token": "t", "token_type": "bearer", "expires_in": 0}', "positive"),
        (b'{"access_token": "t", "token_type": "bearer", "expires_in": -5}', "positive"),
        (b'{"access_token": "t", "token_type": "bearer", "expires_in": NaN}', "positive"),
        (b'{"access_token": "t", "token_type": "bearer", "expires_in": true}', "not a number"),
        (b'{"access_token": "t", "token_type": "bearer", "expires_in": "soon"}', "not a number"),
        (b"[" * 100_000, "not JSON"),
    ],
    ids=[
        "not-json",
        "array",
        "no-token",
        "empty-token",
        "space-in-token",
        "header-injection",
        "number-token",
        "no-type",
        "mac-type",
        "zero-lifetime",
        "negative-lifetime",
        "nan-lifetime",
        "bool-lifetime",
        "text-lifetime",
        "deep-nesting",
    ],
)
def test_an_unusable_token_response_is_refused(answer: bytes, reason: str) -> None:
    with pytest.raises(TokenUnavailable, match=reason):
        parse_token_response(answer)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(None, DEFAULT_LIFETIME), (60, 60.0), ("60", 60.0), (2.5, 2.5)],
    ids=["absent", "number", "string", "fraction"],
)
def test_a_token_response_gives_the_bearer_header_and_lifetime(
    expires_in: object, lifetime: float
) -> None:
    answer: dict[str, object] = {"access_token": "abc.DEF-123", "token_type": "BEARER"}
    if expires_in is not None:
        answer["expires_in"] = expires_in
    grant = parse_token_response(json.dumps(answer).encode())
    assert grant.headers.pairs == (("Authorization", "Bearer abc.DEF-123"),)
    assert grant.lifetime == lifetime


async def test_an_oversized_token_answer_is_refused(servers: OAuth2Servers) -> None:
    huge = "x" * (MAX_TOKEN_RESPONSE + 1)
    servers.token_answer = _answer(200, {"access_token": huge, "token_type": "Bearer"})
    credentials = OAuth2Credentials(settings_for(servers.token_url), Clock())
    with pytest.raises(TokenUnavailable, match="exceeds"):
        await credentials.renew()


async def test_neither_secret_nor_token_shows_in_a_repr(servers: OAuth2Servers) -> None:
    settings = settings_for(servers.token_url)
    credentials = OAuth2Credentials(settings, Clock())
    headers = await credentials.renew()
    (token,) = servers.issued
    shown = repr(settings) + repr(credentials) + repr(headers)
    assert CLIENT_SECRET not in shown
    assert token not in shown
    assert servers.token_url in shown
