"""Policy delegation end to end: a real Postfix smtpd asks the running connector per recipient.

Each test starts a private Postfix ``master`` in a short directory under /tmp. Its smtpd listens on
a free loopback port and has ``check_policy_service`` pointing at the connector; recipients it
accepts are proxied (``smtpd_proxy_filter``) to a small SMTP sink run by the test, so no queue
manager is needed. The test talks SMTP to that smtpd and checks the replies and what the API got.

Every test runs twice: with the connector on a loopback TCP port (``inet:HOST:PORT``) and on a unix
socket (``unix:/PATH``). smtpd runs unchrooted as user postfix, so it opens the absolute socket path
itself, and only if the socket's owner and mode let user postfix in.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
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
from postfix_rest_api_connector.runtime.daemon import Daemon

pytestmark = pytest.mark.postfix

SMTP_DEADLINE = 30.0
"""Bounds one SMTP reply; smtpd's own policy timeout below is shorter, so a hang is diagnosable."""

CLIENT_ADDRESS = "192.0.2.1"
"""Set through XCLIENT, so that client_address is something only Postfix could have sent."""

POLICY_ATTRIBUTES = [
    "request",
    "protocol_state",
    "protocol_name",
    "client_address",
    "client_name",
    "client_port",
    "reverse_client_name",
    "server_address",
    "server_port",
    "helo_name",
    "sender",
    "recipient",
    "recipient_count",
    "queue_id",
    "instance",
    "size",
    "etrn_domain",
    "stress",
    "sasl_method",
    "sasl_username",
    "sasl_sender",
    "ccert_subject",
    "ccert_issuer",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "encryption_protocol",
    "encryption_cipher",
    "encryption_keysize",
    "policy_context",
]
"""What Postfix 3.7's smtpd sends, in its order."""


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with serving_sink() as sink:
        yield sink


def policy_main_cf(policy: str) -> str:
    """``policy`` is the server as check_policy_service names it: ``inet:H:P`` or ``unix:/PATH``."""
    return f"""\
mynetworks = 127.0.0.0/8, {CLIENT_ADDRESS}/32
smtpd_recipient_restrictions =
    check_policy_service {policy},
    permit_mynetworks,
    reject
smtpd_policy_service_timeout = 10s
"""


StartSmtpd = Callable[[str], AbstractAsyncContextManager[PrivatePostfix]]


@pytest.fixture
def start_smtpd(smtp_sink: SmtpSink) -> StartSmtpd:
    """``async with start_smtpd(policy_service) as postfix``: a private master and its smtpd."""
    require_postfix()

    @asynccontextmanager
    async def start(policy: str) -> AsyncIterator[PrivatePostfix]:
        directory = new_short_directory()
        try:
            instance = PrivatePostfix(directory, ("127.0.0.1", free_port()))
            make_instance(directory, instance.address[1], policy_main_cf(policy), smtp_sink.address)
            async with running_master(instance):
                yield instance
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return start


# --- an SMTP client --------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpReply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def reply(self) -> SmtpReply:
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self._reader.readline(), SMTP_DEADLINE)
            if not line:
                raise ConnectionError(f"smtpd closed the connection after {lines!r}")
            text = line.decode("utf-8").rstrip("\r\n")
            lines.append(text[4:])
            if text[3:4] != "-":
                return SmtpReply(int(text[:3]), "\n".join(lines))

    async def command(self, line: str) -> SmtpReply:
        self._writer.write(line.encode("utf-8") + b"\r\n")
        await self._writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@asynccontextmanager
async def smtp_session(
    postfix: PrivatePostfix, helo: str = "client.test.example", sender: str = "from@example.org"
) -> AsyncIterator[SmtpClient]:
    """Connected, XCLIENT-ed to ``CLIENT_ADDRESS``, EHLO and MAIL FROM done."""
    client = SmtpClient(*await asyncio.open_connection(*postfix.address))
    try:
        steps = [
            (None, 220),
            ("EHLO probe.test.example", 250),
            (f"XCLIENT ADDR={CLIENT_ADDRESS}", 220),
            (f"EHLO {helo}", 250),
            (f"MAIL FROM:<{sender}>", 250),
        ]
        for line, expected in steps:
            reply = await (client.reply() if line is None else client.command(line))
            assert reply.code == expected, f"{line}: {reply}\n{postfix.log()}"
        yield client
        await client.command("QUIT")
    finally:
        await client.close()


