"""The sasl mode through the real daemon and a real API: the REST contract row by row, the body
the API gets, the success cache, no coalescing, the failure delay beside other ids, metrics,
the config's rules, the ``query`` command, and a DEBUG log without the password."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from conftest import (
    FakeApi,
    Spawn,
    endpoint_address,
    endpoint_config,
    running_connector,
)
from postfix_rest_api_connector.admin.metrics import ConnectorCollector
from postfix_rest_api_connector.config import ConfigError, parse_config
from postfix_rest_api_connector.httpclient import ClientSettings, Headers, Target
from postfix_rest_api_connector.httpclient.native import NativeClient
from postfix_rest_api_connector.httpclient.reqwest import ReqwestClient
from postfix_rest_api_connector.protocols.sasl import MAX_LINE

WAIT = 10.0
HELLO = b"VERSION\t1\t0\nCPID\t4242\n"
USER = "typed@example.org"
PASSWORD = "pässwörd&key=x"
FAIL = b"FAIL\t1\tuser=typed@example.org\treason=Invalid user name or password\n"


def plain(request_id: int, username: str, password: str, *, secured: bool = True) -> bytes:
    response = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    flag = "\tsecured" if secured else ""
    return (
        f"AUTH\t{request_id}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.7"
        f"{flag}\tresp={response}\n"
    ).encode()


def sasl_endpoint(api: FakeApi, **extra: Any) -> dict[str, Any]:
    target = extra.pop("target", f"{api.url}/auth")
    return endpoint_config("sasl", target, **{"failure-delay": 0, **extra})


class SaslClient:
    """One connection as smtpd opens it: the handshake read, VERSION and CPID sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), WAIT)

    async def end(self) -> tuple[bytes, str]:
        """What is left until the server closes, and how: ``eof`` or ``reset``."""
        try:
            return await asyncio.wait_for(self.reader.read(), WAIT), "eof"
        except ConnectionResetError:
            return b"", "reset"


