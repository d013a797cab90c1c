"""systemd socket activation for real: ``systemd-socket-activate`` (Debian's systemd package)
listens, passes its sockets as systemd does (``$LISTEN_FDS``, ``$LISTEN_FDNAMES`` from
``--fdname``, which is ``FileDescriptorName=``) and starts the connector at the first connection,
as a socket unit with ``Accept=no`` does; real ``postmap -q`` then asks through the passed socket.

systemd-socket-activate needs a port number (it refuses 0), so each test reserves a free one: a
socket bound to it with ``SO_REUSEADDR`` but not listening, held for the whole test, keeps every
other program off it while systemd-socket-activate, which binds with ``SO_REUSEADDR`` too, can.
It hands the daemon only ``PATH``, ``HOME``, ``USER``, ``TERM`` and the ``-E`` variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import test_postmap
from aiohttp import web
from test_postmap import Postmap

from conftest import DEADLINE, Connector, FakeApi, child_env, endpoint_config, write_config

LISTEN_LINE = "Listening on {} as {}."
"""What systemd-socket-activate prints once it listens, before it starts the daemon."""
O_CLOEXEC = 0o2000000
"""In ``/proc/PID/fdinfo/FD``'s ``flags`` (octal)."""

Activate = Callable[..., Awaitable[Connector]]
postmap = test_postmap.postmap
"""The fixture: Debian's postmap with a private config directory."""


@pytest.fixture
async def activate() -> AsyncIterator[Activate]:
    """``activate(config, (address, name), ...)``: the connector under systemd-socket-activate,
    once that listens on every address; it starts the connector at the first connection.
    Whatever still runs at teardown is killed, workers included."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail(
            "systemd-socket-activate not found: it is in Debian's systemd package"
            " (scripts/test.sh installs it: apt-get install systemd)"
        )
    started: list[asyncio.subprocess.Process] = []

    async def start(
        config: Path, *listen: tuple[str, str], accept: bool = False, **env: str
    ) -> Connector:
        command = [tool, *(f"--listen={address}" for address, _ in listen)]
        command += [f"--fdname={':'.join(name for _, name in listen)}"]
        command += ["--accept"] if accept else []
        command += [f"--setenv={key}={value}" for key, value in env.items()]
        command += [sys.executable, "-m", "postfix_rest_api_connector", str(config)]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env({}),
            start_new_session=True,
        )
        started.append(process)
        connector = Connector(process)
        for fd, (address, _) in enumerate(listen, start=3):
            await connector.expect(re.compile(re.escape(LISTEN_LINE.format(address, fd))))
        return connector

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.communicate()


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free loopback port, kept from other programs for the test (see the module's text)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def from_systemd(name: str, mode: str, where: str) -> re.Pattern[str]:
    """The connector's line for an endpoint listening on a socket systemd passed."""
    return re.compile(
        rf"endpoint {name} \({mode}\) listening on {re.escape(where)}, asking \S+"
        r" \(socket from systemd\)"
    )


def process_ids(connector: Connector, workers: int) -> list[int]:
    """The processes that serve: the connector itself, or its workers."""
    pid = connector.process.pid
    if workers == 1:
        return [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == workers, children
    return sorted(int(child) for child in children)


def pid_tags(api: FakeApi) -> set[str]:
    """Which process asked the API: request ids start with its pid in hex."""
    return {seen.headers["X-Request-Id"].split("-")[0] for seen in api.seen}


def assert_close_on_exec(pid: int, fd: int) -> None:
    """A passed descriptor must not leak into a program the connector might run."""
    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    flags = int(re.search(r"^flags:\s+(\d+)$", info, re.MULTILINE)[1], 8)  # type: ignore[index]
    assert flags & O_CLOEXEC, f"fd {fd} of {pid} is inherited by exec: {info}"


async def each_alone_answers(
    pids: list[int], api: FakeApi, ask: Callable[[], Awaitable[None]]
) -> None:
    """With every other worker stopped (SIGSTOP), each worker in turn answers ``ask`` from the
    passed socket's one queue."""
    for running in pids:
        stopped = [pid for pid in pids if pid != running]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            api.seen.clear()
            await ask()
            assert pid_tags(api) == {f"{running:x}"}
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)


