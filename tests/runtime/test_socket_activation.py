"""Sockets passed by systemd (``listeners.SystemdSockets``), in this event loop: real listening
sockets made by the test stand in for the ones a socket unit passes, so reloads, a unix socket
file that belongs to systemd and the checks of a socket's kind are seen up close.
``tests/e2e/test_socket_activation.py`` runs the daemon under the real ``systemd-socket-activate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_config
from postfix_rest_api_connector.config import ConfigError, load_config, parse_config
from postfix_rest_api_connector.runtime.daemon import Daemon, Worker
from postfix_rest_api_connector.runtime.listeners import SystemdSockets, take_systemd_sockets

DEADLINE = 10.0


def write(path: Path, *endpoints: dict[str, Any]) -> None:
    path.write_text(json.dumps({"endpoints": list(endpoints)}), encoding="utf-8")


def tcp(target: str, **extra: Any) -> dict[str, Any]:
    """A tcp_table endpoint named ``lookup``; its own port (0) is not where it listens when
    systemd passes it a socket."""
    return {**endpoint_config("tcp-lookup", target, **extra), "name": "lookup"}


def unix(target: str, path: str, **extra: Any) -> dict[str, Any]:
    config = tcp(target, **{"bind-path": path, **extra})
    del config["bind-port"], config["bind-address"]
    return config


@contextmanager
def listening_tcp() -> Iterator[socket.socket]:
    """What ``ListenStream=127.0.0.1:PORT`` passes: a listening TCP socket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


@contextmanager
def listening_unix(path: str, mode: int = 0o640) -> Iterator[socket.socket]:
    """What ``ListenStream=/PATH`` with ``SocketMode=`` passes: the file made by systemd."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(16)
        yield sock


@asynccontextmanager
async def daemon_on(path: Path, systemd: SystemdSockets) -> AsyncIterator[Daemon]:
    daemon = Daemon(load_config(path), path, systemd=systemd)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def get(address: tuple[str, int] | str, key: str) -> bytes:
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()


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


async def test_a_reload_that_changes_the_endpoint_keeps_serving_the_passed_socket(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    """Connections keep being accepted across reloads, and the socket outlives the daemon:
    only the process's exit closes it."""
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    write(path, tcp(api.url))
    with listening_tcp() as passed:
        address = passed.getsockname()
        async with daemon_on(path, SystemdSockets({"lookup": [passed]})) as daemon:
            assert daemon.endpoints[0].addresses == [address]
            assert daemon.endpoints[0].from_systemd
            assert await get(address, "k") == b"200 first\n"
            stop, attempted = asyncio.Event(), asyncio.Event()
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
            for target in (second_api, api.url, second_api):
                write(path, tcp(target))
                reload = asyncio.create_task(daemon.reload())
                for _ in range(3):  # connections race the reload, and follow it
                    attempted.clear()
                    await attempted.wait()
                assert await reload
            stop.set()
            await connecting
            assert refused == 0
            assert daemon.endpoints[0].addresses == [address]
            assert await get(address, "k") == b"200 second\n"
        assert passed.fileno() != -1, "the daemon closed systemd's socket"
        with socket.create_connection(address, timeout=DEADLINE):  # still listening
            pass


