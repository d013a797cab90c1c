"""The command line and the process lifecycle: the real daemon in a child process.

Endpoints listen on port 0; the test learns each real port from the process's own log line
``endpoint NAME (MODE) listening on 127.0.0.1:PORT, asking ...``. Every wait is bounded.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DEADLINE,
    LISTENING,
    MODULE,
    Connector,
    FakeApi,
    Spawn,
    endpoint_config,
    request_held,
    run_to_end,
    tcp_get,
    write_config,
)
from postfix_rest_api_connector import __version__, demo
from postfix_rest_api_connector.protocols.sasl import client_login

TOKEN = "tok-SECRET-123"
CONSOLE_SCRIPT = Path(sys.executable).with_name("postfix-rest-api-connector")
ROOT = Path(__file__).resolve().parent.parent
EXPECT_COMPILED = os.environ.get("EXPECT_BUILD", "interpreted") == "compiled"
"""scripts/test.sh runs the tests on both builds and says which through ``EXPECT_BUILD``; without
it, they run in the editable development install, which is always interpreted (setup.py)."""
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
LOG_LINE = re.compile(
    rf"(?P<timestamp>{TIMESTAMP})?(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<logger>\S+)"
    r" \[(?P<request_id>[^\]]+)\] (?P<message>.*)"
)


def tcp_endpoint(target: str, **extra: Any) -> dict[str, Any]:
    return endpoint_config("tcp-lookup", target, **{"auth-token": TOKEN, **extra})


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port that is taken: bound and listening on 127.0.0.1 for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def assert_not_served(port: int) -> None:
    """A new connection must be refused.

    The daemon logs ``stopping:`` just before it closes its listeners, so an attempt made right
    after that line may still land in the kernel's accept queue; the listener's close then resets
    it. Either way it is never served: a daemon that kept accepting would hold it open instead.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), DEADLINE
        )
    except ConnectionRefusedError:
        return
    try:
        writer.write(b"get other\n")
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()


# --version and usage


@pytest.mark.parametrize(
    "command",
    [pytest.param(MODULE, id="python-m"), pytest.param([str(CONSOLE_SCRIPT)], id="console-script")],
)
async def test_version(command: list[str]) -> None:
    """It names the build, so that an admin can tell whether an install got the compiled one."""
    build = "request path compiled with mypyc" if EXPECT_COMPILED else "interpreted"
    status, stdout, _ = await run_to_end(*command, "--version")
    assert (status, stdout) == (0, f"postfix-rest-api-connector {__version__} ({build})\n")