# --- where the connector listens: loopback TCP or a unix socket ------------------------------


@dataclass(frozen=True)
class PolicyListener:
    """The connector's listener and the name smtpd's ``check_policy_service`` reaches it by."""

    socket_path: Path | None = None
    """None: a free loopback TCP port."""
    socket_settings: Mapping[str, str] = field(default_factory=dict)
    """``socket-mode`` and ``socket-owner`` for the unix socket."""

    def endpoint(self, target: str, **extra: Any) -> dict[str, Any]:
        """A policy endpoint asking ``target``, listening here."""
        config = endpoint_config("policy", target, **extra)
        if self.socket_path is not None:
            del config["bind-address"], config["bind-port"]
            config.update({"bind-path": str(self.socket_path), **self.socket_settings})
        return config

    def service(self, daemon: Daemon) -> str:
        if self.socket_path is None:
            host, port = endpoint_address(daemon)
            return f"inet:{host}:{port}"
        assert daemon.endpoints[0].addresses == [], "a unix endpoint must not listen on TCP"
        return f"unix:{self.socket_path}"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = new_short_directory()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["inet", "unix"])
def listener(request: pytest.FixtureRequest, socket_dir: Path) -> PolicyListener:
    """Both transports; the unix socket as deployed next to Postfix: 0660, owned by postfix."""
    if request.param == "inet":
        return PolicyListener()
    return PolicyListener(socket_dir / "policy", {"socket-owner": "postfix"})


# --- helpers for the API side ----------------------------------------------------------------


def api_target(api: FakeApi) -> str:
    return f"{api.url}/policy"


def form_fields(seen: SeenRequest) -> list[tuple[str, str]]:
    """The POSTed form, decoded strictly: any stray '&' or '=' would change the field list."""
    assert seen.method == "POST"
    assert seen.path == "/policy"
    assert seen.headers.get("Content-Type") == "application/x-www-form-urlencoded"
    assert seen.headers.get("X-Auth-Token") == "s3cret-token"
    return parse_qsl(
        seen.body.decode("ascii"), keep_blank_values=True, strict_parsing=True, errors="strict"
    )