async def readline(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), DEADLINE)


async def stop(connector: Connector) -> None:
    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr


@pytest.mark.postfix
@pytest.mark.parametrize("workers", [1, 2])
async def test_postmap_asks_through_a_passed_tcp_socket(
    api: FakeApi, postmap: Postmap, activate: Activate, tmp_path: Path, workers: int
) -> None:
    """A connection made before the connector runs waits in the kernel's queue and is
    answered once it has started; with workers, each one accepts from that queue."""
    api.answer_json(["dest@example.org"])
    with reserved_port() as port:
        endpoint = {**endpoint_config("tcp-lookup", api.url, **{"bind-port": port})}
        endpoint["name"] = "domains"
        config = write_config(tmp_path, {"workers": workers, "endpoints": [endpoint]})
        connector = await activate(config, (f"127.0.0.1:{port}", "domains"))

        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # nobody runs yet
        writer.write(b"get early@example.com\n")
        await connector.expect(re.compile(r"Communication attempt on fd 3\."))
        for _ in range(workers):
            await connector.expect(from_systemd("domains", "tcp-lookup", f"127.0.0.1:{port}"))
        assert await readline(reader) == b"200 dest@example.org\n"
        writer.close()

        async def ask() -> None:
            result = await postmap.query(f"tcp:127.0.0.1:{port}", "user@example.com")
            assert (result.returncode, result.stdout, result.stderr) == (
                0,
                b"dest@example.org\n",
                "",
            ), result.describe()

        pids = process_ids(connector, workers)
        await each_alone_answers(pids, api, ask)
        for pid in {connector.process.pid, *pids}:
            assert_close_on_exec(pid, 3)
        await stop(connector)
    assert "WARNING" not in connector.stderr, connector.stderr


@pytest.mark.postfix
@pytest.mark.parametrize("workers", [1, 2])
async def test_postmap_asks_through_a_passed_unix_socket(
    api: FakeApi, postmap: Postmap, activate: Activate, tmp_path: Path, workers: int
) -> None:
    """Every worker serves a passed unix socket (without systemd only the first does), and its
    file is systemd's: its mode is not the config's socket-mode, and it outlives the daemon."""
    api.answer_json(["a@example.com,b@example.com"])
    path = str(tmp_path / "maps.sock")
    endpoint = endpoint_config("socketmap-lookup", api.url, **{"bind-path": path})
    del endpoint["bind-port"], endpoint["bind-address"]
    endpoint.update(name="maps", **{"socket-mode": "0600"})
    config = write_config(tmp_path, {"workers": workers, "endpoints": [endpoint]})
    connector = await activate(config, (path, "maps"))
    os.chmod(path, 0o640)  # as SocketMode=0640 would; the connector starts only later
    before = os.stat(path)

    async def ask() -> None:
        result = await postmap.query(f"socketmap:unix:{path}:aliases", "user@example.com")
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            b"a@example.com,b@example.com\n",
            "",
        ), result.describe()

    await ask()  # the first connection starts the connector, and waits for it
    for _ in range(workers):
        await connector.expect(from_systemd("maps", "socketmap-lookup", f"unix:{path}"))
    await each_alone_answers(process_ids(connector, workers), api, ask)
    assert {seen.query["name"] for seen in api.seen} == {"aliases"}
    await stop(connector)
    after = os.stat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)


