"""SMTP AUTH end to end: a real Postfix smtpd with ``smtpd_sasl_type = dovecot`` asks the running
connector, and Python's smtplib logs in to that smtpd.

Every test runs twice: with the connector on loopback TCP (``smtpd_sasl_path =
inet:127.0.0.1:PORT``) and on a unix socket in smtpd's queue directory (``private/auth``, the
path a chrooted smtpd would use), owned by user postfix. Sessions go over STARTTLS, so that
smtpd marks them ``secured``, unless a test is about plaintext.

Every log record of the connector's loggers, DEBUG included, is checked for the passwords.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import smtplib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from private_postfix import (
    PrivatePostfix,
    SmtpSink,
    free_port,
    make_instance,
    new_short_directory,
    require_postfix,
    running_master,
    serving_sink,
)

from conftest import FakeApi, SeenRequest, endpoint_address, endpoint_config, running_connector

pytestmark = pytest.mark.postfix

SMTP_DEADLINE = 30.0
"""Bounds every smtplib call; smtpd's own wait for the auth server is 10 s."""
USER = "typed@example.org"
PASSWORD = "s3cret passw0rd"
"""ASCII: smtplib sends nothing else."""
WRONG = "wrong-passw0rd"
CANONICAL = "canonical@example.org"
"""The name the API gives the login: Postfix must log and use it, not the typed one."""
TEMPORARY = "4.7.0 Temporary authentication failure"
PLAINTEXT_REFUSED = "Plaintext authentication disallowed without TLS"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with serving_sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for smtpd's STARTTLS (smtpd reads it as root, before it drops
    privileges)."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl CLI not found: install Debian's openssl package")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "2", "-subj", "/CN=mx.test.example"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


@pytest.fixture(autouse=True)
def no_password_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The whole test's connector log at DEBUG: no password, plain or in base64."""
    caplog.set_level(logging.DEBUG, logger="postfix_rest_api_connector")
    yield
    records = [r for phase in ("setup", "call") for r in caplog.get_records(phase)]
    text = "\n".join(record.getMessage() for record in records)
    assert logging.getLogger("postfix_rest_api_connector.service").isEnabledFor(logging.DEBUG)
    for password in (PASSWORD, WRONG):
        assert password not in text
        for form in (f"\0{USER}\0{password}", password):
            assert base64.b64encode(form.encode()).decode() not in text


@dataclass(frozen=True)
class Listener:
    """Where the connector listens, and how smtpd's ``smtpd_sasl_path`` names it."""

    unix: bool

    def endpoint(self, api: FakeApi, instance: PrivatePostfix, **extra: Any) -> dict[str, Any]:
        target = extra.pop("target", f"{api.url}/auth")
        config = endpoint_config("sasl", target, **{"failure-delay": 0, **extra})
        if self.unix:
            del config["bind-address"], config["bind-port"]
            config["bind-path"] = str(instance.queue / "private" / "auth")
            config["socket-owner"] = "postfix"
        return config


@pytest.fixture(params=[False, True], ids=["inet", "unix"])
def listener(request: pytest.FixtureRequest) -> Listener:
    return Listener(request.param)


def sasl_main_cf(sasl_path: str, tls: tuple[Path, Path]) -> str:
    """Only an authenticated client may relay: the loopback client is not in mynetworks."""
    key, cert = tls
    return f"""\
mynetworks = 192.0.2.0/24
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl_path}
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
"""


StartSmtpd = Callable[..., Any]


@pytest.fixture
def start_smtpd(
    smtp_sink: SmtpSink, listener: Listener, tls_files: tuple[Path, Path], api: FakeApi
) -> Callable[..., Any]:
    """``async with start_smtpd(**endpoint_keys) as postfix``: the connector, then a private
    master whose smtpd asks it."""
    require_postfix()

    @asynccontextmanager
    async def start(**extra: Any) -> AsyncIterator[PrivatePostfix]:
        directory = new_short_directory()
        instance = PrivatePostfix(directory, ("127.0.0.1", free_port()))
        try:
            if listener.unix:
                make_instance(
                    directory, instance.address[1], sasl_main_cf("private/auth", tls_files),
                    smtp_sink.address,
                )  # fmt: skip
                async with (
                    running_connector(listener.endpoint(api, instance, **extra)),
                    running_master(instance),
                ):
                    yield instance
                return
            async with running_connector(listener.endpoint(api, instance, **extra)) as daemon:
                host, port = endpoint_address(daemon)
                main_cf = sasl_main_cf(f"inet:{host}:{port}", tls_files)
                make_instance(directory, instance.address[1], main_cf, smtp_sink.address)
                async with running_master(instance):
                    yield instance
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return start