async def test_an_endpoint_removed_by_a_reload_gets_its_passed_socket_back(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While no endpoint claims it, the socket stays open and queues; re-added, the endpoint
    answers what waited."""
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    other = {**tcp(api.url), "name": "other"}
    write(path, tcp(api.url), other)
    with listening_tcp() as passed:
        address = passed.getsockname()
        async with daemon_on(path, SystemdSockets({"lookup": [passed]})) as daemon:
            write(path, other)
            with caplog.at_level(logging.WARNING):
                assert await daemon.reload()
            reader, writer = await asyncio.open_connection(*address)  # queued, not refused
            writer.write(b"get waited\n")
            write(path, tcp(api.url), other)
            assert await daemon.reload()
            assert await asyncio.wait_for(reader.readline(), DEADLINE) == b"200 v\n"
            writer.close()
    assert [seen.query["key"] for seen in api.seen] == ["waited"]
    assert (
        "reload: endpoint lookup is gone; the socket systemd passed for it stays open, its"
        " connections waiting, until an endpoint of that name comes back"
    ) in caplog.text


async def test_a_changed_bind_port_is_not_used_and_says_so(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The socket unit decides where a passed socket listens; the config's port is checked but
    not bound, and a port that differs from the socket's is worth a warning."""
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    with listening_tcp() as passed, socket.socket() as elsewhere:
        elsewhere.bind(("127.0.0.1", 0))  # a port nobody listens on, held so nobody does
        port = elsewhere.getsockname()[1]
        write(path, tcp(api.url))
        async with daemon_on(path, SystemdSockets({"lookup": [passed]})) as daemon:
            write(path, tcp(api.url, **{"request-timeout": 1500, "bind-port": port}))
            with caplog.at_level(logging.WARNING):
                assert await daemon.reload()
            assert daemon.endpoints[0].addresses == [passed.getsockname()]
            assert await get(passed.getsockname(), "k") == b"200 v\n"
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
    assert (
        "endpoint lookup: the socket systemd passed listens elsewhere than its config's"
        f" 127.0.0.1:{port}, which is not used"
    ) in caplog.text


async def test_a_passed_unix_socket_file_is_systemds(
    api: FakeApi, second_api: str, tmp_path: Path
) -> None:
    """Neither socket-mode nor a reload nor the stop touches it: no chmod, no unlink."""
    api.answer_json(["first"])
    path = tmp_path / "config.json"
    socket_path = str(tmp_path / "lookup.sock")
    write(path, unix(api.url, socket_path, **{"socket-mode": "0600"}))
    with listening_unix(socket_path, 0o640) as passed:
        before = os.stat(socket_path)
        async with daemon_on(path, SystemdSockets({"lookup": [passed]})) as daemon:
            assert await get(socket_path, "k") == b"200 first\n"
            write(path, unix(second_api, socket_path, **{"socket-mode": "0666"}))
            assert await daemon.reload()
            assert await get(socket_path, "k") == b"200 second\n"
            after = os.stat(socket_path)
            assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, 0o640)
        after = os.stat(socket_path)  # still there after the stop, untouched
        assert (after.st_ino, stat.S_IMODE(after.st_mode)) == (before.st_ino, 0o640)