def answer_by_recipient(
    api: FakeApi, answers: dict[str, Callable[[], web.StreamResponse]], slow: Collection[str] = ()
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        recipient = dict(parse_qsl((await request.read()).decode("ascii")))["recipient"]
        if recipient in slow:
            await asyncio.sleep(5)
        return answers[recipient]()

    api.handler = handler


def text(body: str, status: int = 200) -> Callable[[], web.StreamResponse]:
    return lambda: web.Response(text=body, status=status)


# --- the tests -------------------------------------------------------------------------------


async def test_api_decides_per_recipient_in_one_session(
    api: FakeApi, listener: PolicyListener, start_smtpd: StartSmtpd, smtp_sink: SmtpSink
) -> None:
    answer_by_recipient(
        api,
        {
            "reject@example.net": text("action=REJECT Not welcome here"),
            "dunno@example.net": text("DUNNO"),
            "defer@example.net": text("action=DEFER_IF_PERMIT Greylisted, try later\n"),
            "ok@example.net": text("OK"),
            "code@example.net": text("action=550 5.1.1 No such mailbox"),
        },
    )
    async with (
        running_connector(listener.endpoint(api_target(api))) as daemon,
        start_smtpd(listener.service(daemon)) as postfix,
        smtp_session(postfix, sender="sender+tag@example.org") as smtp,
    ):
        replies = {
            rcpt: await smtp.command(f"RCPT TO:<{rcpt}>")
            for rcpt in [
                "reject@example.net",
                "dunno@example.net",
                "defer@example.net",
                "ok@example.net",
                "code@example.net",
            ]
        }
        log = postfix.log()

    shown = "\n".join(f"{rcpt}: {reply}" for rcpt, reply in replies.items()) + "\n" + log
    assert replies["reject@example.net"].code == 554, shown
    assert replies["reject@example.net"].text.startswith("5.7.1 "), shown
    assert replies["reject@example.net"].text.endswith("Not welcome here"), shown
    assert replies["dunno@example.net"].code == 250, shown
    assert replies["defer@example.net"].code == 450, shown
    assert replies["defer@example.net"].text.startswith("4.7.1 "), shown
    assert replies["defer@example.net"].text.endswith("Greylisted, try later"), shown
    assert replies["ok@example.net"].code == 250, shown
    assert replies["code@example.net"].code == 550, shown
    assert replies["code@example.net"].text.startswith("5.1.1 "), shown
    # Only what the policy let through went on towards the queue.
    assert smtp_sink.recipients == ["<dunno@example.net>", "<ok@example.net>"]

    # One form POST per recipient, in order, with every attribute smtpd sent.
    assert len(api.seen) == 5, shown
    forms = [dict(form_fields(seen)) for seen in api.seen]
    assert [form["recipient"] for form in forms] == list(replies)
    for seen, form in zip(api.seen, forms, strict=True):
        assert [name for name, _ in form_fields(seen)] == POLICY_ATTRIBUTES
        assert form["request"] == "smtpd_access_policy"
        assert form["protocol_state"] == "RCPT"
        assert form["protocol_name"] == "ESMTP"
        assert form["client_address"] == CLIENT_ADDRESS
        assert form["helo_name"] == "client.test.example"
        assert form["sender"] == "sender+tag@example.org"
        assert form["server_port"] == str(postfix.address[1])
    # All five belong to the one mail transaction of this session.
    assert len({form["instance"] for form in forms}) == 1


async def test_helo_name_with_ampersand_and_equals_stays_one_field(
    api: FakeApi, listener: PolicyListener, start_smtpd: StartSmtpd
) -> None:
    helo = "mx&recipient=stolen.example&sender=x=y%26z+w"
    api.answer_text("action=DUNNO")
    async with (
        running_connector(listener.endpoint(api_target(api))) as daemon,
        start_smtpd(listener.service(daemon)) as postfix,
        smtp_session(postfix, helo=helo) as smtp,
    ):
        reply = await smtp.command("RCPT TO:<victim@example.net>")
        log = postfix.log()
    assert reply.code == 250, f"{reply}\n{log}"
    assert len(api.seen) == 1, log
    fields = form_fields(api.seen[0])
    assert [name for name, _ in fields] == POLICY_ATTRIBUTES
    form = dict(fields)
    assert form["helo_name"] == helo
    assert form["recipient"] == "victim@example.net"
    assert form["sender"] == "from@example.org"


async def test_api_failures_defer_and_never_accept(
    api: FakeApi, listener: PolicyListener, start_smtpd: StartSmtpd, smtp_sink: SmtpSink
) -> None:
    """Every way the API can fail gives the default failure action: 450, never 250."""
    answer_by_recipient(
        api,
        {
            "http500@example.net": text("oops", status=500),
            "http403@example.net": text("forbidden", status=403),
            "slow@example.net": text("DUNNO"),
            "multiline@example.net": text("action=DUNNO\naction=OK"),
            "empty@example.net": text(""),
            "after@example.net": text("DUNNO"),
        },
        slow={"slow@example.net"},
    )
    failing = [
        "http500@example.net",
        "http403@example.net",
        "slow@example.net",
        "multiline@example.net",
        "empty@example.net",
    ]
    async with (
        running_connector(listener.endpoint(api_target(api), **{"request-timeout": 300})) as daemon,
        start_smtpd(listener.service(daemon)) as postfix,
        smtp_session(postfix) as smtp,
    ):
        replies = {rcpt: await smtp.command(f"RCPT TO:<{rcpt}>") for rcpt in failing}
        # The connection to the connector is still good after all that.
        after = await smtp.command("RCPT TO:<after@example.net>")
        log = postfix.log()

    shown = "\n".join(f"{rcpt}: {reply}" for rcpt, reply in replies.items()) + "\n" + log
    for reply in replies.values():
        assert reply.code == 450, shown
        assert reply.text.startswith("4.7.1 "), shown
        assert reply.text.endswith("Service temporarily unavailable"), shown
    assert after.code == 250, f"{after}\n{log}"
    assert smtp_sink.recipients == ["<after@example.net>"]
    assert [dict(form_fields(seen))["recipient"] for seen in api.seen] == [
        *failing,
        "after@example.net",
    ]


async def test_unreachable_api_gives_the_configured_failure_action(
    listener: PolicyListener, start_smtpd: StartSmtpd, smtp_sink: SmtpSink
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refusing:
        refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = refusing.getsockname()[1]
        endpoint = listener.endpoint(
            f"http://127.0.0.1:{port}/policy",
            **{"failure-action": "451 4.3.0 Policy API unavailable"},
        )
        async with (
            running_connector(endpoint) as daemon,
            start_smtpd(listener.service(daemon)) as postfix,
            smtp_session(postfix) as smtp,
        ):
            reply = await smtp.command("RCPT TO:<someone@example.net>")
            log = postfix.log()
    assert reply.code == 451, f"{reply}\n{log}"
    assert reply.text.startswith("4.3.0 "), f"{reply}\n{log}"
    assert reply.text.endswith("Policy API unavailable"), f"{reply}\n{log}"
    assert smtp_sink.recipients == []


@pytest.mark.parametrize(
    "socket_settings",
    [
        {"socket-mode": "0600", "socket-owner": "postfix"},
        {"socket-mode": "0660", "socket-owner": "root:postfix"},
    ],
    ids=["user-postfix-0600", "group-postfix-0660"],
)
async def test_socket_owner_or_group_lets_smtpd_in(
    api: FakeApi, socket_dir: Path, start_smtpd: StartSmtpd, socket_settings: dict[str, str]
) -> None:
    """smtpd runs as user postfix: owning the socket, or owning its group, is enough."""
    api.answer_text("action=REJECT Not welcome here")
    listener = PolicyListener(socket_dir / "policy", socket_settings)
    async with (
        running_connector(listener.endpoint(api_target(api))) as daemon,
        start_smtpd(listener.service(daemon)) as postfix,
        smtp_session(postfix) as smtp,
    ):
        reply = await smtp.command("RCPT TO:<someone@example.net>")
        log = postfix.log()
    assert reply.code == 554, f"{reply}\n{log}"
    assert reply.text.endswith("Not welcome here"), f"{reply}\n{log}"
    assert [dict(form_fields(seen))["recipient"] for seen in api.seen] == ["someone@example.net"]


async def test_socket_smtpd_may_not_open_defers_and_never_asks_the_api(
    api: FakeApi, socket_dir: Path, start_smtpd: StartSmtpd, smtp_sink: SmtpSink
) -> None:
    """Without socket-owner the socket is root's and 0660: user postfix may not connect, and
    Postfix's own policy default action defers the recipient."""
    api.answer_text("DUNNO")
    listener = PolicyListener(socket_dir / "policy")
    async with (
        running_connector(listener.endpoint(api_target(api))) as daemon,
        start_smtpd(listener.service(daemon)) as postfix,
        smtp_session(postfix) as smtp,
    ):
        reply = await smtp.command("RCPT TO:<someone@example.net>")
        # Refused for the socket's permissions, not for a wrong path or a connector not listening.
        log = await postfix.wait_for_log(f"connect to {listener.socket_path}: Permission denied")
    assert reply.code == 451, f"{reply}\n{log}"
    assert reply.text.startswith("4.3.5 "), f"{reply}\n{log}"
    assert reply.text.endswith("Server configuration problem"), f"{reply}\n{log}"
    assert api.seen == []
    assert smtp_sink.recipients == []
