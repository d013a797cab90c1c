"""Authenticating to the API: ``headers``, ``basic-auth`` and a client certificate (mTLS),
through both HTTP engines, against real servers on loopback.

An API that refuses the connector must end as the protocol's temporary error, never "not found";
and no secret, password or key may appear in a DEBUG log of any of it.
"""

from __future__ import annotations

import base64
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector, write_config
from postfix_rest_api_connector.config import load_config
from postfix_rest_api_connector.runtime.daemon import Daemon
from test_commands import run
from test_tls import ERROR_CODE, FOUND, MODES, KeyPair, _issue, _make_ca, ask, reply_code, tls_api

INLINE = "inline-s3cret-value"
FROM_FILE = "file-s3cret-value"
FROM_ENV = "env-s3cret-value"
PASSWORD = "basic-pa55word-ü"
SECRETS = [INLINE, FROM_FILE, FROM_ENV, PASSWORD, "s3cret-token"]


@dataclass(frozen=True)
class MtlsPki:
    ca_cert: Path
    server: KeyPair
    client: KeyPair
    """Signed by ``ca_cert``, which the API trusts for clients."""
    stranger: KeyPair
    """A client certificate from another CA."""


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> MtlsPki:
    directory = tmp_path_factory.mktemp("mtls")
    elsewhere = tmp_path_factory.mktemp("other-client-ca")
    _make_ca(elsewhere)
    return MtlsPki(
        ca_cert=_make_ca(directory),
        server=_issue(directory, "server", "IP:127.0.0.1"),
        client=_issue(directory, "client", "DNS:connector.example", "clientAuth"),
        stranger=_issue(elsewhere, "stranger", "DNS:connector.example", "clientAuth"),
    )


def _key_material(pair: KeyPair) -> list[str]:
    """The base64 lines of a private key: none may be logged."""
    lines = pair.key.read_text(encoding="ascii").splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every test here runs with a DEBUG log, checked for secrets at its end."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
    assert any(record.levelno == logging.DEBUG for record in records)
    text = "\n".join(record.getMessage() for record in records)
    for secret in [*SECRETS, base64.b64encode(f"mail:{PASSWORD}".encode()).decode()]:
        assert secret not in text


def _auth_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Headers of all three sources and basic authentication."""
    value_file = tmp_path / "api-key"
    value_file.write_text(FROM_FILE + "\n", encoding="utf-8")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    monkeypatch.setenv("TEST_API_TENANT", FROM_ENV)
    return {
        "headers": {
            "X-Inline": INLINE,
            "X-Api-Key": {"file": str(value_file)},
            "X-Tenant": {"env": "TEST_API_TENANT"},
        },
        "basic-auth": {"username": "mail", "password-file": str(password_file)},
    }


def _assert_authenticated(api: FakeApi) -> None:
    assert api.seen, "the API got no request"
    for seen in api.seen:
        assert seen.headers.getall("X-Inline") == [INLINE]
        assert seen.headers.getall("X-Api-Key") == [FROM_FILE]
        assert seen.headers.getall("X-Tenant") == [FROM_ENV]
        assert seen.headers.getall("X-Auth-Token") == ["s3cret-token"]
        expected = base64.b64encode(f"mail:{PASSWORD}".encode()).decode()
        assert seen.headers.getall("Authorization") == [f"Basic {expected}"]


@pytest.mark.parametrize("mode", MODES)
async def test_headers_and_basic_auth_reach_a_plain_http_api(
    api: FakeApi,
    mode: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_log: pytest.LogCaptureFixture,
) -> None:
    """``http://``: the connector's own HTTP client."""
    api.answer_json(["value"])
    endpoint = endpoint_config(mode, f"{api.url}/lookup", **_auth_extra(tmp_path, monkeypatch))
    async with running_connector(endpoint) as daemon:
        assert await ask(mode, endpoint_address(daemon), "alice@example.com") == FOUND[mode]
    _assert_authenticated(api)


