"""Several worker processes (``workers``): the real daemon in a child process, real signals.

Workers share a TCP port with ``SO_REUSEPORT``, so a test cannot use port 0 in the config; it
reserves a port instead by binding port 0 with ``SO_REUSEPORT`` itself (without listening, so it
never takes a connection) and holding that socket for the whole test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DEADLINE,
    Connector,
    FakeApi,
    Spawn,
    endpoint_config,
    request_held,
    tcp_get,
    write_config,
)
from ports import reserved_ports

WORKERS_READY = re.compile(r"supervising (\d+) workers")


async def kill_worker(connector: Connector, pid: int) -> None:
    """SIGKILL, then wait until the supervisor has seen the worker die."""
    os.kill(pid, signal.SIGKILL)
    await connector.expect(re.compile(rf"\(pid {pid}\) exited with status -9"))


async def unix_get(path: str, key: str) -> bytes:
    """One tcp_table lookup over a unix socket: the reply line."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(f"get {key}\n".encode())
        return await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()


def two_workers(tmp_path: Path, api: FakeApi, port: int, **top: Any) -> Path:
    """A config of two workers with one tcp-lookup endpoint on ``port``."""
    endpoint = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
    return write_config(tmp_path, {"workers": 2, "endpoints": [endpoint], **top})


def worker_pids(supervisor_pid: int) -> list[int]:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    return sorted(int(pid) for pid in children.split())


def pid_tags(api: FakeApi) -> set[str]:
    """The worker each API request came from: request ids start with the pid in hex."""
    return {seen.headers["X-Request-Id"].split("-")[0] for seen in api.seen}


@pytest.fixture
async def notifications(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.Queue[bytes]]]:
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""
    path = str(tmp_path / "notify")
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)

        async def receive() -> None:
            while True:
                await queue.put(await loop.sock_recv(sock, 4096))

        task = asyncio.create_task(receive())
        yield path, queue
        task.cancel()


async def next_notification(queue: asyncio.Queue[bytes]) -> bytes:
    return await asyncio.wait_for(queue.get(), DEADLINE)


async def start(spawn: Spawn, config: Path, notify_path: str | None = None) -> Connector:
    env = {"NOTIFY_SOCKET": notify_path} if notify_path else {}
    connector = await spawn(str(config), env=env)
    await connector.expect(WORKERS_READY)
    return connector


async def test_two_workers_share_the_port_and_both_answer(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["v"])
    with reserved_ports() as (port,):
        config = two_workers(tmp_path, api, port)
        connector = await start(spawn, config)
        await connector.expect(re.compile(r"listening on"))
        await connector.expect(re.compile(r"listening on"))
        assert len(worker_pids(connector.process.pid)) == 2
        replies = await asyncio.gather(*(tcp_get(port, f"k{i}") for i in range(64)))
        assert set(replies) == {b"200 v\n"}
        assert len(pid_tags(api)) == 2, "the kernel gave every connection to one worker"
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0


