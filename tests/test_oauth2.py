"""``oauth2`` endpoints against a real token endpoint and an API that answers 401 to expired or
unknown tokens (``oauth2_server``), through real connections to the connector: one grant per
token lifetime however many lookups run, the protocol's temporary error whenever no token can be
had, one log line per change of the token endpoint's state, nothing secret in a DEBUG log."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import (
    DEADLINE,
    MODULE,
    Spawn,
    endpoint_address,
    run_to_end,
    running_connector,
    write_config,
)
from oauth2_server import CLIENT_ID, CLIENT_SECRET, OAuth2Servers, oauth2_servers
from postfix_rest_api_connector.config import ConfigError, load_config, parse_config
from postfix_rest_api_connector.httpclient.oauth2 import MIN_GRANT_INTERVAL, RETRY_AFTER_FAILURE
from postfix_rest_api_connector.protocols.tcp_table import encode_reply
from postfix_rest_api_connector.runtime.daemon import Daemon

TOKEN_FAILED = encode_reply(400, "OAuth2 token endpoint failed: ").rstrip(b"\n")
"""tcp_table's temporary error for a failing token endpoint, as it is encoded."""
REFUSED = encode_reply(400, "OAuth2 token endpoint failed: HTTP 401").rstrip(b"\n")
LOAD_SECONDS = 5.0
CONCURRENT = 100


@pytest.fixture
async def servers() -> AsyncIterator[OAuth2Servers]:
    async with oauth2_servers() as running:
        yield running


def oauth2_endpoint(
    servers: OAuth2Servers, secret_file: Path, token_url: str | None = None, **oauth2: Any
) -> dict[str, Any]:
    return {
        "name": "users",
        "mode": "tcp-lookup",
        "target": servers.api_url,
        "bind-port": 0,
        "request-timeout": 1000,
        "oauth2": {
            "token-url": token_url or servers.token_url,
            "client-id": CLIENT_ID,
            "client-secret-file": str(secret_file),
            **oauth2,
        },
    }


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "client-secret"
    write_secret(path, CLIENT_SECRET)
    return path


def write_secret(path: Path, secret: str) -> None:
    path.write_text(secret + "\n", encoding="utf-8")


async def token_aged() -> None:
    """Until the token in use is older than ``MIN_GRANT_INTERVAL``, within which a renewal
    after a 401 reuses it rather than ask for another: a time, not an event, to wait for."""
    await asyncio.sleep(MIN_GRANT_INTERVAL)