# --- the API ----------------------------------------------------------------------------------


def login_form(seen: SeenRequest) -> dict[str, str]:
    assert seen.method == "POST"
    assert seen.path == "/auth"
    assert seen.headers.get("Content-Type") == "application/x-www-form-urlencoded"
    assert seen.headers.get("X-Auth-Token") == "s3cret-token"
    return dict(parse_qsl(seen.body.decode("ascii"), keep_blank_values=True, strict_parsing=True))


def answer_logins(api: FakeApi, *, status: int = 200, delay: float = 0.0) -> None:
    """Right password: 200 with the canonical name; anything else 401. ``status`` replaces
    the answer for every login (an API that fails)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl((await request.read()).decode("ascii")))
        await asyncio.sleep(delay)
        if status != 200:
            return web.Response(status=status, text="down for maintenance")
        if (form.get("username"), form.get("password")) != (USER, PASSWORD):
            return web.Response(status=401)
        return web.json_response({"user": CANONICAL})

    api.handler = handler


# --- the SMTP client (smtplib, blocking, in a thread) --------------------------------------


@dataclass(frozen=True)
class AuthResult:
    code: int
    text: str
    seconds: float


class Session:
    """One SMTP session through smtplib; each call runs in a thread."""

    def __init__(self, smtp: smtplib.SMTP) -> None:
        self.smtp = smtp

    @classmethod
    @asynccontextmanager
    async def opened(cls, postfix: PrivatePostfix, *, tls: bool = True) -> AsyncIterator[Session]:
        def connect() -> smtplib.SMTP:
            smtp = smtplib.SMTP(*postfix.address, timeout=SMTP_DEADLINE)
            smtp.ehlo("client.test.example")
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                smtp.starttls(context=context)
                smtp.ehlo("client.test.example")
            return smtp

        session = cls(await asyncio.to_thread(connect))
        try:
            yield session
        finally:
            await asyncio.to_thread(session.smtp.close)

    async def auth(
        self, mechanism: str, username: str, password: str, *, initial_response: bool = True
    ) -> AuthResult:
        def run() -> AuthResult:
            smtp = self.smtp
            smtp.user, smtp.password = username, password
            method = getattr(smtp, f"auth_{mechanism.lower()}")
            started = time.monotonic()
            text: bytes | str
            try:
                code, text = smtp.auth(mechanism, method, initial_response_ok=initial_response)
            except smtplib.SMTPAuthenticationError as error:
                code, text = error.smtp_code, error.smtp_error
            shown = text.decode() if isinstance(text, bytes) else text
            return AuthResult(code, shown, time.monotonic() - started)

        return await asyncio.to_thread(run)

    async def command(self, line: str) -> tuple[int, str]:
        code, text = await asyncio.to_thread(self.smtp.docmd, line)
        return code, text.decode()


# --- the tests --------------------------------------------------------------------------------

LOGINS = [
    pytest.param("PLAIN", True, id="plain"),
    pytest.param("PLAIN", False, id="plain-no-initial-response"),
    pytest.param("LOGIN", True, id="login"),
    pytest.param("LOGIN", False, id="login-no-initial-response"),
]


@pytest.mark.parametrize(("mechanism", "initial_response"), LOGINS)
async def test_right_password_logs_in_as_the_apis_user(
    api: FakeApi, start_smtpd: StartSmtpd, mechanism: str, initial_response: bool
) -> None:
    answer_logins(api)
    async with start_smtpd() as postfix, Session.opened(postfix) as session:
        result = await session.auth(mechanism, USER, PASSWORD, initial_response=initial_response)
        mail = await session.command("MAIL FROM:<typed@example.org>")
        rcpt = await session.command("RCPT TO:<someone@example.net>")
        log = await postfix.wait_for_log(f"sasl_username={CANONICAL}")

    assert (result.code, result.text) == (235, "2.7.0 Authentication successful"), log
    assert mail[0] == 250, log
    assert rcpt[0] == 250, log  # relayed: only an authenticated client may
    assert f"sasl_method={mechanism}, sasl_username={CANONICAL}" in log
    assert [login_form(seen) for seen in api.seen] == [
        {
            "username": USER,
            "password": PASSWORD,
            "mechanism": mechanism,
            "service": "smtp",
            "remote_ip": "127.0.0.1",
            "local_ip": "127.0.0.1",
            "secured": "yes",
        }
    ]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_wrong_password_is_535_after_the_failure_delay(
    api: FakeApi, start_smtpd: StartSmtpd, mechanism: str
) -> None:
    answer_logins(api)
    async with start_smtpd(**{"failure-delay": 1000}) as postfix, Session.opened(postfix) as s:
        wrong = await s.auth(mechanism, USER, WRONG)
        right = await s.auth(mechanism, USER, PASSWORD)  # the same session may try again
        log = await postfix.wait_for_log("authentication failed: Invalid user name or password")

    assert wrong.code == 535, log
    assert wrong.text == "5.7.8 Error: authentication failed: Invalid user name or password"
    assert wrong.seconds >= 1.0
    assert f"sasl_username={USER}" in log  # the typed name, for log watchers
    assert right.code == 235, log
    assert right.seconds < 1.0
    assert [login_form(seen)["password"] for seen in api.seen] == [WRONG, PASSWORD]


@pytest.mark.parametrize(
    ("status", "delay"),
    [(503, 0.0), (500, 0.0), (200, 1.5)],
    ids=["api-503", "api-500", "api-slower-than-request-timeout"],
)
async def test_api_failure_is_454_and_the_next_login_in_that_smtpd_succeeds(
    api: FakeApi, start_smtpd: StartSmtpd, status: int, delay: float
) -> None:
    """The connector resets smtpd's connection; a reset (not a FIN) makes smtpd reconnect at
    its next login, so the one after the failure is served normally, in the same process."""
    answer_logins(api, status=status, delay=delay)
    async with start_smtpd(**{"request-timeout": 500}) as postfix, Session.opened(postfix) as s:
        failed = await s.auth("PLAIN", USER, PASSWORD)
        answer_logins(api)
        again = await s.auth("PLAIN", USER, PASSWORD)
        log = postfix.log()

    assert failed.code == 454, log
    assert failed.text.startswith(TEMPORARY), log
    assert failed.seconds < 3.0, log  # the request-timeout, not smtpd's own 10 s
    assert again.code == 235, log
    assert len(api.seen) == 2, log


async def test_unreachable_api_is_454_never_535(
    listener: Listener, start_smtpd: StartSmtpd, api: FakeApi
) -> None:
    refusing = free_port()  # nothing listens there
    async with (
        start_smtpd(target=f"http://127.0.0.1:{refusing}/auth") as postfix,
        Session.opened(postfix) as session,
    ):
        first = await session.auth("LOGIN", USER, PASSWORD)
        second = await session.auth("PLAIN", USER, WRONG)
        log = postfix.log()

    assert first.code == 454, log
    assert first.text.startswith(TEMPORARY), log
    assert second.code == 454, log
    assert api.seen == []


async def test_plaintext_is_refused_outside_tls_without_asking_the_api(
    api: FakeApi, start_smtpd: StartSmtpd
) -> None:
    answer_logins(api)
    async with start_smtpd() as postfix, Session.opened(postfix, tls=False) as session:
        result = await session.auth("PLAIN", USER, PASSWORD)
        log = postfix.log()

    assert result.code == 535, log
    assert result.text == f"5.7.8 Error: authentication failed: {PLAINTEXT_REFUSED}"
    assert api.seen == []


async def test_allow_plaintext_lets_a_session_without_tls_log_in(
    api: FakeApi, start_smtpd: StartSmtpd
) -> None:
    answer_logins(api)
    async with (
        start_smtpd(**{"allow-plaintext": True}) as postfix,
        Session.opened(postfix, tls=False) as session,
    ):
        result = await session.auth("LOGIN", USER, PASSWORD)
        log = postfix.log()

    assert result.code == 235, log
    assert [login_form(seen)["secured"] for seen in api.seen] == ["no"]


async def test_several_sessions_at_once_each_through_its_own_connection(
    api: FakeApi, start_smtpd: StartSmtpd
) -> None:
    """The API answers none until all have asked: they can only all arrive if each smtpd
    process has its own connection to the connector (smtpd sends one login at a time)."""
    sessions = 4
    arrived: list[str] = []
    everyone = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl((await request.read()).decode("ascii")))
        arrived.append(form["username"])
        if len(arrived) == sessions:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 5)
        return web.json_response({"user": form["username"].upper()})

    api.handler = handler

    async def log_in(postfix: PrivatePostfix, number: int) -> AuthResult:
        async with Session.opened(postfix) as session:
            return await session.auth("PLAIN", f"user{number}@example.org", PASSWORD)

    async with start_smtpd(**{"request-timeout": 8000}) as postfix:
        results = await asyncio.gather(*(log_in(postfix, n) for n in range(sessions)))
        log = postfix.log()

    assert [result.code for result in results] == [235] * sessions, log
    assert sorted(arrived) == [f"user{n}@example.org" for n in range(sessions)]
