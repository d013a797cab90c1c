"""Reloading the config: unchanged endpoints and their connections are untouched, changed ones
take over their listening socket and its connections, removed ones drain, and a bad config
changes nothing.

Most tests call ``Daemon.reload()`` in this event loop, as the SIGHUP handler does; the last ones
send a real SIGHUP to the daemon in a child process, with systemd's notify socket watched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import (
    LISTENING,
    FakeApi,
    Spawn,
    endpoint_config,
)
from postfix_rest_api_connector.config import load_config
from postfix_rest_api_connector.runtime.daemon import Daemon

DEADLINE = 10.0


class Client:
    """A Postfix-style tcp_table client: one persistent connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, address: tuple[str, int] | str) -> Client:
        if isinstance(address, str):
            return cls(*await asyncio.open_unix_connection(address))
        return cls(*await asyncio.open_connection(*address))

    async def get(self, key: str) -> bytes:
        self.writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(self.reader.readline(), DEADLINE)

    def close(self) -> None:
        self.writer.close()


def write(path: Path, *endpoints: dict[str, Any], **top: Any) -> None:
    path.write_text(json.dumps({"endpoints": list(endpoints), **top}), encoding="utf-8")


def tcp(name: str, target: str, **extra: Any) -> dict[str, Any]:
    return {**endpoint_config("tcp-lookup", target, **extra), "name": name}


def unix(socket_path: str, target: str, mode: str) -> dict[str, Any]:
    """A tcp_table endpoint named ``lookup`` on a unix socket."""
    config = tcp("lookup", target, **{"bind-path": socket_path, "socket-mode": mode})
    del config["bind-port"], config["bind-address"]
    return config


def address_of(daemon: Daemon, name: str) -> tuple[str, int]:
    endpoint = next(e for e in daemon.endpoints if e.config.name == name)
    host, port = endpoint.addresses[0]
    return host, port