@pytest.mark.parametrize("mode", MODES)
async def test_headers_and_basic_auth_reach_an_https_api(
    mtls: MtlsPki,
    mode: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_log: pytest.LogCaptureFixture,
) -> None:
    """``https://``: pyreqwest."""
    extra = {**_auth_extra(tmp_path, monkeypatch), "tls-ca-file": str(mtls.ca_cert)}
    async with tls_api(mtls.server) as api:
        api.answer_json(["value"])
        async with running_connector(endpoint_config(mode, f"{api.url}/lookup", **extra)) as daemon:
            assert await ask(mode, endpoint_address(daemon), "alice@example.com") == FOUND[mode]
    _assert_authenticated(api)


def _mtls_extra(mtls: MtlsPki, pair: KeyPair | None, **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"tls-ca-file": str(mtls.ca_cert), **more}
    if pair is not None:
        extra |= {"tls-client-cert": str(pair.cert), "tls-client-key": str(pair.key)}
    return extra


@pytest.mark.parametrize("mode", MODES)
async def test_an_api_that_requires_a_client_certificate_answers_with_it(
    mtls: MtlsPki, mode: str, debug_log: pytest.LogCaptureFixture
) -> None:
    async with tls_api(mtls.server, client_ca=mtls.ca_cert) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config(mode, f"{api.url}/lookup", **_mtls_extra(mtls, mtls.client))
        async with running_connector(endpoint) as daemon:
            assert await ask(mode, endpoint_address(daemon), "alice@example.com") == FOUND[mode]
    assert [seen.query["key"] for seen in api.seen] == ["alice@example.com"]
    for line in _key_material(mtls.client):
        assert line not in debug_log.text