async def test_a_reload_that_no_longer_fits_the_passed_socket_is_refused(
    api: FakeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_json(["v"])
    path = tmp_path / "config.json"
    write(path, tcp(api.url))
    with listening_tcp() as passed:
        async with daemon_on(path, SystemdSockets({"lookup": [passed]})) as daemon:
            before = daemon.endpoints[0]
            write(path, unix(api.url, str(tmp_path / "lookup.sock")))
            with caplog.at_level(logging.ERROR):
                assert not await daemon.reload()
            assert daemon.endpoints == [before]
            assert await get(passed.getsockname(), "k") == b"200 v\n"
    assert (
        "endpoints[0].bind-path: the socket systemd passed (FileDescriptorName=lookup) is a TCP"
        " socket, but a bind-path endpoint serves a unix socket"
    ) in caplog.text
    assert not (tmp_path / "lookup.sock").exists()


def test_every_worker_serves_a_passed_unix_socket(api: FakeApi, tmp_path: Path) -> None:
    """Without systemd only worker 0 serves a unix socket; a passed one has one queue that
    every worker can accept from."""
    socket_path = str(tmp_path / "lookup.sock")
    config = parse_config({"workers": 2, "endpoints": [unix(api.url, socket_path)]})
    second = Worker(1, 2)
    assert Daemon(config, worker=second).endpoints == []
    with listening_unix(socket_path) as passed:
        daemon = Daemon(config, worker=second, systemd=SystemdSockets({"lookup": [passed]}))
        assert [endpoint.config.name for endpoint in daemon.endpoints] == ["lookup"]


def test_an_unclaimed_socket_is_closed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with listening_tcp() as claimed, listening_tcp() as stray:
        host, port = stray.getsockname()
        systemd = SystemdSockets({"lookup": [claimed], "lookp": [stray]})
        with caplog.at_level(logging.WARNING):
            systemd.close_unclaimed({"lookup", "policy"})
        assert stray.fileno() == -1
        assert claimed.fileno() != -1
        assert systemd.passes("lookup")
        assert not systemd.passes("lookp")
    [record] = caplog.records
    assert record.getMessage() == (
        f"systemd passed a socket named 'lookp' ({host}:{port}) that no endpoint claims: closed"
        " it; its socket unit's FileDescriptorName= must be an endpoint's name"
    )


@contextmanager
def connected_pair() -> Iterator[socket.socket]:
    """What ``Accept=yes`` passes: one connection, not a listening socket."""
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with one, two:
        yield one


@contextmanager
def datagram() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.mark.parametrize(
    ("endpoint", "make", "problem"),
    [
        pytest.param(
            "tcp",
            listening_unix,
            "endpoints[0].bind-port: the socket systemd passed (FileDescriptorName=lookup) is a"
            " unix socket, but a bind-port endpoint serves TCP: the socket unit needs"
            " ListenStream=ADDRESS:PORT, or the endpoint bind-path",
            id="unix-for-tcp",
        ),
        pytest.param(
            "unix",
            lambda _: listening_tcp(),
            "endpoints[0].bind-path: the socket systemd passed (FileDescriptorName=lookup) is a"
            " TCP socket, but a bind-path endpoint serves a unix socket: the socket unit needs"
            " ListenStream=/PATH, or the endpoint bind-port",
            id="tcp-for-unix",
        ),
        pytest.param(
            "tcp",
            lambda _: datagram(),
            "endpoints[0].bind-port: the socket systemd passed (FileDescriptorName=lookup) is"
            " not a stream socket: the socket unit needs ListenStream=",
            id="datagram",
        ),
        pytest.param(
            "unix",
            lambda _: connected_pair(),
            "endpoints[0].bind-path: the socket systemd passed (FileDescriptorName=lookup) is a"
            " connection, not a listening socket: the socket unit needs Accept=no",
            id="accept-yes",
        ),
    ],
)
def test_a_passed_socket_of_the_wrong_kind_is_a_config_error(
    tmp_path: Path, endpoint: str, make: Any, problem: str
) -> None:
    socket_path = str(tmp_path / "lookup.sock")
    target = "http://127.0.0.1:9/"
    config = parse_config(
        {"endpoints": [tcp(target) if endpoint == "tcp" else unix(target, socket_path)]}
    )
    with make(socket_path) as passed:
        systemd = SystemdSockets({"lookup": [passed]})
        with pytest.raises(ConfigError) as error:
            systemd.check(config)
    assert error.value.problems == [problem]


def test_a_passed_socket_of_the_right_kind_fits(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "lookup.sock")
    config = parse_config({"endpoints": [unix("http://127.0.0.1:9/", socket_path)]})
    with listening_unix(socket_path) as passed, listening_tcp() as unclaimed:
        SystemdSockets({"lookup": [passed], "other": [unclaimed]}).check(config)


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, id="another-pid"),
        pytest.param({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, id="no-pid"),
        pytest.param({"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"}, id="none"),
    ],
)
def test_variables_not_for_this_process_take_nothing_and_are_removed(
    environ: dict[str, str],
) -> None:
    """sd_listen_fds(3) with unset_environment: a worker or a command started later must never
    take descriptors meant for another process (or already taken)."""
    environ = {key: value.format(pid=os.getpid()) for key, value in environ.items()}
    environ["PATH"] = "/usr/bin"
    assert take_systemd_sockets(environ).kinds() == {}
    assert environ == {"PATH": "/usr/bin"}


def test_malformed_listen_fds_is_a_config_error() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}
    with pytest.raises(ConfigError) as error:
        take_systemd_sockets(environ)
    assert error.value.problems == ["LISTEN_FDS: 'two' is not a number of descriptors"]
    assert environ == {}
