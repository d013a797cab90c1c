"""HTTPS to the API: a private CA made with the openssl CLI, a real TLS API, a real connector.

A certificate the connector cannot trust must end as an error reply to Postfix, never "not found".
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector, write_config
from oauth2_server import CLIENT_ID, CLIENT_SECRET, oauth2_servers
from postfix_rest_api_connector.config import load_config
from postfix_rest_api_connector.runtime.daemon import Daemon
from tls_serving import serving

DEADLINE = 10.0
REQUEST_TIMEOUT = 1000
"""Milliseconds, as in the config; a failed handshake must not even take this long."""
MARGIN = 2.0


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server: KeyPair
    """Signed by the CA for IP:127.0.0.1."""
    wrong_name: KeyPair
    """Signed by the same CA, but only for DNS:wrong.example."""


def _openssl(*args: str, cwd: Path) -> None:
    executable = shutil.which("openssl")
    if executable is None:
        pytest.fail("openssl CLI not found: install Debian's openssl package")
    subprocess.run([executable, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _issue(directory: Path, name: str, subject_alt_name: str, usage: str = "serverAuth") -> KeyPair:
    """A P-256 key and a certificate (a server's, or ``usage`` ``clientAuth``) signed by
    ``ca.key`` in ``directory``."""
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName = {subject_alt_name}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        f"extendedKeyUsage = {usage}\n",
        encoding="utf-8",
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", extensions.name,
        "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip
    return KeyPair(directory / f"{name}.crt", directory / f"{name}.key")


def _make_ca(directory: Path) -> Path:
    """A self-signed CA, ``ca.crt`` and ``ca.key`` in ``directory``."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-sha256", "-subj", "/CN=Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        server=_issue(directory, "server", "IP:127.0.0.1"),
        wrong_name=_issue(directory, "wrong", "DNS:wrong.example"),
    )


@asynccontextmanager
async def tls_api(pair: KeyPair, client_ca: Path | None = None) -> AsyncIterator[FakeApi]:
    """conftest's fake API, served over HTTPS on 127.0.0.1 port 0 with ``pair``; with
    ``client_ca``, only to clients with a certificate that CA signed (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake._dispatch)
    async with serving(app, context) as url:
        fake.url = url
        yield fake


async def ask(mode: str, address: tuple[str, int], key: str) -> bytes:
    """One lookup the way Postfix sends it; returns the whole reply."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        if mode == "tcp-lookup":
            writer.write(f"get {key}\n".encode())
            return await asyncio.wait_for(reader.readline(), DEADLINE)
        payload = f"aliases {key}".encode()
        writer.write(b"%d:%s," % (len(payload), payload))
        length = await asyncio.wait_for(reader.readuntil(b":"), DEADLINE)
        rest = await asyncio.wait_for(reader.readexactly(int(length[:-1]) + 1), DEADLINE)
        return length + rest
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


def reply_code(mode: str, reply: bytes) -> bytes:
    """``200``/``400``/``500`` for tcp_table, ``OK``/``TEMP``/``NOTFOUND``... for socketmap."""
    if mode == "tcp-lookup":
        return reply.split(b" ", 1)[0]
    return reply.partition(b":")[2].split(b" ", 1)[0].rstrip(b",")


MODES = [
    pytest.param("tcp-lookup", id="tcp"),
    pytest.param("socketmap-lookup", id="socketmap"),
]
FOUND = {"tcp-lookup": b"200 value\n", "socketmap-lookup": b"8:OK value,"}
ERROR_CODE = {"tcp-lookup": b"400", "socketmap-lookup": b"TEMP"}


@pytest.mark.parametrize("mode", MODES)
async def test_trusted_ca_answers(pki: Pki, mode: str) -> None:
    async with tls_api(pki.server) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config(mode, f"{api.url}/lookup", **{"tls-ca-file": str(pki.ca_cert)})
        async with running_connector(endpoint) as daemon:
            reply = await ask(mode, endpoint_address(daemon), "alice@example.com")
    assert reply == FOUND[mode]
    assert [seen.query["key"] for seen in api.seen] == ["alice@example.com"]
    assert api.seen[0].headers["X-Auth-Token"] == "s3cret-token"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["untrusted-ca", "wrong-name"])
async def test_untrusted_certificate_is_an_error_not_a_miss(pki: Pki, mode: str, case: str) -> None:
    pair, ca = (pki.server, None) if case == "untrusted-ca" else (pki.wrong_name, pki.ca_cert)
    async with tls_api(pair) as api:
        api.answer_json(["value"])
        extra: dict[str, object] = {"request-timeout": REQUEST_TIMEOUT}
        if ca is not None:
            extra["tls-ca-file"] = str(ca)
        async with running_connector(endpoint_config(mode, f"{api.url}/lookup", **extra)) as daemon:
            started = time.monotonic()
            reply = await ask(mode, endpoint_address(daemon), "alice@example.com")
            elapsed = time.monotonic() - started
    assert reply_code(mode, reply) == ERROR_CODE[mode], reply
    assert elapsed < REQUEST_TIMEOUT / 1000 + MARGIN
    assert api.seen == []