class TcpClient:
    """One tcp_table connection to the connector, asked one key at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> TcpClient:
        return cls(*await asyncio.open_connection(*address))

    async def get(self, key: str) -> bytes:
        self.writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(self.reader.readline(), DEADLINE)

    def close(self) -> None:
        self.writer.close()


def state_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and "oauth2 token endpoint" in r.getMessage()
    ]


async def test_the_token_is_fetched_at_start_and_reused(
    servers: OAuth2Servers, secret_file: Path
) -> None:
    servers.lifetime = 3600
    async with running_connector(oauth2_endpoint(servers, secret_file)) as daemon:
        await asyncio.wait_for(servers.granted.wait(), DEADLINE)  # before any lookup
        client = await TcpClient.connect(endpoint_address(daemon))
        for index in range(20):
            assert await client.get(f"k{index}") == f"200 value-of-k{index}\n".encode()
        client.close()
    assert len(servers.grants) == 1
    assert servers.api_answers == {200: 20}


async def test_the_endpoints_other_headers_go_beside_the_token(
    servers: OAuth2Servers, secret_file: Path
) -> None:
    servers.lifetime = 3600
    endpoint = {**oauth2_endpoint(servers, secret_file), "headers": {"X-Api-Key": "k-123"}}
    async with running_connector(endpoint) as daemon:
        client = await TcpClient.connect(endpoint_address(daemon))
        assert await client.get("k") == b"200 value-of-k\n"
        client.close()
    assert servers.api_answers == {200: 1}
    assert servers.api_keys == ["k-123"]


async def test_many_lookups_for_several_lifetimes_cause_one_grant_per_lifetime(
    servers: OAuth2Servers, secret_file: Path, tmp_path: Path, spawn: Spawn
) -> None:
    """The connector in its own process (workers 1): tokens valid for 1 s, 100 connections
    asking without pause for 5 s. Renewal starts 0.8 s after a grant (margin 0.1 s, a tenth of
    the lifetime), so the grants come 0.8 s apart, give or take the loop's latency: never two
    for one expiry, never a token used past its end (the API would answer 401), never a
    failed lookup."""
    config = write_config(
        tmp_path, {"workers": 1, "endpoints": [oauth2_endpoint(servers, secret_file)]}
    )
    connector = await spawn(str(config))
    port = await connector.port()
    await asyncio.wait_for(servers.granted.wait(), DEADLINE)
    failures: list[bytes] = []
    answered = 0

    async def ask_without_pause(worker: int, until: float) -> None:
        nonlocal answered
        client = await TcpClient.connect(("127.0.0.1", port))
        try:
            index = 0
            while time.monotonic() < until:
                key = f"w{worker}-{index}"
                reply = await client.get(key)
                if reply != f"200 value-of-{key}\n".encode():
                    failures.append(reply)
                answered += 1
                index += 1
        finally:
            client.close()

    started = time.monotonic()
    until = started + LOAD_SECONDS
    await asyncio.gather(*(ask_without_pause(worker, until) for worker in range(CONCURRENT)))
    assert failures == []
    assert answered > 10 * CONCURRENT
    assert servers.api_answers[401] == 0
    during = [at for at in servers.issued_at if at <= until]
    gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
    assert all(0.75 <= gap < 1.0 for gap in gaps), gaps
    elapsed = during[-1] - during[0]
    assert len(during) - 1 == len(gaps) >= int(LOAD_SECONDS / 0.95)
    assert elapsed <= len(gaps) * 1.0
    assert len(servers.grants) == len(servers.issued_at)  # no refused or repeated grant


async def test_an_unknown_token_is_renewed_once_for_all_concurrent_lookups(
    servers: OAuth2Servers, secret_file: Path
) -> None:
    servers.lifetime = 3600
    async with running_connector(oauth2_endpoint(servers, secret_file)) as daemon:
        address = endpoint_address(daemon)
        client = await TcpClient.connect(address)
        assert await client.get("a") == b"200 value-of-a\n"
        await token_aged()
        servers.issued.clear()  # the API forgets every token (a restart, a revocation)
        clients = [await TcpClient.connect(address) for _ in range(30)]
        replies = await asyncio.gather(*(c.get(f"k{i}") for i, c in enumerate(clients)))
        assert replies == [f"200 value-of-k{i}\n".encode() for i in range(30)]
        for each in [client, *clients]:
            each.close()
    assert len(servers.grants) == 2  # the one at start, and one renewal shared by all 30


async def test_a_401_that_persists_after_renewal_is_a_temporary_error(
    servers: OAuth2Servers, secret_file: Path
) -> None:
    servers.lifetime = 3600
    async with running_connector(oauth2_endpoint(servers, secret_file)) as daemon:
        await asyncio.wait_for(servers.granted.wait(), DEADLINE)
        await token_aged()
        servers.api_refuses = True  # every token, old or new (a wrong audience)
        client = await TcpClient.connect(endpoint_address(daemon))
        refused = encode_reply(400, "API refused a new OAuth2 token (HTTP 401)")
        assert await client.get("k") == refused
        # the lookup's two attempts (retries 1), each sent twice; one renewal for them all
        assert servers.api_answers[401] == 4
        assert len(servers.grants) == 2
        assert await client.get("k2") == refused
        assert len(servers.grants) == 2  # a fresh token is reused, not granted again
        client.close()


async def test_a_token_endpoint_down_at_start_gives_temporary_errors_then_recovers(
    secret_file: Path,
) -> None:
    """Start does not fail; lookups get tcp_table's 400 at once, never 500 (not found); once the
    token endpoint listens, lookups succeed within the retry hold-off."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = reserved.getsockname()[1]
        async with oauth2_servers() as api:
            endpoint = oauth2_endpoint(api, secret_file, token_url=f"http://127.0.0.1:{port}/token")
            async with running_connector(endpoint) as daemon:
                client = await TcpClient.connect(endpoint_address(daemon))
                started = time.monotonic()
                reply = await client.get("k")
                assert reply.startswith(TOKEN_FAILED), reply
                assert time.monotonic() - started < 1.0
                reserved.close()
                async with oauth2_servers(port) as tokens:
                    api.issued = tokens.issued  # one authorisation server for both
                    deadline = time.monotonic() + RETRY_AFTER_FAILURE + DEADLINE
                    while (reply := await client.get("k")) != b"200 value-of-k\n":
                        assert reply.startswith(TOKEN_FAILED), reply
                        assert time.monotonic() < deadline
                        await asyncio.sleep(0.05)  # the hold-off has no event to await
                client.close()
    assert len(tokens.grants) == 1