def test_every_module_of_the_request_path_is_built_as_expected() -> None:
    """All of setup.py's COMPILED list, or none: a mix would not be the build that was tested."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(target, ast.Name) and target.id == "COMPILED" for target in node.targets)
    )
    source = ROOT / "src" / "postfix_rest_api_connector"
    modules = [
        ".".join(
            ("postfix_rest_api_connector", *path.relative_to(source).with_suffix("").parts)
        ).removesuffix(".__init__")
        for package in ast.literal_eval(listed)
        for path in sorted((source / package).glob("*.py"))
    ]
    assert "postfix_rest_api_connector.connection.handler" in modules
    compiled = {
        module: not str(importlib.import_module(module).__file__).endswith(".py")
        for module in modules
    }
    assert compiled == dict.fromkeys(modules, EXPECT_COMPILED)


@pytest.mark.parametrize("with_config", [False, True], ids=["no-argument", "config-and-demo"])
async def test_usage_error(tmp_path: Path, with_config: bool) -> None:
    config = write_config(tmp_path, {"endpoints": [tcp_endpoint("http://127.0.0.1:9/")]})
    args = [str(config), "--demo"] if with_config else []
    status, stdout, stderr = await run_to_end(*MODULE, *args)
    assert status == 2
    assert stdout == ""
    assert stderr.startswith("usage: postfix-rest-api-connector")
    assert "give either a CONFIG path or --demo" in stderr


# config problems


def _endpoint(**extra: Any) -> dict[str, Any]:
    return tcp_endpoint("http://127.0.0.1:9/lookup", **extra)


CONFIG_PROBLEMS = [
    pytest.param(
        {
            "endpoints": [
                _endpoint(**{"bind-port": "25", "bind-prot": 25}),
                _endpoint(name="second", **{"auth-token": [TOKEN]}),
            ]
        },
        [
            "config error: endpoints[0].bind-port: ",
            "config error: endpoints[0].bind-prot: unknown key",
            "config error: endpoints[1].auth-token: ",
        ],
        id="unknown-key-and-wrong-types",
    ),
    pytest.param(
        {"endpoints": [_endpoint(name="same"), _endpoint(name="same")]},
        ["config error: endpoints[1].name: duplicate name 'same'"],
        id="duplicate-name",
    ),
    pytest.param(
        {"endpoints": [_endpoint()], "shutdown-timeout": "10s"},
        ["config error: shutdown-timeout: "],
        id="top-level-wrong-type",
    ),
]


@pytest.mark.parametrize(("document", "expected"), CONFIG_PROBLEMS)
async def test_config_problems_exit_78_with_one_line_each(
    tmp_path: Path, spawn: Spawn, document: Any, expected: list[str]
) -> None:
    connector = await spawn(str(write_config(tmp_path, document)))
    assert await connector.finish() == 78
    lines = connector.lines
    assert len(lines) == len(expected), connector.stderr
    for prefix in expected:
        assert sum(line.startswith(prefix) for line in lines) == 1, (prefix, connector.stderr)
    assert not LISTENING.search(connector.stderr)
    assert TOKEN not in connector.stderr


async def test_invalid_json_exits_78(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"endpoints": [\n', encoding="utf-8")
    connector = await spawn(str(path))
    assert await connector.finish() == 78
    assert len(connector.lines) == 1, connector.stderr
    assert connector.lines[0].startswith(f"config error: {path}: invalid JSON at line 2 column 1")


async def test_missing_config_file_exits_78(tmp_path: Path, spawn: Spawn) -> None:
    path = tmp_path / "absent.json"
    connector = await spawn(str(path))
    assert await connector.finish() == 78
    assert len(connector.lines) == 1, connector.stderr
    assert connector.lines[0].startswith(f"config error: {path}: cannot read: ")
    assert "No such file or directory" in connector.lines[0]


# start-up failure


async def test_port_taken_fails_fast_naming_endpoint_and_address(
    tmp_path: Path, spawn: Spawn
) -> None:
    with listening_socket() as taken:
        document = {
            "endpoints": [
                _endpoint(name="free"),
                _endpoint(name="clash", **{"bind-port": taken}),
            ]
        }
        started = time.monotonic()
        connector = await spawn(str(write_config(tmp_path, document)))
        status = await connector.finish()
        elapsed = time.monotonic() - started
    assert status != 0
    assert elapsed < 5, f"took {elapsed:.1f} s to give up"
    assert f"endpoints[1] (clash): cannot listen on 127.0.0.1:{taken}" in connector.stderr
    assert "Traceback" not in connector.stderr


# graceful stop


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_request_then_exits_0(
    tmp_path: Path, spawn: Spawn, api: FakeApi, signum: signal.Signals
) -> None:
    stalled = api.stall(["value"])
    config = write_config(tmp_path, {"endpoints": [tcp_endpoint(f"{api.url}/lookup")]})
    connector = await spawn(str(config))
    port = await connector.port()
    async with request_held(port, stalled) as (reader, _):
        connector.process.send_signal(signum)
        await connector.expect(re.compile(rf"received {signum.name}$"))
        await connector.expect(re.compile(r"stopping: "))
        await assert_not_served(port)
        stalled.release.set()
        assert await asyncio.wait_for(reader.readline(), DEADLINE) == b"200 value\n"
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
    assert await connector.finish() == 0, connector.stderr
    assert connector.lines[-1].endswith(" stopped"), connector.stderr


async def test_a_second_signal_exits_1_without_waiting(
    tmp_path: Path, spawn: Spawn, api: FakeApi
) -> None:
    """The drain is cut short, so the stop is not reported as clean (workers do the same)."""
    stalled = api.stall(["value"])
    endpoint = tcp_endpoint(f"{api.url}/lookup")
    config = write_config(tmp_path, {"shutdown-timeout": 60_000, "endpoints": [endpoint]})
    connector = await spawn(str(config))
    async with request_held(await connector.port(), stalled) as (reader, _):
        connector.process.send_signal(signal.SIGTERM)
        await connector.expect(re.compile(r"stopping: "))
        connector.process.send_signal(signal.SIGINT)
        assert await connector.finish() == 1, connector.stderr
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # never answered
    assert "second SIGINT: exiting without waiting" in connector.stderr


async def test_sigterm_right_after_first_listening_line_exits_0(
    tmp_path: Path, spawn: Spawn
) -> None:
    """Once an endpoint says it is listening it accepts mail traffic, so SIGTERM must be graceful.

    Many endpoints widen the time between the first ``listening`` line and the end of start-up.
    """
    endpoints = [_endpoint(name=f"e{index}") for index in range(40)]
    connector = await spawn(str(write_config(tmp_path, {"endpoints": endpoints})))
    await connector.port()
    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr


# logging


@dataclass(frozen=True)
class LogLevelCase:
    args: tuple[str, ...]
    env: dict[str, str]
    debug: bool


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(LogLevelCase(("--log-level", "DEBUG"), {}, True), id="option"),
        pytest.param(LogLevelCase((), {"LOG_LEVEL": "DEBUG"}, True), id="environment"),
        pytest.param(LogLevelCase((), {}, False), id="default-info"),
    ],
)
async def test_log_level_request_ids_and_no_secret(
    tmp_path: Path, spawn: Spawn, api: FakeApi, case: LogLevelCase
) -> None:
    api.answer_json(["value"])
    config = write_config(tmp_path, {"endpoints": [tcp_endpoint(f"{api.url}/lookup")]})
    connector = await spawn(*case.args, str(config), env=case.env)
    assert await tcp_get(await connector.port(), "k") == b"200 value\n"
    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr

    assert TOKEN not in connector.stderr
    assert api.seen[0].headers["X-Auth-Token"] == TOKEN
    request_id = api.seen[0].headers["X-Request-Id"]
    parsed = [LOG_LINE.fullmatch(line) for line in connector.lines]
    unparsed = [line for line, match in zip(connector.lines, parsed, strict=True) if not match]
    assert not unparsed, connector.stderr
    records = [match for match in parsed if match]
    levels = {match["level"] for match in records}
    if not case.debug:
        assert "DEBUG" not in levels, connector.stderr
        assert all(match["request_id"] == "-" for match in records), connector.stderr
        return
    tagged = [match for match in records if match["request_id"] != "-"]
    assert tagged, connector.stderr
    assert {match["request_id"] for match in tagged} == {request_id}, connector.stderr
    assert any(match["level"] == "DEBUG" for match in tagged), connector.stderr


@pytest.mark.parametrize("journal", [True, False], ids=["journald", "terminal"])
async def test_timestamps_only_without_journald(
    tmp_path: Path, spawn: Spawn, journal: bool
) -> None:
    config = write_config(tmp_path, {"endpoints": [_endpoint()]})
    env = {"JOURNAL_STREAM": "8:123456"} if journal else {}
    connector = await spawn(str(config), env=env)
    # an answered request proves the daemon is past start-up (see the test above)
    assert (await tcp_get(await connector.port(), "k")).startswith(b"400 ")
    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr
    assert len(connector.lines) >= 3, connector.stderr
    for line in connector.lines:
        assert bool(re.match(TIMESTAMP, line)) is not journal, line
        assert re.match(rf"(?:{TIMESTAMP})?INFO ", line), line


# the demo

DEMO_PORT = re.compile(
    r"^\s+(?P<mode>tcp-lookup|socketmap-lookup|policy|sasl)\s+127\.0\.0\.1:(?P<port>\d+)$"
)


def postmap_executable() -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    executable = shutil.which("postmap", path=path)
    if executable is None:
        pytest.fail("postmap not found: install Debian's postfix package (it provides postmap)")
    return executable


async def demo_ports(connector: Connector) -> dict[str, int]:
    """The ports the demo prints on stdout, read up to its last line."""
    stdout = connector.process.stdout
    assert stdout is not None
    ports: dict[str, int] = {}

    async def read() -> None:
        while (line := (await stdout.readline()).decode()) and "Stop with Ctrl-C." not in line:
            if match := DEMO_PORT.match(line.rstrip("\n")):
                ports[match["mode"]] = int(match["port"])

    await asyncio.wait_for(read(), DEADLINE)
    return ports


async def test_demo_answers_real_postmap_and_policy(tmp_path: Path, spawn: Spawn) -> None:
    postmap = postmap_executable()
    postfix_dir = tmp_path / "postfix"
    postfix_dir.mkdir()
    main_cf = postfix_dir / "main.cf"
    main_cf.write_text("", encoding="utf-8")
    settled = time.time() - 60  # Postfix waits ~2 s for a config file modified just now
    os.utime(main_cf, (settled, settled))

    connector = await spawn("--demo", "--demo-base-port", "0")
    ports = await demo_ports(connector)
    assert set(ports) == {"tcp-lookup", "socketmap-lookup", "policy", "sasl"}, connector.lines
    assert 0 not in ports.values()

    tcp_table = f"tcp:127.0.0.1:{ports['tcp-lookup']}"
    status, stdout, stderr = await run_to_end(
        postmap, "-c", str(postfix_dir), "-q", "example.com", tcp_table
    )
    assert (status, stdout) == (0, "example.com\n"), stderr
    socketmap = f"socketmap:inet:127.0.0.1:{ports['socketmap-lookup']}:aliases"
    status, stdout, stderr = await run_to_end(
        postmap, "-c", str(postfix_dir), "-q", "postmaster@example.com", socketmap
    )
    assert (status, stdout) == (0, "alice@example.com,bob@example.com\n"), stderr

    reader, writer = await asyncio.open_connection("127.0.0.1", ports["policy"])
    try:
        writer.write(b"request=smtpd_access_policy\nrecipient=blocked@example.com\n\n")
        reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), DEADLINE)
    finally:
        writer.close()
    assert reply == b"action=REJECT This mailbox does not accept mail\n\n"

    # the sample user logs in as the sample API names it
    reader, writer = await asyncio.open_connection("127.0.0.1", ports["sasl"])
    try:
        await asyncio.wait_for(reader.readuntil(b"DONE\n"), DEADLINE)
        writer.write(client_login(demo.DEMO_USER, demo.DEMO_PASSWORD))
        login = await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()
    assert login == b"OK\t1\tuser=alice\n"

    connector.process.send_signal(signal.SIGTERM)
    assert await connector.finish() == 0, connector.stderr