async def test_the_system_trust_store_is_used(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tls-ca-file, the system's CAs decide; SSL_CERT_FILE stands in for them here."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    async with tls_api(pki.server) as api:
        api.answer_json(["value"])
        async with running_connector(endpoint_config("tcp-lookup", f"{api.url}/lookup")) as daemon:
            reply = await ask("tcp-lookup", endpoint_address(daemon), "alice@example.com")
    assert reply == FOUND["tcp-lookup"]


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the tests serve: trusting only it, every handshake fails."""
    return _make_ca(tmp_path_factory.mktemp("other-ca"))


async def test_a_ca_file_rotated_in_place_is_used_after_a_reload(
    pki: Pki, other_ca: Path, tmp_path: Path
) -> None:
    """The same path with new certificates is a changed endpoint (its HTTP client is rebuilt);
    the same certificates again leave it untouched."""
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(other_ca, ca_file)
    async with tls_api(pki.server) as api:
        api.answer_json(["value"])
        endpoint = endpoint_config(
            "tcp-lookup", f"{api.url}/lookup", **{"tls-ca-file": str(ca_file)}
        )
        path = write_config(tmp_path, {"endpoints": [endpoint]})
        daemon = Daemon(load_config(path), path)
        await daemon.start()
        try:
            address = endpoint_address(daemon)
            assert reply_code("tcp-lookup", await ask("tcp-lookup", address, "k")) == b"400"
            shutil.copyfile(pki.ca_cert, ca_file)  # the same file, new contents
            assert await daemon.reload()
            assert await ask("tcp-lookup", address, "k") == FOUND["tcp-lookup"]
            rebuilt = daemon.endpoints[0]
            assert await daemon.reload()
            assert daemon.endpoints[0] is rebuilt
        finally:
            await daemon.stop()


@pytest.mark.parametrize("changed", [False, True], ids=["same-settings", "changed-settings"])
async def test_a_ca_file_gone_after_validation_fails_the_reload_in_one_line(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, changed: bool
) -> None:
    """The reload re-reads the CA file after validating the config; if it is gone by then, the
    reload fails with the endpoint and the file named, not as an unexpected error."""
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(pki.ca_cert, ca_file)
    endpoint = endpoint_config("tcp-lookup", "https://127.0.0.1:1", **{"tls-ca-file": str(ca_file)})
    path = write_config(tmp_path, {"endpoints": [endpoint]})
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        running = daemon.endpoints[0]
        if changed:  # then it is a new endpoint that reads the file
            write_config(tmp_path, {"endpoints": [{**endpoint, "request-timeout": 2000}]})
        validated = load_config(path)  # what reload() has done when the file disappears
        ca_file.unlink()
        with caplog.at_level(logging.INFO):
            assert not await daemon._apply(validated)
        assert daemon.endpoints == [running]
    finally:
        await daemon.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"reload: endpoint test-tcp-lookup: tls-ca-file {ca_file}: cannot read: No such file or"
        " directory; still running the previous config"
    ]
    assert not any(r.exc_info for r in caplog.records)
    assert "s3cret-token" not in caplog.text


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_an_https_token_endpoint_is_checked_against_the_ca_file(
    pki: Pki, tmp_path: Path, trusted: bool
) -> None:
    """The token client trusts what the endpoint's client trusts (``tls-ca-file``): a token
    endpoint whose certificate does not match is the temporary error, never "not found"."""
    pair = pki.server if trusted else pki.wrong_name
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    secret = tmp_path / "secret"
    secret.write_text(CLIENT_SECRET, encoding="utf-8")
    async with oauth2_servers(ssl_context=context) as servers:
        endpoint = endpoint_config(
            "tcp-lookup",
            servers.api_url,
            **{"tls-ca-file": str(pki.ca_cert)},
            oauth2={
                "token-url": servers.token_url,
                "client-id": CLIENT_ID,
                "client-secret-file": str(secret),
            },
        )
        del endpoint["auth-token"]
        async with running_connector(endpoint) as daemon:
            reply = await ask("tcp-lookup", endpoint_address(daemon), "k")
    if trusted:
        assert reply == b"200 value-of-k\n"
        assert len(servers.grants) == 1
    else:
        assert reply.startswith(b"400 OAuth2%20token%20endpoint%20failed"), reply
        assert servers.grants == []