async def test_a_failing_token_endpoint_is_never_not_found(
    servers: OAuth2Servers, secret_file: Path
) -> None:
    async def broken() -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    servers.token_answer = broken
    async with running_connector(oauth2_endpoint(servers, secret_file)) as daemon:
        client = await TcpClient.connect(endpoint_address(daemon))
        reply = await client.get("k")
        client.close()
    assert reply == encode_reply(400, "OAuth2 token endpoint failed: answer is not JSON")
    assert servers.api_answers == {}


async def test_a_wrong_secret_gives_temporary_errors_and_one_line_per_state_change(
    servers: OAuth2Servers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret", encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    async with running_connector(oauth2_endpoint(servers, wrong)) as daemon:
        client = await TcpClient.connect(endpoint_address(daemon))
        until = time.monotonic() + 2.5 * RETRY_AFTER_FAILURE
        lookups = 0
        while time.monotonic() < until:
            reply = await client.get(f"k{lookups}")
            assert reply.startswith(REFUSED), reply
            lookups += 1
        assert len(servers.grants) >= 3  # asked again after each hold-off...
        assert len(servers.grants) < lookups  # ...not once per lookup
        assert state_lines(caplog) == [
            f"endpoint users: oauth2 token endpoint {servers.token_url} fails: HTTP 401:"
            " client-id or client secret refused (invalid_client?); without a valid token,"
            " requests get a temporary error until it gives one"
        ]
        servers.client_secret = "not-the-secret"  # the authorisation server accepts it now
        deadline = time.monotonic() + RETRY_AFTER_FAILURE + DEADLINE
        while (reply := await client.get("k")) != b"200 value-of-k\n":
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.05)  # the hold-off has no event to await
        client.close()
    assert state_lines(caplog)[1:] == [
        f"endpoint users: oauth2 token endpoint {servers.token_url} gives tokens again"
    ]


@pytest.mark.parametrize("client_auth", ["basic", "post"])
async def test_each_client_auth_kind_reaches_the_token_endpoint(
    servers: OAuth2Servers, secret_file: Path, client_auth: str
) -> None:
    endpoint = oauth2_endpoint(
        servers, secret_file, scope="users:read", audience="mail", **{"client-auth": client_auth}
    )
    async with running_connector(endpoint) as daemon:
        client = await TcpClient.connect(endpoint_address(daemon))
        assert await client.get("k") == b"200 value-of-k\n"
        client.close()
    (grant,) = servers.grants
    assert grant.form["scope"] == "users:read"
    assert grant.form["audience"] == "mail"
    assert (grant.authorization is not None) == (client_auth == "basic")
    assert ("client_secret" in grant.form) == (client_auth == "post")


async def test_a_reload_rereads_the_secret_and_a_changed_config_gets_a_new_token(
    servers: OAuth2Servers, secret_file: Path, tmp_path: Path
) -> None:
    servers.lifetime = 3600
    path = write_config(tmp_path, {"endpoints": [oauth2_endpoint(servers, secret_file)]})
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        await asyncio.wait_for(servers.granted.wait(), DEADLINE)
        assert await daemon.reload()  # nothing changed: the token is kept
        assert len(servers.grants) == 1
        servers.client_secret = "rotated"
        write_secret(secret_file, "rotated")
        assert await daemon.reload()
        client = await TcpClient.connect(endpoint_address(daemon))
        assert await client.get("k") == b"200 value-of-k\n"
        client.close()
        assert len(servers.grants) == 2
        changed = oauth2_endpoint(servers, secret_file, scope="more")
        write_config(tmp_path, {"endpoints": [changed]})
        assert await daemon.reload()
        client = await TcpClient.connect(endpoint_address(daemon))
        assert await client.get("k") == b"200 value-of-k\n"
        client.close()
    finally:
        await daemon.stop()
    assert [grant.form.get("scope") for grant in servers.grants] == [None, None, "more"]


