"""A target per socketmap map (``maps``), ``value-field`` and the key in the path, end to end:
Debian's real ``postmap -q socketmap:inet:127.0.0.1:PORT:MAP`` asks the running connector, which
asks an aiohttp API on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from test_postmap import Postmap, private_postmap

from conftest import FakeApi, endpoint_address, endpoint_config, running_connector

pytestmark = pytest.mark.postfix


@pytest.fixture
def postmap(tmp_path: Path) -> Postmap:
    return private_postmap(tmp_path)


def answer_by_path(api: FakeApi, answers: dict[str, Any]) -> list[str]:
    """Each path prefix its own JSON answer (a callable gets the request); 404 elsewhere.
    Returns the raw paths asked for, percent-encoding kept (``SeenRequest.path`` is decoded)."""
    raw_paths: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        raw_paths.append(request.raw_path.partition("?")[0])
        for prefix, answer in answers.items():
            if request.path.startswith(prefix):
                value = answer(request) if callable(answer) else answer
                return web.json_response(value)
        return web.json_response([], status=404)

    api.handler = handler
    return raw_paths


@asynccontextmanager
async def socketmap(
    api: FakeApi, target: str | None = "/lookup", **extra: Any
) -> AsyncIterator[str]:
    """A running socketmap endpoint; yields ``socketmap:inet:HOST:PORT:`` to add a map name to.
    ``target`` is a path on the API, a whole URL, or ``None`` for none."""
    url = f"{api.url}{target}" if target and target.startswith("/") else target
    config = endpoint_config("socketmap-lookup", url or "", **extra)
    if url is None:
        del config["target"]
    async with running_connector(config) as daemon:
        host, port = endpoint_address(daemon)
        yield f"socketmap:inet:{host}:{port}:"


def per_map(api: FakeApi) -> dict[str, Any]:
    return {
        "aliases": f"{api.url}/aliases",
        "mailboxes": {"target": f"{api.url}/mailboxes", "value-field": "data.mailbox"},
    }


async def test_each_listed_map_asks_its_own_target_with_the_key_alone(
    api: FakeApi, postmap: Postmap
) -> None:
    answer_by_path(
        api,
        {
            "/aliases": ["alias@dest.example"],
            "/mailboxes": lambda r: {"data": {"mailbox": f"box/{r.query['key']}"}},
            "/lookup": ["from-the-endpoint-target"],
        },
    )
    async with socketmap(api, maps=per_map(api)) as table:
        aliases = await postmap.query(table + "aliases", "a+b@example.com")
        mailboxes = await postmap.query(table + "mailboxes", "m@example.com")
        other = await postmap.query(table + "virtual_Other", "o@example.com")
    assert (aliases.returncode, aliases.stdout) == (0, b"alias@dest.example\n"), aliases.describe()
    assert (mailboxes.returncode, mailboxes.stdout) == (0, b"box/m@example.com\n"), (
        mailboxes.describe()
    )
    assert (other.returncode, other.stdout) == (0, b"from-the-endpoint-target\n"), other.describe()
    assert [(seen.path, seen.raw_query) for seen in api.seen] == [
        ("/aliases", "key=a%2Bb%40example.com"),
        ("/mailboxes", "key=m%40example.com"),
        ("/lookup", "name=virtual_Other&key=o%40example.com"),
    ]
    assert all(seen.headers["X-Auth-Token"] == "s3cret-token" for seen in api.seen)


async def test_an_unlisted_map_without_a_target_is_a_permanent_error(
    api: FakeApi, postmap: Postmap
) -> None:
    answer_by_path(api, {"/aliases": ["alias@dest.example"]})
    async with socketmap(api, target=None, maps=per_map(api)) as table:
        typo = await postmap.query(table + "alaises", "a@example.com")
        listed = await postmap.query(table + "aliases", "a@example.com")
    assert typo.returncode == 1, typo.describe()
    assert typo.stdout == b"", typo.describe()
    assert "socketmap server permanent error: unknown map alaises" in typo.stderr, typo.describe()
    assert "query error" in typo.stderr, typo.describe()
    assert (listed.returncode, listed.stdout) == (0, b"alias@dest.example\n"), listed.describe()
    assert [seen.path for seen in api.seen] == ["/aliases"], "the typo never reaches the API"


@pytest.mark.parametrize(
    ("answer", "returncode", "stderr"),
    [
        ({"data": {"mailbox": None}}, 1, ""),
        ({"data": {"mailbox": ""}}, 1, ""),
        ({"data": {}}, 1, "socketmap server temporary error: API answer has no value-field"),
        ({"data": {"mailbox": True}}, 1, "socketmap server temporary error: API answered with a"),
        ({"data": {"mailbox": {"id": 1}}}, 1, "socketmap server temporary error"),
    ],
    ids=["null", "empty", "missing", "boolean", "object"],
)
async def test_value_field_miss_and_changed_shape(
    api: FakeApi, postmap: Postmap, answer: Any, returncode: int, stderr: str
) -> None:
    answer_by_path(api, {"/mailboxes": answer})
    async with socketmap(api, maps=per_map(api)) as table:
        result = await postmap.query(table + "mailboxes", "m@example.com")
    assert (result.returncode, result.stdout) == (returncode, b""), result.describe()
    if stderr:
        assert stderr in result.stderr, result.describe()
        assert "query error" in result.stderr, result.describe()
    else:
        assert result.stderr == "", result.describe()


async def test_two_maps_never_share_a_cached_answer(api: FakeApi, postmap: Postmap) -> None:
    answer_by_path(
        api, {"/aliases": ["alias-value"], "/mailboxes": {"data": {"mailbox": "box-value"}}}
    )
    caching: dict[str, Any] = {"cache-ttl": 60_000}
    async with socketmap(api, maps=per_map(api), **caching) as table:
        results = [
            await postmap.query(table + name, "same@example.com")
            for name in ("aliases", "mailboxes", "aliases", "mailboxes")
        ]
    assert [result.stdout for result in results] == [
        b"alias-value\n",
        b"box-value\n",
        b"alias-value\n",
        b"box-value\n",
    ], [result.describe() for result in results]
    assert [seen.path for seen in api.seen] == ["/aliases", "/mailboxes"], "then from the cache"


KEYS_IN_PATHS = [
    pytest.param("a/b@example.com", id="slash"),
    pytest.param("100%@example.com", id="percent"),
    pytest.param("with space and+plus", id="space-plus"),
    pytest.param("müller@exämple.com", id="utf8"),
    pytest.param("q?x=1#frag", id="query-marks"),
]


@pytest.mark.parametrize("key", KEYS_IN_PATHS)
async def test_the_key_in_a_maps_path_is_one_segment(
    api: FakeApi, postmap: Postmap, key: str
) -> None:
    raw_paths = answer_by_path(
        api, {"/users/": lambda r: {"data": {"mailbox": r.match_info["tail"]}}}
    )
    maps = {"mailboxes": {"target": f"{api.url}/users/{{key}}/box", "value-field": "data.mailbox"}}
    async with socketmap(api, maps=maps) as table:
        result = await postmap.query(table + "mailboxes", key)
    assert result.returncode == 0, result.describe()
    seen = api.seen[0]
    segment = quote(key, safe="")
    assert seen.raw_query == ""
    assert seen.path == f"/users/{key}/box"  # aiohttp decodes it, "/" included
    assert result.stdout == f"users/{key}/box\n".encode()
    assert raw_paths == [f"/users/{segment}/box"]


@pytest.mark.parametrize("key", KEYS_IN_PATHS)
async def test_the_endpoint_target_takes_the_map_name_and_key_in_its_path(
    api: FakeApi, postmap: Postmap, key: str
) -> None:
    raw_paths = answer_by_path(api, {"/maps/": ["v"]})
    async with socketmap(api, target="/maps/{name}/{key}") as table:
        result = await postmap.query(table + "virtual_Map", key)
    assert (result.returncode, result.stdout) == (0, b"v\n"), result.describe()
    assert api.seen[0].raw_query == ""
    assert raw_paths == [f"/maps/virtual_Map/{quote(key, safe='')}"]