async def test_readiness_reload_and_stopping_speak_for_all_workers(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    notify_path, queue = notifications
    api.answer_json(["v"])
    with reserved_ports() as (port,):
        config = two_workers(tmp_path, api, port)
        connector = await start(spawn, config, notify_path)
        assert await next_notification(queue) == b"READY=1\nSTATUS=serving with 2 workers"
        client = await asyncio.open_connection("127.0.0.1", port)
        client[1].write(b"get before\n")
        assert await asyncio.wait_for(client[0].readline(), DEADLINE) == b"200 v\n"

        connector.process.send_signal(signal.SIGHUP)
        assert (await next_notification(queue)).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert await next_notification(queue) == b"READY=1\nSTATUS=serving with 2 workers"
        assert queue.empty()
        client[1].write(b"get after\n")  # an unchanged endpoint keeps its connections
        assert await asyncio.wait_for(client[0].readline(), DEADLINE) == b"200 v\n"
        client[1].close()

        connector.process.send_signal(signal.SIGTERM)
        assert await next_notification(queue) == b"STOPPING=1"
        assert await connector.finish() == 0


async def test_a_worker_that_dies_is_restarted(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    notify_path, queue = notifications
    api.answer_json(["v"])
    with reserved_ports() as (port,):
        config = two_workers(tmp_path, api, port)
        connector = await start(spawn, config, notify_path)
        assert (await next_notification(queue)).startswith(b"READY=1")
        victim = worker_pids(connector.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        await connector.expect(re.compile(rf"worker \d \(pid {victim}\) exited with status -9"))
        await connector.expect(re.compile(r"listening on"))  # the new worker
        pids = worker_pids(connector.process.pid)
        assert len(pids) == 2
        assert victim not in pids
        assert {await tcp_get(port, f"k{i}") for i in range(16)} == {b"200 v\n"}
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0


async def test_a_worker_that_cannot_listen_stops_everything(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = two_workers(tmp_path, api, port)
        connector = await spawn(str(config))
        assert await connector.finish() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in connector.stderr
    assert "could not start; stopping" in connector.stderr


async def test_workers_need_fixed_ports(api: FakeApi, tmp_path: Path, spawn: Spawn) -> None:
    endpoint = endpoint_config("tcp-lookup", api.url)  # bind-port 0
    config = write_config(tmp_path, {"workers": 2, "endpoints": [endpoint]})
    connector = await spawn(str(config))
    assert await connector.finish() == 78
    assert "config error: workers: several workers need fixed ports" in connector.stderr


async def test_unix_socket_endpoints_are_served_by_the_first_worker(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    api.answer_json(["v"])
    socket_path = f"/tmp/prac-{os.getpid()}-{id(tmp_path):x}.sock"
    with reserved_ports() as (port,):
        tcp = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        unix = {**endpoint_config("socketmap-lookup", api.url), "bind-path": socket_path}
        del unix["bind-port"]
        config = write_config(tmp_path, {"workers": 2, "endpoints": [tcp, unix]})
        connector = await start(spawn, config)
        try:
            for _ in range(3):  # tcp in both workers, unix in the first only
                await connector.expect(re.compile(r"listening on"))
            reader, writer = await asyncio.open_unix_connection(socket_path)
            writer.write(b"5:map k,")
            assert await asyncio.wait_for(reader.readexactly(7), DEADLINE) == b"4:OK v,"
            writer.close()
            connector.process.send_signal(signal.SIGTERM)
            assert await connector.finish() == 0
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)
    assert connector.stderr.count(f"listening on unix:{socket_path}") == 1
    assert "Traceback" not in connector.stderr


async def test_a_second_signal_kills_the_workers_and_exits_1(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    """As a single process does: a drain cut short by a second signal is not a clean stop."""
    stalled = api.stall(["v"])
    with reserved_ports() as (port,):
        config = two_workers(tmp_path, api, port, **{"shutdown-timeout": 60_000})
        connector = await start(spawn, config)
        for _ in range(2):
            await connector.expect(re.compile(r"listening on"))
        async with request_held(port, stalled) as (reader, _):
            connector.process.send_signal(signal.SIGTERM)
            await connector.expect(re.compile(r"stopping: answering requests already received"))
            connector.process.send_signal(signal.SIGTERM)
            assert await connector.finish() == 1, connector.stderr
            assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # never answered
    assert "second SIGTERM: stopping the workers at once" in connector.stderr


async def test_a_restarted_worker_starts_from_the_config_the_workers_run(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    """Not from a reload the workers rejected (a port taken), but from one they applied."""
    notify_path, queue = notifications
    api.answer_json(["v"])
    first_listener = re.compile(r"endpoint \S+ \(tcp-lookup\) listening on|cannot listen on")
    with reserved_ports(2) as (port, added_port), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        connector = await start(spawn, two_workers(tmp_path, api, port), notify_path)
        assert (await next_notification(queue)).startswith(b"READY=1")

        async def reload_then_restart_a_worker(*endpoints: dict[str, Any]) -> str:
            """Reload with ``endpoints``, kill a worker: what its successor first listens on."""
            write_config(tmp_path, {"workers": 2, "endpoints": list(endpoints)})
            connector.process.send_signal(signal.SIGHUP)
            assert (await next_notification(queue)).startswith(b"RELOADING=1")
            assert (await next_notification(queue)).startswith(b"READY=1")
            for _ in range(2):  # each worker's outcome
                await connector.expect(re.compile(r"reload(ed)?: "))
            victim = worker_pids(connector.process.pid)[0]
            await kill_worker(connector, victim)
            first = (await connector.expect(first_listener))[0]
            assert {await tcp_get(port, f"k{i}") for i in range(16)} == {b"200 v\n"}
            return first

        lookup = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        clash = {**lookup, "name": "clash", "bind-port": taken.getsockname()[1]}
        first = await reload_then_restart_a_worker(clash, lookup)
        assert first == "endpoint test-tcp-lookup (tcp-lookup) listening on", connector.stderr
        added = {**lookup, "name": "added", "bind-port": added_port}
        first = await reload_then_restart_a_worker(added, lookup)
        assert first == "endpoint added (tcp-lookup) listening on", connector.stderr
        assert await tcp_get(added_port, "k") == b"200 v\n"
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
    assert "worker 0 kept its previous config" in connector.stderr


def unix_lookup(name: str, path: str, api: FakeApi) -> dict[str, Any]:
    """A tcp-lookup endpoint on unix socket ``path``: only worker 0 serves it."""
    endpoint = {**endpoint_config("tcp-lookup", api.url), "name": name, "bind-path": path}
    del endpoint["bind-port"], endpoint["bind-address"]
    return endpoint


@contextmanager
def unix_paths(count: int) -> Iterator[list[str]]:
    """Short unix socket paths (tmp_path is too long for sun_path), removed at the end."""
    paths = [f"/tmp/prac-{os.getpid()}-{id(object()):x}-{i}.sock" for i in range(count)]
    try:
        yield paths
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@contextmanager
def stalled(path: str) -> Iterator[Callable[[], None]]:
    """A listener on unix socket ``path`` whose queue is full: a worker adding an endpoint there
    stops in its stale-socket check (a blocking connect), reload or start-up under way, until
    the returned ``release`` closes it; the connect is then refused and the endpoint binds."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX))
        listener.bind(path)
        listener.listen(0)
        while True:  # fill the queue: a backlog of 0 still takes one
            client = stack.enter_context(socket.socket(socket.AF_UNIX))
            client.setblocking(False)
            try:
                client.connect(path)
            except BlockingIOError:
                break
        yield stack.close


def serving_unix_socket(path: str, pids: list[int]) -> int:
    """Which of ``pids`` listens on unix socket ``path`` (worker 0, whatever its pid)."""
    rows = [line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:]]
    sockets = {f"socket:[{row[6]}]" for row in rows if row[-1] == path}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        if sockets & {os.readlink(fd) for fd in fds.iterdir()}:
            return pid
    pytest.fail(f"no worker listens on {path}")


async def test_a_reload_answer_names_the_config_the_worker_read(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    """A valid reload, then an invalid one while worker 0 still applies the first: worker 0
    restarts from the valid one it applied, not from its start's config."""
    notify_path, queue = notifications
    api.answer_json(["v"])
    with reserved_ports(2) as (port, added_port), unix_paths(2) as (served, blocked):
        lookup = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        first = unix_lookup("first", served, api)
        config = write_config(tmp_path, {"workers": 2, "endpoints": [lookup, first]})
        connector = await start(spawn, config, notify_path)
        assert (await next_notification(queue)).startswith(b"READY=1")
        worker_0 = serving_unix_socket(served, worker_pids(connector.process.pid))
        with stalled(blocked) as release:
            added = {**lookup, "name": "added", "bind-port": added_port}
            endpoints = [lookup, first, added, unix_lookup("second", blocked, api)]
            write_config(tmp_path, {"workers": 2, "endpoints": endpoints})
            connector.process.send_signal(signal.SIGHUP)
            assert (await next_notification(queue)).startswith(b"RELOADING=1")
            for _ in range(2):  # worker 1 applied it; worker 0 read it and waits on `blocked`
                await connector.expect(re.compile(r"endpoint added \(tcp-lookup\) listening on"))
            config.write_text("{", encoding="utf-8")
            connector.process.send_signal(signal.SIGHUP)
            assert (await next_notification(queue)).startswith(b"RELOADING=1")
            release()
            assert await next_notification(queue) == b"READY=1\nSTATUS=serving with 2 workers"
        await kill_worker(connector, worker_0)
        await connector.expect(re.compile(rf"listening on unix:{re.escape(blocked)},"))
        assert await unix_get(blocked, "k") == b"200 v\n"
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
    assert "applied a config file that changed" not in connector.stderr


async def test_a_file_changed_after_the_supervisor_read_it_is_read_again(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    """Worker 0, busy starting, reads the file after it changed again (no SIGHUP): the
    supervisor reads it again and restarts worker 0 from what it applied, not the older one."""
    notify_path, queue = notifications
    api.answer_json(["v"])
    with reserved_ports(3) as (port, one_port, two_port), unix_paths(1) as (blocked,):
        lookup = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        first = unix_lookup("first", blocked, api)
        with stalled(blocked) as release:
            config = write_config(tmp_path, {"workers": 2, "endpoints": [lookup, first]})
            connector = await start(spawn, config, notify_path)  # worker 0 waits on `blocked`
            one = {**lookup, "name": "one", "bind-port": one_port}
            write_config(tmp_path, {"workers": 2, "endpoints": [lookup, first, one]})
            connector.process.send_signal(signal.SIGHUP)
            assert (await next_notification(queue)).startswith(b"RELOADING=1")
            await connector.expect(re.compile(r"endpoint one \(tcp-lookup\) listening on"))
            two = {**lookup, "name": "two", "bind-port": two_port}
            write_config(tmp_path, {"workers": 2, "endpoints": [lookup, first, two]})
            release()
            assert await next_notification(queue) == b"READY=1\nSTATUS=serving with 2 workers"
        await connector.expect(re.compile(r"endpoint two \(tcp-lookup\) listening on"))
        await connector.expect(re.compile(r"reloaded: "))  # worker 0's; then its X_RELOAD is sent
        assert await unix_get(blocked, "k") == b"200 v\n"  # answered after it
        worker_0 = serving_unix_socket(blocked, worker_pids(connector.process.pid))
        await kill_worker(connector, worker_0)
        line = await connector.expect(re.compile(r"endpoint (one|two) \(tcp-lookup\) listening"))
        assert line[1] == "two", connector.stderr
        assert await tcp_get(two_port, "k") == b"200 v\n"
        connector.process.send_signal(signal.SIGTERM)
        assert await connector.finish() == 0
    assert "worker 0 applied a config file that changed" not in connector.stderr


async def test_a_restarted_worker_is_ready_only_once_it_caught_up_with_the_reload(
    api: FakeApi,
    tmp_path: Path,
    spawn: Spawn,
    notifications: tuple[str, asyncio.Queue[bytes]],
) -> None:
    """Its start-up READY=1 is not its reload's: systemd hears READY=1 only after that."""
    notify_path, queue = notifications
    api.answer_json(["v"])
    with reserved_ports(2) as (port, added_port), unix_paths(2) as (served, blocked):
        lookup = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        first = unix_lookup("first", served, api)
        config = write_config(tmp_path, {"workers": 2, "endpoints": [lookup, first]})
        connector = await start(spawn, config, notify_path)
        assert (await next_notification(queue)).startswith(b"READY=1")
        worker_0 = serving_unix_socket(served, worker_pids(connector.process.pid))
        added_line = re.compile(r"endpoint added \(tcp-lookup\) listening on")
        with stalled(blocked) as release:
            added = {**lookup, "name": "added", "bind-port": added_port}
            endpoints = [lookup, first, added, unix_lookup("second", blocked, api)]
            write_config(tmp_path, {"workers": 2, "endpoints": endpoints})
            connector.process.send_signal(signal.SIGHUP)
            assert (await next_notification(queue)).startswith(b"RELOADING=1")
            for _ in range(2):  # worker 1 applied it; worker 0 read it and waits on `blocked`
                await connector.expect(added_line)
            await kill_worker(connector, worker_0)  # before it answered the reload
            # its successor started (READY=1 sent), then reloads and waits on `blocked` again
            await connector.expect(added_line)
            connector.process.send_signal(signal.SIGTERM)  # handled after that READY=1
            assert await next_notification(queue) == b"STOPPING=1"
            release()
        assert await connector.finish() == 0, connector.stderr


async def test_a_worker_killed_before_it_started_gives_status_1(
    api: FakeApi, tmp_path: Path, spawn: Spawn
) -> None:
    """Not 256 - 9 = 247: a killed worker has no exit status of its own to pass on."""
    with reserved_ports() as (port,), unix_paths(1) as (blocked,), stalled(blocked):
        lookup = endpoint_config("tcp-lookup", api.url, **{"bind-port": port})
        endpoints = [lookup, unix_lookup("first", blocked, api)]
        connector = await start(
            spawn, write_config(tmp_path, {"workers": 2, "endpoints": endpoints})
        )
        for pid in worker_pids(connector.process.pid):  # worker 0 still waits on `blocked`
            os.kill(pid, signal.SIGKILL)
        assert await connector.finish() == 1, connector.stderr
    assert "could not start; stopping" in connector.stderr
