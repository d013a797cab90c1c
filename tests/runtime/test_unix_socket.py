"""Unix-socket listeners: every mode, Postfix's socketmap:unix: client, mode, owner, leftovers."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeApi, endpoint_config, running_connector
from postfix_rest_api_connector.runtime import unix_socket
from postfix_rest_api_connector.runtime.daemon import StartupError


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """Short paths: a unix socket path must fit in 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="pfx", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def unix_endpoint(mode: str, target: str, path: Path, **extra: Any) -> dict[str, Any]:
    config = endpoint_config(mode, target, **{"bind-path": str(path), **extra})
    del config["bind-port"]
    return config


async def send_and_read_unix(path: Path, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("mode", "request_bytes", "reply"),
    [
        ("tcp-lookup", b"get k\n", b"200 v\n"),
        ("socketmap-lookup", b"5:map k,", b"4:OK v,"),
        ("policy", b"recipient=k\n\n", b"action=REJECT v\n\n"),
    ],
)
async def test_every_mode_serves_a_unix_socket(
    api: FakeApi, socket_dir: Path, mode: str, request_bytes: bytes, reply: bytes
) -> None:
    api.answer_text("REJECT v") if mode == "policy" else api.answer_json(["v"])
    path = socket_dir / "s"
    async with running_connector(unix_endpoint(mode, api.url, path)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert await send_and_read_unix(path, request_bytes) == reply
    assert not path.exists(), "the socket file is removed on shutdown"


async def test_postfix_socketmap_unix_client(api: FakeApi, socket_dir: Path) -> None:
    postmap = shutil.which("postmap")
    if postmap is None:
        pytest.fail("postmap not found: install Debian's postfix (scripts/test.sh does)")
    (socket_dir / "main.cf").write_text("")
    api.answer_json(["alice@example.com"])
    path = socket_dir / "map.sock"
    async with running_connector(unix_endpoint("socketmap-lookup", api.url, path)):
        process = await asyncio.create_subprocess_exec(
            postmap,
            "-c",
            str(socket_dir),
            "-q",
            "postmaster@example.com",
            f"socketmap:unix:{path}:aliases",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr
    assert stdout == b"alice@example.com\n"
    assert api.seen[0].query == {"name": "aliases", "key": "postmaster@example.com"}


async def test_socket_mode_and_owner_are_applied(api: FakeApi, socket_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    path = socket_dir / "s"
    config = unix_endpoint(
        "tcp-lookup", api.url, path, **{"socket-mode": "0600", "socket-owner": "nobody"}
    )
    async with running_connector(config):
        status = path.stat()
        assert stat.S_IMODE(status.st_mode) == 0o600
        assert status.st_uid == nobody.pw_uid


async def test_socket_left_by_a_crash_is_replaced(api: FakeApi, socket_dir: Path) -> None:
    api.answer_json(["v"])
    path = socket_dir / "s"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # bound, never listening, never unlinked: what a crash leaves
    leftover.close()
    async with running_connector(unix_endpoint("tcp-lookup", api.url, path)):
        assert await send_and_read_unix(path, b"get k\n") == b"200 v\n"


async def test_a_live_socket_is_not_stolen(api: FakeApi, socket_dir: Path) -> None:
    path = socket_dir / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other_daemon:
        other_daemon.bind(str(path))
        other_daemon.listen()
        with pytest.raises(StartupError, match="another process is listening on"):
            async with running_connector(unix_endpoint("tcp-lookup", api.url, path)):
                pass
        assert path.exists()


async def test_a_regular_file_is_never_removed(api: FakeApi, socket_dir: Path) -> None:
    path = socket_dir / "s"
    path.write_text("precious")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        async with running_connector(unix_endpoint("tcp-lookup", api.url, path)):
            pass
    assert path.read_text() == "precious"


async def test_unknown_owner_is_a_startup_error(api: FakeApi, socket_dir: Path) -> None:
    path = socket_dir / "s"
    config = unix_endpoint("tcp-lookup", api.url, path, **{"socket-owner": "no-such-user-x"})
    with pytest.raises(StartupError, match="unknown socket-owner"):
        async with running_connector(config):
            pass
    assert not path.exists()


async def test_socket_is_private_until_its_mode_is_set(
    api: FakeApi, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even under umask 0, the socket is never connectable by others before socket-mode applies."""
    modes_at_creation: list[int] = []
    set_permissions = unix_socket.set_permissions

    def record_then_set(path: str, mode: str, owner: str | None) -> None:
        modes_at_creation.append(stat.S_IMODE(os.lstat(path).st_mode))
        set_permissions(path, mode, owner)

    monkeypatch.setattr(unix_socket, "set_permissions", record_then_set)
    previous = os.umask(0)
    try:
        path = socket_dir / "s"
        async with running_connector(unix_endpoint("tcp-lookup", api.url, path)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        os.umask(previous)
    assert modes_at_creation == [0o600]