async def test_a_debug_log_shows_neither_secret_nor_token(
    servers: OAuth2Servers, secret_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Grants, a 401 and its renewal, a refused secret, a reply: all at DEBUG."""
    caplog.set_level(logging.DEBUG)
    for client_auth in ("basic", "post"):
        endpoint = oauth2_endpoint(servers, secret_file, **{"client-auth": client_auth})
        async with running_connector(endpoint) as daemon:
            client = await TcpClient.connect(endpoint_address(daemon))
            assert await client.get("a") == b"200 value-of-a\n"
            await token_aged()
            servers.issued.clear()
            assert await client.get("b") == b"200 value-of-b\n"
            await token_aged()
            servers.client_secret = "another"
            servers.issued.clear()
            assert (await client.get("c")).startswith(b"400 ")
            servers.client_secret = CLIENT_SECRET
            client.close()
    assert len(servers.tokens) == 4
    logged = caplog.text + "".join(
        repr(record.args) + repr(record.__dict__) for record in caplog.records
    )
    assert "oauth2 token" in logged  # the log is there...
    for secret in [CLIENT_SECRET, *servers.tokens]:
        assert secret not in logged  # ...without anything secret


async def test_check_config_names_the_auth_kind_without_the_secret(
    servers: OAuth2Servers, secret_file: Path, tmp_path: Path
) -> None:
    path = write_config(tmp_path, {"endpoints": [oauth2_endpoint(servers, secret_file)]})
    status, stdout, stderr = await run_to_end(*MODULE, "check-config", str(path))
    assert status == 0, stderr
    assert f"(auth: oauth2 {servers.token_url} {CLIENT_ID}, timeout 1000 ms)" in stdout
    assert CLIENT_SECRET not in stdout + stderr


def test_the_config_names_what_is_wrong_with_oauth2(secret_file: Path) -> None:
    def problems(oauth2: dict[str, Any], **endpoint: Any) -> list[str]:
        document = {
            "name": "e",
            "mode": "tcp-lookup",
            "target": "http://127.0.0.1:1/",
            "bind-port": 0,
            "oauth2": oauth2,
            **endpoint,
        }
        try:
            parse_config({"endpoints": [document]})
        except ConfigError as error:
            return error.problems
        return []

    base = {"token-url": "https://idp.example/token", "client-id": "c"}
    good = {**base, "client-secret-file": str(secret_file)}
    assert problems(good) == []
    assert problems(base) == [
        "endpoints[0].oauth2.client-secret-file: give exactly one of client-secret-file,"
        " client-secret-env"
    ]
    assert problems({**good, "client-secret-env": "HOME"}) == problems(base)
    assert problems({**base, "client-secret-env": "NO_SUCH_VARIABLE_X"}) == [
        "endpoints[0].oauth2.client-secret-env: environment variable NO_SUCH_VARIABLE_X is not set"
    ]
    assert problems({**good, "token-url": "ftp://x/"}) == [
        "endpoints[0].oauth2.token-url: must be an http:// or https:// URL with a host"
    ]
    assert problems({**good, "client-auth": "jwt"}) == [
        "endpoints[0].oauth2.client-auth: Input should be 'basic' or 'post'"
    ]
    assert problems({**good, "scope": "a  b"})[0].startswith("endpoints[0].oauth2.scope: ")
    assert problems({**good, "client-id": "a\r\nb"})[0].startswith(
        "endpoints[0].oauth2.client-id: must not contain control characters"
    )
    assert problems({**good, "x": 1}) == ["endpoints[0].oauth2.x: unknown key"]
    assert problems(good, **{"auth-token": "t"}) == [
        "endpoints[0].oauth2: give either oauth2 or an auth-token, not both"
    ]
    basic = {"username": "u", "password-env": "HOME"}
    assert problems(good, **{"basic-auth": basic}) == [
        "endpoints[0].oauth2: sends the Authorization header: give either oauth2 or basic-auth"
    ]
    assert problems(good, headers={"authorization": "Bearer x"}) == [
        "endpoints[0].oauth2: sends the Authorization header: remove it from headers"
    ]
    assert {line.split(":")[0] for line in problems({})} >= {
        "endpoints[0].oauth2.token-url",
        "endpoints[0].oauth2.client-id",
    }
    write_secret(secret_file, "")
    assert problems(good) == [
        "endpoints[0].oauth2.client-secret-file: must be one line without control characters,"
        " not empty"
    ]


async def test_query_asks_with_a_token(
    servers: OAuth2Servers, secret_file: Path, tmp_path: Path
) -> None:
    path = write_config(tmp_path, {"endpoints": [oauth2_endpoint(servers, secret_file)]})
    status, stdout, stderr = await run_to_end(*MODULE, "query", str(path), "users", "k")
    assert (status, stdout) == (0, "value-of-k\n"), stderr
    assert len(servers.grants) == 1
    assert servers.api_answers == {200: 1}