async def test_the_key_may_sit_in_the_certificate_file(
    mtls: MtlsPki, tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    both = tmp_path / "client.pem"
    both.write_bytes(mtls.client.cert.read_bytes() + mtls.client.key.read_bytes())
    extra = {"tls-ca-file": str(mtls.ca_cert), "tls-client-cert": str(both)}
    async with tls_api(mtls.server, client_ca=mtls.ca_cert) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config("tcp-lookup", f"{api.url}/lookup", **extra)
        async with running_connector(endpoint) as daemon:
            reply = await ask("tcp-lookup", endpoint_address(daemon), "k")
    assert reply == FOUND["tcp-lookup"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["no-certificate", "other-ca"])
async def test_a_refused_client_certificate_is_an_error_not_a_miss(
    mtls: MtlsPki, mode: str, case: str, debug_log: pytest.LogCaptureFixture
) -> None:
    pair = mtls.stranger if case == "other-ca" else None
    async with tls_api(mtls.server, client_ca=mtls.ca_cert) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config(mode, f"{api.url}/lookup", **_mtls_extra(mtls, pair))
        async with running_connector(endpoint) as daemon:
            reply = await ask(mode, endpoint_address(daemon), "alice@example.com")
    assert reply_code(mode, reply) == ERROR_CODE[mode], reply
    assert api.seen == []
    for line in _key_material(mtls.stranger):
        assert line not in debug_log.text


async def _reloaded(daemon: Daemon) -> None:
    before = daemon.endpoints[0]
    assert await daemon.reload()
    assert daemon.endpoints[0] is not before, "a changed file must rebuild the endpoint"


async def test_a_reload_picks_up_a_changed_header_file(
    api: FakeApi, tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    """The same path with a new value is a changed endpoint; the same value again is not."""
    value_file = tmp_path / "api-key"
    value_file.write_text(INLINE, encoding="utf-8")
    api.answer_json(["value"])
    endpoint = endpoint_config(
        "tcp-lookup", f"{api.url}/lookup", headers={"X-Api-Key": {"file": str(value_file)}}
    )
    path = write_config(tmp_path, {"endpoints": [endpoint]})
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        address = endpoint_address(daemon)
        assert await ask("tcp-lookup", address, "k") == FOUND["tcp-lookup"]
        value_file.write_text(FROM_FILE + "\n", encoding="utf-8")
        await _reloaded(daemon)
        assert await ask("tcp-lookup", address, "k") == FOUND["tcp-lookup"]
        kept = daemon.endpoints[0]
        assert await daemon.reload()
        assert daemon.endpoints[0] is kept
    finally:
        await daemon.stop()
    assert [seen.headers["X-Api-Key"] for seen in api.seen] == [INLINE, FROM_FILE]


async def test_a_header_file_made_invalid_fails_the_reload_without_showing_it(
    api: FakeApi, tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    """A value that would inject a header is refused at reload too, and the running endpoint
    keeps its old value."""
    value_file = tmp_path / "api-key"
    value_file.write_text(INLINE, encoding="utf-8")
    api.answer_json(["value"])
    endpoint = endpoint_config(
        "tcp-lookup", f"{api.url}/lookup", headers={"X-Api-Key": {"file": str(value_file)}}
    )
    path = write_config(tmp_path, {"endpoints": [endpoint]})
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        running = daemon.endpoints[0]
        value_file.write_text(f"{FROM_FILE}\r\nX-Evil: 1\n", encoding="utf-8")
        assert not await daemon.reload()
        assert daemon.endpoints[0] is running
        assert await ask("tcp-lookup", endpoint_address(daemon), "k") == FOUND["tcp-lookup"]
    finally:
        await daemon.stop()
    assert [seen.headers["X-Api-Key"] for seen in api.seen] == [INLINE]
    assert "X-Evil" not in api.seen[0].headers
    assert (
        "endpoints[0].headers.X-Api-Key.file: must not contain control characters" in debug_log.text
    )


async def test_a_reload_picks_up_a_rotated_client_certificate(
    mtls: MtlsPki, tmp_path: Path, debug_log: pytest.LogCaptureFixture
) -> None:
    """Certificate and key replaced in place (the stranger's by the trusted one): the reload
    compares their contents, rebuilds the endpoint, and the API accepts it."""
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    shutil.copyfile(mtls.stranger.cert, cert)
    shutil.copyfile(mtls.stranger.key, key)
    async with tls_api(mtls.server, client_ca=mtls.ca_cert) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config(
            "tcp-lookup", f"{api.url}/lookup", **_mtls_extra(mtls, KeyPair(cert, key))
        )
        path = write_config(tmp_path, {"endpoints": [endpoint]})
        daemon = Daemon(load_config(path), path)
        await daemon.start()
        try:
            address = endpoint_address(daemon)
            assert reply_code("tcp-lookup", await ask("tcp-lookup", address, "k")) == b"400"
            shutil.copyfile(mtls.client.cert, cert)
            shutil.copyfile(mtls.client.key, key)
            await _reloaded(daemon)
            assert await ask("tcp-lookup", address, "k") == FOUND["tcp-lookup"]
        finally:
            await daemon.stop()
    assert len(api.seen) == 1
    for pair in (mtls.client, mtls.stranger):
        for line in _key_material(pair):
            assert line not in debug_log.text


async def test_query_asks_with_the_headers_and_the_client_certificate(
    mtls: MtlsPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``query`` (a real process) authenticates as the daemon does, and prints no secret."""
    extra = _mtls_extra(mtls, mtls.client, **_auth_extra(tmp_path, monkeypatch))
    async with tls_api(mtls.server, client_ca=mtls.ca_cert) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config("tcp-lookup", api.url, **extra)
        config = write_config(tmp_path, {"endpoints": [endpoint]})
        status, stdout, stderr = await run("query", str(config), "test-tcp-lookup", "k")
    assert (status, stdout) == (0, "value\n"), stderr
    _assert_authenticated(api)
    for secret in SECRETS:
        assert secret not in stdout + stderr
