"""tcp_table and socketmap end to end: Debian's real ``postmap -q`` asks the running connector.

postmap's exit status tells the three outcomes apart: 0 with the value on stdout is "found", 1 with
nothing on stderr is "not found", 1 with ``query error`` on stderr is an error. An API failure must
always be the last, never "not found" (that would bounce mail as "user unknown").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector

pytestmark = pytest.mark.postfix

MAP_NAME = "virtual_Map"
POSTMAP_DEADLINE = 30.0
"""Bounds a hung postmap; every case here finishes in well under a few seconds."""

MODES = [
    pytest.param("tcp-lookup", id="tcp"),
    pytest.param("socketmap-lookup", id="socketmap"),
]


@dataclass(frozen=True)
class PostmapResult:
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float

    def describe(self) -> str:
        return f"exit {self.returncode}, stdout {self.stdout!r}, stderr {self.stderr!r}"


@dataclass(frozen=True)
class Postmap:
    """Runs Debian's postmap with a private config directory, without blocking the event loop."""

    executable: str
    config_dir: Path

    async def query(self, table: str, key: str) -> PostmapResult:
        return await self._run(["-q", key, table], stdin=None)

    async def query_stdin(self, table: str, keys: list[str]) -> PostmapResult:
        """``postmap -q - TABLE``: one key per line, all over one connection."""
        return await self._run(["-q", "-", table], stdin="".join(f"{k}\n" for k in keys).encode())

    async def _run(self, arguments: list[str], stdin: bytes | None) -> PostmapResult:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            self.executable,
            "-c",
            str(self.config_dir),
            *arguments,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(stdin), POSTMAP_DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"postmap {arguments} did not finish within {POSTMAP_DEADLINE} s")
        assert process.returncode is not None
        return PostmapResult(
            process.returncode,
            stdout,
            stderr.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


def write_config_file(path: Path, text: str) -> None:
    """Write a Postfix config file dated in the past.

    Postfix re-reads a config file modified in the last few seconds until it looks settled,
    which costs about 2 s per postmap run.
    """
    path.write_text(text, encoding="utf-8")
    settled = time.time() - 60
    os.utime(path, (settled, settled))


@pytest.fixture
def postmap(tmp_path: Path) -> Postmap:
    return private_postmap(tmp_path)


def private_postmap(tmp_path: Path) -> Postmap:
    """Debian's postmap with a near-empty main.cf of its own under ``tmp_path``."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    executable = shutil.which("postmap", path=path)
    if executable is None:
        pytest.fail(
            "postmap not found: install Debian's postfix: echo 'postfix postfix/main_mailer_type"
            " select No configuration' | debconf-set-selections && DEBIAN_FRONTEND=noninteractive"
            " apt-get install -y --no-install-recommends postfix"
        )
    config_dir = tmp_path / "postfix"
    config_dir.mkdir()
    write_config_file(config_dir / "main.cf", "compatibility_level = 3.6\n")
    return Postmap(executable, config_dir)


def table_name(mode: str, address: tuple[str, int]) -> str:
    host, port = address
    if mode == "tcp-lookup":
        return f"tcp:{host}:{port}"
    return f"socketmap:inet:{host}:{port}:{MAP_NAME}"


@asynccontextmanager
async def lookup_table(api: FakeApi, mode: str, **extra: Any) -> AsyncIterator[str]:
    """A running connector asking ``api``; yields the Postfix table name that reaches it."""
    async with running_connector(endpoint_config(mode, f"{api.url}/lookup", **extra)) as daemon:
        yield table_name(mode, endpoint_address(daemon))


def assert_api_asked_for(api: FakeApi, mode: str, keys: list[str]) -> None:
    """The API got one GET per key, in order, each key decoded exactly as Postfix was given it."""
    assert [seen.query.get("key") for seen in api.seen] == keys
    for seen, key in zip(api.seen, keys, strict=True):
        assert seen.method == "GET"
        assert seen.path == "/lookup"
        assert seen.headers.get("X-Auth-Token") == "s3cret-token"
        # Properly percent-encoded: no literal '+' or space that a form decoder would misread.
        assert "+" not in seen.raw_query
        assert " " not in seen.raw_query
        raw = dict(part.split("=", 1) for part in seen.raw_query.split("&"))
        assert unquote(raw["key"], errors="strict") == key
        if mode == "socketmap-lookup":
            assert seen.query.get("name") == MAP_NAME
            assert list(raw) == ["name", "key"]
        else:
            assert list(raw) == ["key"]


KEYS = [
    pytest.param("plus+ext@example.com", id="plus"),
    pytest.param("a b%c  d%20e", id="space-percent"),
    pytest.param("müller@exämple.com", id="utf8"),
    pytest.param("User@Example.COM", id="mixed-case"),
    pytest.param("x,y:z@example.com", id="comma-colon"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key", KEYS)
async def test_found_key_reaches_api_exactly(
    api: FakeApi, postmap: Postmap, mode: str, key: str
) -> None:
    api.answer_json(["dest@example.org"])
    async with lookup_table(api, mode) as table:
        result = await postmap.query(table, key)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"dest@example.org\n", ""), (
        result.describe()
    )
    assert_api_asked_for(api, mode, [key])


@pytest.mark.parametrize("mode", MODES)
async def test_plus_reaches_api_as_percent_2b(api: FakeApi, postmap: Postmap, mode: str) -> None:
    api.answer_json(["x@example.org"])
    async with lookup_table(api, mode) as table:
        result = await postmap.query(table, "plus+ext@example.com")
    assert result.returncode == 0, result.describe()
    assert "plus%2Bext" in api.seen[0].raw_query


@pytest.mark.parametrize("mode", MODES)
async def test_several_values_are_joined_with_commas(
    api: FakeApi, postmap: Postmap, mode: str
) -> None:
    api.answer_json(["one@example.org", "two@example.net", "three@example.com"])
    async with lookup_table(api, mode) as table:
        result = await postmap.query(table, "list@example.com")
    assert result.returncode == 0, result.describe()
    assert result.stdout == b"one@example.org,two@example.net,three@example.com\n"
    assert_api_asked_for(api, mode, ["list@example.com"])


@pytest.mark.parametrize("mode", MODES)
async def test_value_with_spaces_utf8_and_percent_is_byte_exact(
    api: FakeApi, postmap: Postmap, mode: str
) -> None:
    value = "Jürgen  Müller 100% sûr <jm@exämple.com>, a%20b"
    api.answer_json([value])
    async with lookup_table(api, mode) as table:
        result = await postmap.query(table, "jm@example.com")
    assert result.returncode == 0, result.describe()
    assert result.stdout == value.encode("utf-8") + b"\n"


@pytest.mark.parametrize("mode", MODES)
async def test_many_keys_on_stdin_each_get_their_own_answer(
    api: FakeApi, postmap: Postmap, mode: str
) -> None:
    """``postmap -q -`` sends every key over one connection; each answer must match its key."""
    keys = ["one@example.com", "missing@example.com", "two+x@example.com", "drei@exämple.de"]

    async def handler(request: web.Request) -> web.StreamResponse:
        key = request.query["key"]
        if key.startswith("missing"):
            return web.json_response([], status=404)
        return web.json_response([f"for {key}"])

    api.handler = handler
    async with lookup_table(api, mode) as table:
        result = await postmap.query_stdin(table, keys)
    assert result.returncode == 0, result.describe()
    assert result.stderr == ""
    assert result.stdout.decode("utf-8").splitlines() == [
        "one@example.com\tfor one@example.com",
        "two+x@example.com\tfor two+x@example.com",
        "drei@exämple.de\tfor drei@exämple.de",
    ]
    assert_api_asked_for(api, mode, keys)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("status", "body"), [(404, []), (200, [])], ids=["http-404", "empty-array"]
)
async def test_not_found_is_a_silent_miss(
    api: FakeApi, postmap: Postmap, mode: str, status: int, body: list[str]
) -> None:
    api.answer_json(body, status=status)
    async with lookup_table(api, mode) as table:
        result = await postmap.query(table, "nobody@example.com")
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", ""), result.describe()
    assert_api_asked_for(api, mode, ["nobody@example.com"])


async def _never_in_time(_: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response(["too late"])


def _answer_500(api: FakeApi) -> None:
    api.answer_json({"error": "boom"}, status=500)


def _answer_403(api: FakeApi) -> None:
    api.answer_json({"error": "bad token"}, status=403)


def _answer_slowly(api: FakeApi) -> None:
    api.handler = _never_in_time


def _answer_invalid_json(api: FakeApi) -> None:
    api.answer_text('["unterminated', content_type="application/json")


def _answer_wrong_shape(api: FakeApi) -> None:
    api.answer_json({"result": "dest@example.org"})


def _answer_html(api: FakeApi) -> None:
    api.answer_text("<html>maintenance</html>", content_type="text/html")


@dataclass(frozen=True)
class Failure:
    arrange: Callable[[FakeApi], None]
    socketmap_kind: str
    """How Postfix's socketmap client logs the connector's TEMP / PERM / TIMEOUT reply."""


FAILURES = [
    pytest.param(Failure(_answer_500, "temporary error"), id="http-500"),
    pytest.param(Failure(_answer_403, "permanent error"), id="http-403"),
    pytest.param(Failure(_answer_slowly, "timeout error"), id="timeout"),
    pytest.param(Failure(_answer_invalid_json, "temporary error"), id="invalid-json"),
    pytest.param(Failure(_answer_wrong_shape, "temporary error"), id="not-an-array"),
    pytest.param(Failure(_answer_html, "temporary error"), id="html"),
]


def assert_query_error(result: PostmapResult, mode: str, socketmap_kind: str) -> None:
    assert result.returncode != 0, result.describe()
    assert result.stdout == b"", result.describe()
    assert "query error" in result.stderr, result.describe()
    if mode == "socketmap-lookup":
        assert f"socketmap server {socketmap_kind}" in result.stderr, result.describe()
    # postmap gives up at once on a 400 / TEMP / PERM / TIMEOUT (tcp adds a 1 s pause), not
    # after ten reconnects 1 s apart as it does when the connector hangs up without answering.
    assert result.seconds < 5, result.describe()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failure", FAILURES)
async def test_api_failure_is_a_query_error_never_not_found(
    api: FakeApi, postmap: Postmap, mode: str, failure: Failure
) -> None:
    failure.arrange(api)
    async with lookup_table(api, mode, **{"request-timeout": 300}) as table:
        result = await postmap.query(table, "user@example.com")
    assert_query_error(result, mode, failure.socketmap_kind)
    assert [seen.query.get("key") for seen in api.seen][:1] == ["user@example.com"]


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound without listening: connecting to it is refused while it is held."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("mode", MODES)
async def test_unreachable_api_is_a_query_error(postmap: Postmap, mode: str) -> None:
    with refused_port() as port:
        endpoint = endpoint_config(mode, f"http://127.0.0.1:{port}/lookup")
        async with running_connector(endpoint) as daemon:
            result = await postmap.query(
                table_name(mode, endpoint_address(daemon)), "user@example.com"
            )
    assert_query_error(result, mode, "temporary error")
