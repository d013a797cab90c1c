"""The administrator's commands, run as real processes: check-config, query; systemd readiness."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeApi, endpoint_config

FIXTURES = Path(__file__).parent / "fixtures"


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "postfix_rest_api_connector",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def write_config(tmp_path: Path, *endpoints: dict[str, Any]) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"endpoints": list(endpoints)}))
    return str(path)


async def test_check_config_summarises_without_secrets() -> None:
    status, stdout, stderr = await run("check-config", str(FIXTURES / "kotlin-predecessor.json"))
    assert status == 0, stderr
    assert "OK, 4 endpoint(s)" in stdout
    assert (
        "domain-lookup: tcp-lookup on 0.0.0.0:9001 -> http://localhost:9000/api/postfix/domain"
        in stdout
    )
    assert "(auth: x-auth-token inline, timeout 2000 ms)" in stdout
    assert "test123" not in stdout + stderr


async def test_check_config_reports_problems_with_exit_78(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"name": "x", "mode": "nope", "target": "http://a/"})
    status, stdout, stderr = await run("check-config", path)
    assert status == 78
    assert stdout == ""
    assert "config error: endpoints[0].mode: Input should be" in stderr
    assert "config error: endpoints[0].target: must be an http" not in stderr


@pytest.mark.parametrize(
    "case",
    [
        ((["a@x", "b@y"], 200), 0, "a@x,b@y\n", "b'200 a@x,b@y\\n'"),
        (([], 404), 1, "", "b'500 not%20found\\n'"),
        ((["x"], 503), 75, "", "b'400 API%20answered%20HTTP%20503\\n'"),
    ],
    ids=["found", "not found", "error"],
)
async def test_query_tcp_endpoint_like_postmap(
    api: FakeApi, tmp_path: Path, case: tuple[tuple[list[str], int], int, str, str]
) -> None:
    answer, status, stdout, postfix_gets = case
    api.answer_json(*answer)
    config = endpoint_config("tcp-lookup", api.url, **{"retries": 0})
    got_status, got_stdout, stderr = await run(
        "query", write_config(tmp_path, config), "test-tcp-lookup", "user+tag@example.com"
    )
    assert (got_status, got_stdout) == (status, stdout), stderr
    assert f"postfix gets: {postfix_gets}" in stderr
    assert api.seen[0].query["key"] == "user+tag@example.com"


async def test_query_socketmap_sends_the_map_name(api: FakeApi, tmp_path: Path) -> None:
    api.answer_json(["v"])
    config = endpoint_config("socketmap-lookup", api.url)
    status, stdout, stderr = await run(
        "query", write_config(tmp_path, config), "test-socketmap-lookup", "k", "--map", "aliases"
    )
    assert (status, stdout) == (0, "v\n"), stderr
    assert "postfix gets: b'4:OK v,'" in stderr
    assert api.seen[0].query == {"name": "aliases", "key": "k"}


async def test_query_policy_posts_the_attributes(api: FakeApi, tmp_path: Path) -> None:
    api.answer_text("REJECT go away")
    config = endpoint_config("policy", api.url)
    status, stdout, stderr = await run(
        "query",
        write_config(tmp_path, config),
        "test-policy",
        "recipient=a@b",
        "helo_name=x&y",
    )
    assert (status, stdout) == (0, "REJECT go away\n"), stderr
    assert "postfix gets: b'action=REJECT go away\\n\\n'" in stderr
    assert api.seen[0].body == b"recipient=a%40b&helo_name=x%26y"


async def test_query_unknown_endpoint_names_the_endpoints(api: FakeApi, tmp_path: Path) -> None:
    config = endpoint_config("tcp-lookup", api.url)
    status, _, stderr = await run("query", write_config(tmp_path, config), "nope", "k")
    assert status == 2
    assert "no endpoint named 'nope' (endpoints: test-tcp-lookup)" in stderr
    assert not api.seen


async def test_systemd_readiness_and_stopping_are_notified(api: FakeApi, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        notify_socket.setblocking(False)
        loop = asyncio.get_running_loop()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postfix_rest_api_connector",
            write_config(tmp_path, endpoint_config("tcp-lookup", api.url)),
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        )
        try:
            ready = await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 15)
            assert ready.startswith(b"READY=1\nSTATUS=serving 1 endpoint(s)")
            process.send_signal(signal.SIGTERM)
            stopping = await asyncio.wait_for(loop.sock_recv(notify_socket, 4096), 15)
            assert stopping == b"STOPPING=1"
            assert await asyncio.wait_for(process.wait(), 15) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_json_log_lines_carry_the_request_id_and_no_token(
    api: FakeApi, tmp_path: Path
) -> None:
    api.answer_json(["v"])
    config = endpoint_config("tcp-lookup", api.url, **{"auth-token": "tok-SECRET-json"})
    status, _, stderr = await run(
        "query",
        write_config(tmp_path, config),
        "test-tcp-lookup",
        "k",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
    )
    assert status == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    request_id = api.seen[0].headers["X-Request-Id"]
    mine = [entry for entry in entries if entry["request_id"] == request_id]
    assert mine, entries
    assert {"time", "level", "logger", "request_id", "message"} <= mine[0].keys()
    assert "tok-SECRET-json" not in stderr


async def test_query_socketmap_without_a_map_name_is_refused(api: FakeApi, tmp_path: Path) -> None:
    config = endpoint_config("socketmap-lookup", api.url)
    status, _, stderr = await run(
        "query", write_config(tmp_path, config), "test-socketmap-lookup", "k"
    )
    assert status == 2
    assert "needs --map NAME" in stderr
    assert not api.seen


async def test_check_config_never_shows_credentials_in_the_target(tmp_path: Path) -> None:
    config = endpoint_config("tcp-lookup", "https://u:pw-SECRET@api.example/x?token=tok-SECRET")
    status, stdout, stderr = await run("check-config", write_config(tmp_path, config))
    assert status == 0, stderr
    assert "https://api.example/x" in stdout
    assert "SECRET" not in stdout + stderr
