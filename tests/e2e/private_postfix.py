"""A private Postfix ``master`` with one ``smtpd``, for the end-to-end tests that drive it.

Each instance lives in a short directory under /tmp (unix socket paths are limited to 107
bytes, and Postfix's daemons run as user postfix, who may not enter pytest's tmp_path). smtpd
listens on a free loopback port; what it accepts is proxied (``smtpd_proxy_filter``) to a small
SMTP sink run by the test, so no queue manager is needed and smtpd logs each transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MASTER = Path("/usr/lib/postfix/sbin/master")
INSTALL_HINT = (
    "install Debian's postfix: echo 'postfix postfix/main_mailer_type select No configuration'"
    " | debconf-set-selections && DEBIAN_FRONTEND=noninteractive apt-get install -y"
    " --no-install-recommends postfix"
)
STARTUP_DEADLINE = 15.0
LOG_DEADLINE = 10.0
"""Bounds the wait for postlogd to write a line smtpd logged."""


def require_postfix() -> None:
    """Fail (never skip) where the private master cannot run."""
    if not os.access(MASTER, os.X_OK) or shutil.which("postconf", path="/usr/sbin") is None:
        pytest.fail(f"{MASTER} not found: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.fail("the private Postfix master must run as root (it drops to user postfix)")


# --- the SMTP sink behind smtpd_proxy_filter ---------------------------------------------------


@dataclass
class SmtpSink:
    """Answers whatever smtpd's proxy says, and records the commands."""

    commands: list[str] = field(default_factory=list)
    address: tuple[str, int] = ("", 0)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 sink.test ESMTP\r\n")
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                if verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    while await reader.readline() not in {b".\r\n", b""}:
                        pass
                writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def recipients(self) -> list[str]:
        return [c[len("RCPT TO:") :] for c in self.commands if c.upper().startswith("RCPT TO:")]


@asynccontextmanager
async def serving_sink() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    server = await asyncio.start_server(sink.serve, "127.0.0.1", 0)
    sink.address = server.sockets[0].getsockname()[:2]
    async with server:
        yield sink
        server.close()


# --- the instance -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivatePostfix:
    directory: Path
    address: tuple[str, int]

    @property
    def queue(self) -> Path:
        """smtpd's working directory: a relative socket path (``private/auth``) is in here."""
        return self.directory / "q"

    def log(self) -> str:
        """Postfix's own log and master's stderr, for assertion messages."""
        parts = []
        for name in ("maillog", "master.out"):
            path = self.directory / name
            text = path.read_text("utf-8", "replace") if path.exists() else "(none)"
            parts.append(f"--- {name} ---\n{text}")
        return "\n".join(parts)

    async def wait_for_log(self, line_part: str) -> str:
        """The log once it has a line containing ``line_part``: postlogd writes it a little after
        smtpd has already answered, and a file gives no event to await."""
        deadline = time.monotonic() + LOG_DEADLINE
        while line_part not in (log := self.log()):
            if time.monotonic() > deadline:
                pytest.fail(f"no log line with {line_part!r} within {LOG_DEADLINE} s\n{log}")
            await asyncio.sleep(0.05)
        return log


def free_port() -> int:
    """A free loopback port for master.cf (master binds it itself, so it is released first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_settled(path: Path, text: str) -> None:
    """Postfix re-reads a config file changed in the last seconds until it settles: date it back."""
    path.write_text(text, encoding="utf-8")
    settled = time.time() - 60
    os.utime(path, (settled, settled))


def new_short_directory() -> Path:
    """Short and world-traversable (see the module's docstring)."""
    directory = Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
    directory.chmod(0o755)
    return directory


def make_instance(directory: Path, smtpd_port: int, main_cf: str, sink: tuple[str, int]) -> None:
    """The directories and config of an instance whose smtpd listens on ``smtpd_port`` and
    proxies to ``sink``; ``main_cf`` adds what the test is about."""
    etc, queue, data = directory / "etc", directory / "q", directory / "data"
    for path in (etc, queue, queue / "pid", queue / "private", queue / "public", data):
        path.mkdir()
    for path in (queue / "private", queue / "public", data):
        shutil.chown(path, user="postfix", group="postfix")
    write_settled(
        etc / "main.cf",
        f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {directory}/maillog
maillog_file_prefixes = {directory}
myhostname = mx.test.example
mydomain = test.example
inet_protocols = ipv4
inet_interfaces = 127.0.0.1
smtpd_authorized_xclient_hosts = 127.0.0.0/8
local_recipient_maps =
alias_maps =
smtpd_reject_unlisted_recipient = no
smtpd_reject_unlisted_sender = no
smtpd_client_connection_count_limit = 0
smtpd_relay_restrictions =
smtpd_proxy_filter = {sink[0]}:{sink[1]}
{main_cf}""",
    )
    write_settled(
        etc / "master.cf",
        f"""\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
rewrite unix - - n - - trivial-rewrite
tlsmgr unix - - n 1000? 1 tlsmgr
postlog unix-dgram n - n - 1 postlogd
""",
    )


async def smtpd_answers(address: tuple[str, int]) -> bool:
    """One probe: does a real smtpd greet with 220 on ``address``?"""
    try:
        reader, writer = await asyncio.open_connection(*address)
    except OSError:
        return False
    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return greeting.startswith(b"220 ")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def wait_until_serving(process: asyncio.subprocess.Process, instance: PrivatePostfix) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not await smtpd_answers(instance.address):
        if process.returncode is not None:
            pytest.fail(f"postfix master exited with {process.returncode}\n{instance.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"smtpd did not answer within {STARTUP_DEADLINE} s\n{instance.log()}")
        await asyncio.sleep(0.05)


async def stop_master(process: asyncio.subprocess.Process) -> None:
    """On SIGTERM master kills its process group (its smtpd and postlogd), then itself."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@asynccontextmanager
async def running_master(instance: PrivatePostfix) -> AsyncIterator[PrivatePostfix]:
    """``master`` for an instance ``make_instance`` prepared, until its smtpd greets."""
    with (instance.directory / "master.out").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            str(MASTER),
            "-c",
            str(instance.directory / "etc"),
            "-d",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            # Its own process group: master's SIGTERM handler kills its group, and in
            # pytest's group that fails ("fatal: master_sigdeath: kill process group")
            # and costs the 1 s sleep of every Postfix fatal error.
            start_new_session=True,
        )
    try:
        await wait_until_serving(process, instance)
        yield instance
    finally:
        await stop_master(process)