@asynccontextmanager
async def daemon_from(path: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@pytest.fixture
async def second_api() -> AsyncIterator[str]:
    """Another REST API, answering ``["second"]`` to every lookup: a changed target shows."""

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


async def test_unchanged_endpoint_keeps_its_connections_and_new_ones_start(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    write(path, tcp("kept", api.url), tcp("dropped", api.url))
    async with daemon_from(path) as daemon:
        kept = daemon.endpoints[0]
        client = await Client.connect(address_of(daemon, "kept"))
        assert await client.get("a") == b"200 v\n"
        dropped_address = address_of(daemon, "dropped")
        write(path, tcp("kept", api.url), tcp("added", api.url))
        assert await daemon.reload()
        assert daemon.endpoints[0] is kept
        assert await client.get("b") == b"200 v\n"  # the same connection, still served
        assert [e.config.name for e in daemon.endpoints] == ["kept", "added"]
        added = await Client.connect(address_of(daemon, "added"))
        assert await added.get("c") == b"200 v\n"
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*dropped_address)
        client.close()
        added.close()
        assert daemon.reloads["ok"] == 1


async def test_changed_endpoint_takes_over_its_socket_and_its_connections(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    """The open connections go on with the new config: a request sent after the reload is
    answered by it, never met by a closed connection."""
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        address = address_of(daemon, "lookup")
        old = await Client.connect(address)
        assert await old.get("k") == b"200 first\n"
        unused = await Client.connect(address)  # accepted by the old listener, not yet used
        write(path, tcp("lookup", second_api))
        assert await daemon.reload()
        assert address_of(daemon, "lookup") == address  # port 0 in the config: the same port
        fresh = await Client.connect(address)
        for client in (old, unused, fresh):
            assert await client.get("k") == b"200 second\n"
        assert len(daemon.endpoints[0].tracker.open) == 3
        for client in (old, unused, fresh):
            client.close()


async def test_a_request_in_flight_at_a_reload_is_answered_by_the_old_config_the_next_by_the_new(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    stalled = api.stall(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        client = await Client.connect(address_of(daemon, "lookup"))
        asking = asyncio.create_task(client.get("k"))
        await asyncio.wait_for(stalled.received.wait(), DEADLINE)
        write(path, tcp("lookup", second_api))
        assert await daemon.reload()
        assert not asking.done()
        stalled.release.set()
        assert await asking == b"200 first\n"  # the old endpoint's API, still open for it
        assert await client.get("k") == b"200 second\n"
        client.close()


async def test_connections_of_an_endpoint_replaced_by_another_mode_drain_and_close(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        address = address_of(daemon, "lookup")
        client = await Client.connect(address)
        assert await client.get("k") == b"200 v\n"
        socketmap = {**endpoint_config("socketmap-lookup", api.url), "name": "lookup"}
        write(path, socketmap)
        assert await daemon.reload()
        assert address_of(daemon, "lookup") == address
        assert await asyncio.wait_for(client.reader.read(), DEADLINE) == b""  # closed
        client.close()


async def test_a_shutdown_after_a_reload_closes_the_handed_over_connections(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        client = await Client.connect(address_of(daemon, "lookup"))
        assert await client.get("k") == b"200 first\n"
        write(path, tcp("lookup", second_api))
        assert await daemon.reload()
        assert await client.get("k") == b"200 second\n"
    assert await asyncio.wait_for(client.reader.read(), DEADLINE) == b""
    client.close()


async def test_listener_is_never_closed_during_a_reload(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    """Connections keep being accepted while a changed endpoint replaces the old one."""
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        address = address_of(daemon, "lookup")
        stop = asyncio.Event()
        attempted = asyncio.Event()
        refused = 0

        async def keep_connecting() -> None:
            nonlocal refused
            while not stop.is_set():
                try:
                    _, writer = await asyncio.open_connection(*address)
                except ConnectionRefusedError:
                    refused += 1
                else:
                    writer.close()
                attempted.set()

        connecting = asyncio.create_task(keep_connecting())
        for target in (second_api, api.url, second_api) * 5:
            write(path, tcp("lookup", target))
            reload = asyncio.create_task(daemon.reload())
            for _ in range(3):  # connections race the reload, and follow it
                attempted.clear()
                await attempted.wait()
            assert await reload
        stop.set()
        await connecting
        assert refused == 0


async def test_invalid_config_keeps_everything_running(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        client = await Client.connect(address_of(daemon, "lookup"))
        write(path, tcp("lookup", api.url, **{"request-timeout": "soon"}))
        with caplog.at_level(logging.ERROR):
            assert not await daemon.reload()
        assert "endpoints[0].request-timeout: Input should be a valid integer" in caplog.text
        assert "still running the previous one" in caplog.text
        path.write_text("{not json", encoding="utf-8")
        assert not await daemon.reload()
        assert await client.get("k") == b"200 v\n"
        assert daemon.reloads == {"failed": 2}
        client.close()


async def test_new_endpoint_that_cannot_listen_rolls_the_reload_back(
    api: FakeApi, second_api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with daemon_from(path) as daemon:
            before = daemon.endpoints[0]
            address = address_of(daemon, "lookup")
            write(path, tcp("lookup", second_api), tcp("clash", api.url, **{"bind-port": port}))
            with caplog.at_level(logging.ERROR):
                assert not await daemon.reload()
            assert f"endpoints[1] (clash): cannot listen on 127.0.0.1:{port}" in caplog.text
            assert daemon.endpoints == [before]
            client = await Client.connect(address)
            assert await client.get("k") == b"200 first\n"  # the old target, the old endpoint
            client.close()


async def test_changed_unix_endpoint_keeps_its_socket_file(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    api.answer_json(["first"])
    socket_path = str(tmp_path / "lookup.sock")
    path = tmp_path / "config.json"

    write(path, unix(socket_path, api.url, "0660"))
    async with daemon_from(path) as daemon:
        inode = os.stat(socket_path).st_ino
        write(path, unix(socket_path, second_api, "0666"))
        assert await daemon.reload()
        status = os.stat(socket_path)
        assert (status.st_ino, stat.S_IMODE(status.st_mode)) == (inode, 0o666)
        client = await Client.connect(socket_path)
        assert await client.get("k") == b"200 second\n"
        client.close()
    with pytest.raises(FileNotFoundError):  # removed at shutdown, once
        os.lstat(socket_path)


async def test_a_changed_token_file_restarts_the_endpoint(api: FakeApi, tmp_path: Path) -> None:
    api.answer_json(["v"])
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n", encoding="utf-8")
    endpoint = tcp("lookup", api.url, **{"auth-token-file": str(token_file)})
    del endpoint["auth-token"]
    path = tmp_path / "config.json"
    write(path, endpoint)
    async with daemon_from(path) as daemon:
        address = address_of(daemon, "lookup")
        token_file.write_text("new-token\n", encoding="utf-8")
        assert await daemon.reload()
        client = await Client.connect(address)
        assert await client.get("k") == b"200 v\n"
        client.close()
    assert api.seen[-1].headers["X-Auth-Token"] == "new-token"


async def test_metrics_listener_follows_the_config(api: FakeApi, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url))
    async with daemon_from(path) as daemon:
        assert daemon.admin is None
        write(path, tcp("lookup", api.url), metrics={"bind-port": 0})
        assert await daemon.reload()
        assert daemon.admin is not None
        host, port = daemon.admin.addresses[0]
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        write(path, tcp("lookup", api.url))
        assert await daemon.reload()
        assert daemon.admin is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)


async def readyz(address: tuple[str, int]) -> bytes:
    """The admin listener's ``/readyz`` answer, whole."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


async def test_metrics_listener_that_cannot_listen_rolls_the_reload_back(
    api: FakeApi, second_api: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As for an endpoint: the old listener and endpoints stay, and the next reload tries again."""
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url), metrics={"bind-port": 0})
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async with daemon_from(path) as daemon:
            assert daemon.admin is not None
            old_admin, old_address = daemon.admin, daemon.admin.addresses[0]
            write(path, tcp("lookup", second_api), metrics={"bind-port": port})
            with caplog.at_level(logging.ERROR):
                assert not await daemon.reload()
            assert f"reload: metrics: cannot listen on 127.0.0.1:{port}" in caplog.text
            assert daemon.admin is old_admin
            assert (await readyz(old_address)).endswith(b"\r\n\r\nready\n")
            client = await Client.connect(address_of(daemon, "lookup"))
            assert await client.get("k") == b"200 first\n"  # the old endpoint
            client.close()

            taken.close()  # the same file again, now that the port is free
            assert await daemon.reload()
            assert daemon.admin.addresses == [("127.0.0.1", port)]
            assert (await readyz(("127.0.0.1", port))).endswith(b"ready\n")
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*old_address)
            client = await Client.connect(address_of(daemon, "lookup"))
            assert await client.get("k") == b"200 second\n"
            client.close()
            assert daemon.reloads == {"failed": 1, "ok": 1}
    finally:
        taken.close()


async def test_metrics_listener_moves_to_another_address_on_its_port(
    api: FakeApi, tmp_path: Path
) -> None:
    """The old listener is in the way of the new one on the same port: it gives way, and comes
    back if the new one still cannot listen (the port is taken on another address)."""
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url), metrics={"bind-port": 0})
    async with daemon_from(path) as daemon:
        assert daemon.admin is not None
        _, port = daemon.admin.addresses[0]
        with socket.socket() as taken:
            taken.bind(("127.0.0.2", port))
            taken.listen()
            write(
                path, tcp("lookup", api.url), metrics={"bind-address": "0.0.0.0", "bind-port": port}
            )
            assert not await daemon.reload()
            assert daemon.admin.addresses == [("127.0.0.1", port)]
            assert (await readyz(("127.0.0.1", port))).endswith(b"ready\n")
        assert await daemon.reload()
        assert daemon.admin.addresses == [("0.0.0.0", port)]
        assert (await readyz(("127.0.0.1", port))).endswith(b"ready\n")


async def test_metrics_listener_is_closed_first_only_for_a_port_in_use(
    api: FakeApi, tmp_path: Path
) -> None:
    """An address that is not this host's (EADDRNOTAVAIL) is not the old listener's doing: it
    keeps serving, untouched, rather than closing and listening again."""
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url), metrics={"bind-port": 0})
    async with daemon_from(path) as daemon:
        assert daemon.admin is not None
        old_admin, (_, port) = daemon.admin, daemon.admin.addresses[0]
        write(
            path, tcp("lookup", api.url), metrics={"bind-address": "192.0.2.1", "bind-port": port}
        )
        assert not await daemon.reload()
        assert daemon.admin is old_admin
        assert (await readyz(("127.0.0.1", port))).endswith(b"ready\n")


async def test_metrics_off_after_a_failed_reload_come_back_with_the_same_settings(
    api: FakeApi, tmp_path: Path
) -> None:
    """When a failed move leaves no listener (neither the new nor the old one could listen),
    the settings the daemon runs are no longer "unchanged": the next reload starts one."""
    path = tmp_path / "config.json"
    write(path, tcp("lookup", api.url), metrics={"bind-port": 0})
    async with daemon_from(path) as daemon:
        assert daemon.admin is not None
        _, port = daemon.admin.addresses[0]
        write(path, tcp("lookup", api.url), metrics={"bind-port": port})
        assert await daemon.reload()  # the running settings are now the file's, port and all
        # what _next_admin leaves when the old listener cannot listen again either: a race
        # (another process takes the port in between) that a test cannot stage without one
        await daemon.admin.stop()
        daemon.admin = None
        assert await daemon.reload()
        assert daemon.admin is not None
        assert (await readyz(("127.0.0.1", port))).endswith(b"ready\n")


# A real SIGHUP to the daemon in a child process


async def test_sighup_reloads_with_systemd_notifications(
    api: FakeApi, second_api: str, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp("kept", api.url), tcp("changed", api.url))
    notify_path = tmp_path / "notify"
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        notify_socket.setblocking(False)

        async def notified() -> bytes:
            return await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), DEADLINE)

        connector = await spawn(str(path), env={"NOTIFY_SOCKET": str(notify_path)})
        ports = {}
        for _ in range(2):
            line = await connector.expect(LISTENING)
            ports[line["name"]] = int(line["port"])
        assert (await notified()).startswith(b"READY=1")
        kept = await Client.connect(("127.0.0.1", ports["kept"]))
        assert await kept.get("k") == b"200 first\n"

        write(path, tcp("kept", api.url), tcp("changed", second_api))
        connector.process.send_signal(signal.SIGHUP)
        assert (await notified()).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert (await notified()).startswith(b"READY=1")
        await connector.expect(LISTENING)  # the changed endpoint, on its old socket
        assert await kept.get("k") == b"200 first\n"  # same connection, untouched
        changed = await Client.connect(("127.0.0.1", ports["changed"]))
        assert await changed.get("k") == b"200 second\n"

        path.write_text('{"endpoints": [{"name": "x"}]}', encoding="utf-8")
        connector.process.send_signal(signal.SIGHUP)
        assert (await notified()).startswith(b"RELOADING=1")
        assert (await notified()).startswith(b"READY=1")
        await connector.expect(re.compile(r"endpoints\[0\]\.mode: Field required"))
        assert await kept.get("k") == b"200 first\n"

        kept.close()
        changed.close()
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0


async def test_rolled_back_reload_leaves_the_unix_socket_as_it_was(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    api.answer_json(["first"])
    socket_path = str(tmp_path / "lookup.sock")
    path = tmp_path / "config.json"

    write(path, unix(socket_path, api.url, "0660"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        clash = tcp("clash", api.url, **{"bind-port": taken.getsockname()[1]})
        async with daemon_from(path) as daemon:
            write(path, unix(socket_path, second_api, "0666"), clash)
            assert not await daemon.reload()
            assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660
            client = await Client.connect(socket_path)
            assert await client.get("k") == b"200 first\n"
            client.close()