@pytest.fixture
async def second_api() -> AsyncIterator[str]:
    """Another REST API, answering ``["second"]``: a reload to it shows in the replies."""

    async def answer(_: web.Request) -> web.StreamResponse:
        return web.json_response(["second"])

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/"
    await runner.cleanup()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_that_changes_the_endpoint_refuses_no_connection(
    api: FakeApi, second_api: str, activate: Activate, tmp_path: Path, workers: int
) -> None:
    """SIGHUP with a new target: the new endpoint serves on the same passed socket, while a
    client keeps connecting and is never refused."""
    api.answer_json(["first"])
    with reserved_port() as port:

        def endpoint(target: str) -> dict[str, Any]:
            return {
                **endpoint_config("tcp-lookup", target, **{"bind-port": port}),
                "name": "lookup",
            }

        config = write_config(tmp_path, {"workers": workers, "endpoints": [endpoint(api.url)]})
        connector = await activate(config, (f"127.0.0.1:{port}", "lookup"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"get k\n")
        assert await readline(reader) == b"200 first\n"
        writer.close()
        for _ in range(workers):
            await connector.expect(from_systemd("lookup", "tcp-lookup", f"127.0.0.1:{port}"))

        stop_connecting = asyncio.Event()
        refused = answered = 0

        async def keep_connecting() -> None:
            nonlocal refused, answered
            while not stop_connecting.is_set():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except ConnectionRefusedError:
                    refused += 1
                    continue
                writer.write(b"get k\n")
                # an old endpoint that drains may close a connection it has not read from yet
                with contextlib.suppress(ConnectionResetError):
                    answered += (await readline(reader)).startswith(b"200 ")
                writer.close()

        connecting = asyncio.create_task(keep_connecting())
        for target in (second_api, api.url, second_api):
            write_config(tmp_path, {"workers": workers, "endpoints": [endpoint(target)]})
            connector.process.send_signal(signal.SIGHUP)
            for _ in range(workers):
                await connector.expect(
                    re.compile(r"reloaded: 0 endpoint\(s\) unchanged, 1 started")
                )
        stop_connecting.set()
        await connecting
        assert refused == 0
        assert answered > 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"get k\n")
        assert await readline(reader) == b"200 second\n"
        writer.close()
        await stop(connector)


async def test_a_unix_socket_passed_to_a_tcp_endpoint_fails_the_start(
    api: FakeApi, activate: Activate, tmp_path: Path
) -> None:
    """Exit 78 (EX_CONFIG: not restarted by the unit), and the line names the key."""
    path = str(tmp_path / "lookup.sock")
    endpoint = {**endpoint_config("tcp-lookup", api.url), "name": "lookup"}
    config = write_config(tmp_path, {"endpoints": [endpoint]})
    connector = await activate(config, (path, "lookup"))
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)  # starts the connector
        assert await connector.finish() == 78
    assert (
        "config error: endpoints[0].bind-port: the socket systemd passed"
        " (FileDescriptorName=lookup) is a unix socket, but a bind-port endpoint serves TCP"
    ) in connector.stderr
    assert "listening on" not in connector.stderr


async def test_a_connection_passed_by_accept_yes_fails_the_start(
    api: FakeApi, activate: Activate, tmp_path: Path
) -> None:
    """``Accept=yes`` starts one process per connection and passes the connection: a socket
    unit for the connector needs ``Accept=no``."""
    with reserved_port() as port:
        endpoint = {**endpoint_config("tcp-lookup", api.url), "name": "lookup"}
        config = write_config(tmp_path, {"endpoints": [endpoint]})
        connector = await activate(config, (f"127.0.0.1:{port}", "lookup"), accept=True)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
            await connector.expect(
                re.compile(
                    r"config error: endpoints\[0\]\.bind-port: the socket systemd passed"
                    r" \(FileDescriptorName=lookup\) is a connection, not a listening socket:"
                    r" the socket unit needs Accept=no"
                )
            )


async def test_an_unclaimed_socket_is_warned_about_and_closed(
    api: FakeApi, activate: Activate, tmp_path: Path
) -> None:
    """A socket whose name is no endpoint's would queue connections nobody accepts: it is
    closed, so they are refused, and the warning names it."""
    api.answer_json(["v"])
    with reserved_port() as port, reserved_port() as stray:
        endpoint = {
            **endpoint_config("tcp-lookup", api.url, **{"bind-port": port}),
            "name": "lookup",
        }
        config = write_config(tmp_path, {"endpoints": [endpoint]})
        connector = await activate(
            config, (f"127.0.0.1:{port}", "lookup"), (f"127.0.0.1:{stray}", "lookp")
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"get k\n")
        await connector.expect(
            re.compile(
                rf"WARNING .* systemd passed a socket named 'lookp' \(127\.0\.0\.1:{stray}\) that"
                r" no endpoint claims: closed it; its socket unit's FileDescriptorName= must be"
                r" an endpoint's name"
            )
        )
        assert await readline(reader) == b"200 v\n"
        writer.close()
        await connector.expect(from_systemd("lookup", "tcp-lookup", f"127.0.0.1:{port}"))
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", stray)
        await stop(connector)