@asynccontextmanager
async def sasl_connection(address: tuple[str, int]) -> AsyncIterator[SaslClient]:
    reader, writer = await asyncio.open_connection(*address)
    client = SaslClient(reader, writer)
    try:
        handshake = await asyncio.wait_for(reader.readuntil(b"DONE\n"), WAIT)
        assert handshake.startswith(b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\n")
        await client.send(HELLO)
        yield client
    finally:
        writer.close()


async def one_login(address: tuple[str, int], login: bytes) -> tuple[bytes, str]:
    """The reply line to one AUTH, or ``(b"", "reset")``."""
    async with sasl_connection(address) as client:
        await client.send(login)
        try:
            line = await client.line()
        except ConnectionResetError:
            return b"", "reset"
        return (line, "open") if line else await client.end()


# --- the REST contract -----------------------------------------------------------------------


def respond(status: int, body: bytes = b"", content_type: str | None = None) -> Any:
    async def handler(_: web.Request) -> web.StreamResponse:
        response = web.Response(status=status, body=body)
        if content_type is not None:
            response.content_type = content_type
        return response

    return handler


OK_TYPED = b"OK\t1\tuser=typed@example.org\n"
RESET = (b"", "reset")
CONTRACT = [
    ("200-empty", respond(200), (OK_TYPED, "open")),
    ("200-json-without-user", respond(200, b'{"id": 7}', "application/json"), (OK_TYPED, "open")),
    (
        "200-json-user",
        respond(200, b'{"user": "canonical@example.org"}', "application/json"),
        (b"OK\t1\tuser=canonical@example.org\n", "open"),
    ),
    (
        "200-json-user-utf8",
        respond(200, '{"user": "jörg@example.org"}'.encode(), "application/json"),
        ("OK\t1\tuser=jörg@example.org\n".encode(), "open"),
    ),
    ("200-user-with-tab", respond(200, b'{"user": "a\\tb"}', "application/json"), RESET),
    ("200-user-with-lf", respond(200, b'{"user": "a\\nuser=x"}', "application/json"), RESET),
    ("200-user-empty", respond(200, b'{"user": ""}', "application/json"), RESET),
    ("200-user-null", respond(200, b'{"user": null}', "application/json"), RESET),
    ("200-user-number", respond(200, b'{"user": 7}', "application/json"), RESET),
    ("200-user-surrogate", respond(200, b'{"user": "\\udc80"}', "application/json"), RESET),
    ("200-json-array", respond(200, b'["typed@example.org"]', "application/json"), RESET),
    ("200-bad-json", respond(200, b'{"user": ', "application/json"), RESET),
    ("200-text", respond(200, b"OK", "text/plain"), RESET),
    ("200-html", respond(200, b"<html>ok</html>", "text/html"), RESET),
    ("401", respond(401), (FAIL, "open")),
    ("403", respond(403, b"forbidden"), (FAIL, "open")),
    ("404", respond(404, b"<html>no</html>", "text/html"), (FAIL, "open")),
    ("400", respond(400), RESET),
    ("429", respond(429), RESET),
    ("302", respond(302), RESET),
    ("500", respond(500), RESET),
    ("503", respond(503), RESET),
]


@pytest.mark.parametrize(
    ("handler", "expected"),
    [(handler, expected) for _, handler, expected in CONTRACT],
    ids=[name for name, _, _ in CONTRACT],
)
async def test_rest_contract(api: FakeApi, handler: Any, expected: tuple[bytes, str]) -> None:
    api.handler = handler
    async with running_connector(sasl_endpoint(api)) as daemon:
        assert await one_login(endpoint_address(daemon), plain(1, USER, PASSWORD)) == expected
    assert len(api.seen) == 1


async def test_slow_and_unreachable_apis_reset(api: FakeApi) -> None:
    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response()

    api.handler = slow
    async with running_connector(
        sasl_endpoint(api, **{"request-timeout": 300}),
        sasl_endpoint(api, name="down", target="http://127.0.0.1:1/auth"),
    ) as daemon:
        started = time.monotonic()
        assert await one_login(endpoint_address(daemon, 0), plain(1, USER, PASSWORD)) == RESET
        assert time.monotonic() - started < 1.5
        assert await one_login(endpoint_address(daemon, 1), plain(1, USER, PASSWORD)) == RESET


@pytest.mark.parametrize("request_format", ["form", "json"])
async def test_the_api_gets_the_login_and_the_session(api: FakeApi, request_format: str) -> None:
    api.handler = respond(200)
    endpoint = sasl_endpoint(api, **{"request-format": request_format})
    async with running_connector(endpoint) as daemon:
        reply = await one_login(endpoint_address(daemon), plain(1, USER, PASSWORD))
    assert reply == (OK_TYPED, "open")
    (seen,) = api.seen
    assert (seen.method, seen.path) == ("POST", "/auth")
    assert seen.headers["X-Auth-Token"] == "s3cret-token"
    assert seen.headers["X-Request-Id"]
    fields = {
        "username": USER,
        "password": PASSWORD,
        "mechanism": "PLAIN",
        "service": "smtp",
        "remote_ip": "192.0.2.7",
        "local_ip": "127.0.0.1",
        "secured": "yes",
    }
    if request_format == "json":
        assert seen.headers["Content-Type"] == "application/json"
        assert json.loads(seen.body) == fields
    else:
        assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
        pairs = parse_qsl(seen.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        assert pairs == list(fields.items())


@pytest.mark.parametrize("engine", ["native", "reqwest"])
async def test_both_http_engines_post_a_body_of_its_content_type(api: FakeApi, engine: str) -> None:
    api.handler = respond(200, b"{}", "application/json")
    target = Target.parse(f"{api.url}/auth")
    settings = ClientSettings(
        user_agent="test", accept_json=True, timeout=WAIT, max_body_bytes=1024
    )
    client = NativeClient(target, settings) if engine == "native" else ReqwestClient(settings)
    try:
        response = await client.post(
            target, b'{"a": 1}', Headers.of(()), "rid-9", None, content_type="application/json"
        )
    finally:
        await client.close()
    assert response.status == 200
    (seen,) = api.seen
    assert (seen.body, seen.headers["Content-Type"]) == (b'{"a": 1}', "application/json")
    assert seen.headers["X-Request-Id"] == "rid-9"


# --- the service: cache, no coalescing, the failure delay ------------------------------------


def by_password(api: FakeApi, delay: float = 0.0) -> None:
    """PASSWORD is right, anything else wrong; each answer after ``delay``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl((await request.read()).decode("ascii")))
        await asyncio.sleep(delay)
        if form["password"] == PASSWORD:
            return web.json_response({"user": form["username"].upper()})
        return web.Response(status=401)

    api.handler = handler


async def test_a_success_is_cached_for_those_credentials_only(api: FakeApi) -> None:
    by_password(api)
    ok = b"OK\t1\tuser=TYPED@EXAMPLE.ORG\n"
    async with running_connector(sasl_endpoint(api, **{"cache-ttl": 60_000})) as daemon:
        address = endpoint_address(daemon)
        assert await one_login(address, plain(1, USER, PASSWORD)) == (ok, "open")
        assert await one_login(address, plain(1, USER, PASSWORD)) == (ok, "open")
        assert len(api.seen) == 1  # the second from the cache
        assert await one_login(address, plain(1, USER, "wrong")) == (FAIL, "open")
        assert await one_login(address, plain(1, USER, "wrong")) == (FAIL, "open")
        assert len(api.seen) == 3  # a refusal is never cached
        assert await one_login(address, plain(1, "other@example.org", PASSWORD))
        assert len(api.seen) == 4
        assert daemon.endpoints[0].service.stats.cache_hits == 1


async def test_without_cache_ttl_every_login_asks(api: FakeApi) -> None:
    by_password(api)
    async with running_connector(sasl_endpoint(api)) as daemon:
        for _ in range(2):
            await one_login(endpoint_address(daemon), plain(1, USER, PASSWORD))
    assert len(api.seen) == 2


async def test_concurrent_logins_of_one_user_are_never_coalesced(api: FakeApi) -> None:
    by_password(api, delay=0.3)
    async with running_connector(sasl_endpoint(api)) as daemon:
        address = endpoint_address(daemon)
        replies = await asyncio.gather(
            one_login(address, plain(1, USER, PASSWORD)),
            one_login(address, plain(1, USER, "wrong")),
            one_login(address, plain(1, USER, PASSWORD)),
        )
    assert [reply[0][:2] for reply in replies] == [b"OK", b"FA", b"OK"]
    assert len(api.seen) == 3


async def test_a_refusal_waits_for_the_failure_delay_without_holding_other_ids(
    api: FakeApi,
) -> None:
    by_password(api)
    async with (
        running_connector(sasl_endpoint(api, **{"failure-delay": 800})) as daemon,
        sasl_connection(endpoint_address(daemon)) as client,
    ):
        started = time.monotonic()
        await client.send(plain(1, USER, "wrong") + plain(2, USER, PASSWORD))
        first = await client.line()
        first_at = time.monotonic() - started
        second = await client.line()
        second_at = time.monotonic() - started
    assert first == b"OK\t2\tuser=TYPED@EXAMPLE.ORG\n"
    assert first_at < 0.5
    assert second == FAIL
    assert second_at >= 0.8


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_logins_as_ok_failed_and_temporary(api: FakeApi) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        password = dict(parse_qsl((await request.read()).decode("ascii")))["password"]
        return web.Response(status={"ok": 200, "no": 401}.get(password, 503))

    api.handler = handler
    async with running_connector(sasl_endpoint(api)) as daemon:
        address = endpoint_address(daemon)
        for password in ("ok", "ok", "no", "down"):
            await one_login(address, plain(1, USER, password))
        await one_login(address, plain(1, USER, "ok", secured=False))  # refused, no API call
        families = list(ConnectorCollector(daemon).collect())
    (requests,) = [f for f in families if f.name == "postfix_rest_api_connector_requests"]
    counts = {
        sample.labels["outcome"]: sample.value
        for sample in requests.samples
        if sample.name.endswith("_total")
    }
    assert counts == {"ok": 2, "failed": 2, "temporary": 1}
    assert all(sample.labels["mode"] == "sasl" for sample in requests.samples)


# --- config ----------------------------------------------------------------------------------


def problems(**extra: Any) -> list[str]:
    try:
        parse_config({"endpoints": [endpoint_config(**extra)]})
    except ConfigError as error:
        return error.problems
    return []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"mode": "sasl", "request-timeout": 8001}, "request-timeout: at most 8000 ms"),
        ({"mode": "sasl", "failure-delay": 8001}, "failure-delay: Input should be less"),
        ({"mode": "sasl", "failure-delay": -1}, "failure-delay: Input should be greater"),
        ({"mode": "sasl", "request-format": "xml"}, "request-format: Input should be 'form'"),
        ({"mode": "sasl", "allow-plaintext": "yes"}, "allow-plaintext: Input should be a valid"),
        ({"mode": "sasl", "failure-action": "REJECT"}, "failure-action: only applies to"),
        ({"mode": "sasl", "negative-cache-ttl": 5}, "negative-cache-ttl: only applies to"),
        ({"mode": "sasl", "stale-if-error": 5}, "stale-if-error: only applies to"),
        ({"mode": "policy", "failure-delay": 5}, "failure-delay: only applies to mode 'sasl'"),
        ({"mode": "tcp-lookup", "allow-plaintext": True}, "allow-plaintext: only applies to"),
        ({"mode": "policy", "request-format": "json"}, "request-format: only applies to"),
        (
            {"mode": "policy", "cache-ttl": 5},
            "cache-ttl: only applies to the lookup modes and mode 'sasl'",
        ),
    ],
    ids=lambda value: "-".join(map(str, value.values())) if isinstance(value, dict) else "",
)
def test_config_rules(extra: dict[str, Any], expected: str) -> None:
    mode = extra.pop("mode")
    found = problems(mode=mode, target="http://127.0.0.1:1/", **extra)
    assert len(found) == 1, found
    assert expected in found[0], found


def test_sasl_defaults_and_its_keys() -> None:
    config = parse_config({"endpoints": [endpoint_config("sasl", "http://127.0.0.1:1/")]})
    endpoint = config.endpoints[0]
    assert (endpoint.failure_delay, endpoint.allow_plaintext, endpoint.request_format) == (
        2000,
        False,
        "form",
    )
    assert endpoint.effective_retries == 0
    keys = {"failure-delay": 0, "allow-plaintext": True, "request-format": "json"}
    extra = {**keys, "cache-ttl": 5, "cache-max-entries": 9, "request-timeout": 8000}
    assert problems(mode="sasl", target="http://127.0.0.1:1/", **extra) == []


async def test_lines_longer_than_the_protocols_limit_reset(api: FakeApi) -> None:
    async with (
        running_connector(sasl_endpoint(api)) as daemon,
        sasl_connection(endpoint_address(daemon)) as client,
    ):
        await client.send(b"AUTH\t1\tPLAIN\t" + b"A" * MAX_LINE + b"\n")
        assert await client.end() == RESET


# --- query and check-config, as the administrator runs them ----------------------------------


async def run(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "postfix_rest_api_connector",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write_config(tmp_path: Path, *endpoints: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"endpoints": list(endpoints)}))
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        (PASSWORD, 0, "TYPED@EXAMPLE.ORG\n", "b'OK\\t1\\tuser=TYPED@EXAMPLE.ORG\\n'"),
        ("wrong", 1, "", "b'FAIL\\t1\\tuser=typed@example.org\\treason=Invalid user name"),
        ("", 1, "", "b'FAIL\\t1\\treason=Invalid password\\n'"),
    ],
    ids=["ok", "refused", "empty-password"],
)
async def test_query_tries_a_login_as_postfix_would(
    api: FakeApi, tmp_path: Path, case: tuple[str, int, str, str]
) -> None:
    password, status, stdout, postfix_gets = case
    by_password(api)
    secret_file = tmp_path / "password"
    secret_file.write_text(password + "\n", encoding="utf-8")
    config = write_config(tmp_path, sasl_endpoint(api))
    got = await run("query", config, "test-sasl", USER, "--password-file", str(secret_file))
    assert got[:2] == (status, stdout), got
    assert f"postfix gets: {postfix_gets}" in got[2]
    assert PASSWORD not in got[1] + got[2]
    if password:
        assert dict(parse_qsl(api.seen[0].body.decode()))["secured"] == "yes"


async def test_query_reads_the_password_from_stdin_and_reports_an_outage(
    api: FakeApi, tmp_path: Path
) -> None:
    api.handler = respond(503)
    config = write_config(tmp_path, sasl_endpoint(api))
    got = await run(
        "query", config, "test-sasl", USER, "--password-file", "-", stdin=PASSWORD.encode()
    )
    assert got[0] == 75, got
    assert "postfix gets: its connection reset (smtpd answers 454 4.7.0)" in got[2]
    assert dict(parse_qsl(api.seen[0].body.decode()))["password"] == PASSWORD


async def test_query_needs_a_password_file_only_for_sasl(api: FakeApi, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, sasl_endpoint(api), endpoint_config("tcp-lookup", api.url, **{"bind-port": 0})
    )
    status, _, stderr = await run("query", config, "test-sasl", USER)
    assert (status, stderr.strip()) == (2, "a sasl endpoint needs --password-file FILE")
    status, _, stderr = await run(
        "query", config, "test-tcp-lookup", "k", "--password-file", "/dev/null"
    )
    assert (status, stderr.strip()) == (2, "--password-file only applies to a sasl endpoint")
    assert api.seen == []


async def test_check_config_describes_a_sasl_endpoint(api: FakeApi, tmp_path: Path) -> None:
    config = write_config(tmp_path, sasl_endpoint(api, **{"cache-ttl": 30000}))
    status, stdout, stderr = await run("check-config", config)
    assert status == 0, stderr
    assert (
        "test-sasl: sasl on 127.0.0.1:0 -> "
        + f"{api.url}/auth (auth: x-auth-token inline, timeout 1000 ms,"
        " PLAIN and LOGIN on TLS sessions only, refusals after 0 ms, form body,"
        " successes cached 30000 ms)"
    ) in stdout


# --- the password in a DEBUG log of a whole run ----------------------------------------------


async def test_no_password_in_a_debug_log_of_every_kind_of_login(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl((await request.read()).decode("ascii")))
        if form["username"] == "slow@example.org":
            await asyncio.sleep(1)
        status = {"ok@example.org": 200, "no@example.org": 401}.get(form["username"], 500)
        return web.Response(status=status)

    api.handler = handler
    endpoint = sasl_endpoint(api, **{"request-timeout": 300, "cache-ttl": 60_000})
    connector = await spawn("--log-level", "DEBUG", write_config(tmp_path, endpoint))
    address = ("127.0.0.1", await connector.port())
    for username in ("ok@example.org", "ok@example.org", "no@example.org", "x@example.org"):
        await one_login(address, plain(1, username, PASSWORD))
    await one_login(address, plain(1, "slow@example.org", PASSWORD))
    await one_login(address, plain(1, "ok@example.org", PASSWORD, secured=False))
    await one_login(address, plain(1, "ok@example.org", PASSWORD)[:-1] + b"!\n")  # bad base64
    await one_login(address, b"AUTH\tx\tPLAIN\tresp=" + plain(1, USER, PASSWORD)[-40:])
    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr

    log = connector.stderr
    assert "DEBUG" in log
    assert "LoginRequest(" in log
    assert "username='ok@example.org'" in log
    assert len(api.seen) == 4  # ok (then cached), no, x, slow
    for secret in (PASSWORD, PASSWORD.encode().hex(), json.dumps(PASSWORD)):
        assert secret not in log
    for username in ("ok@example.org", "no@example.org"):
        assert base64.b64encode(f"\0{username}\0{PASSWORD}".encode()).decode() not in log
