"""``check-config`` shows the per-map targets and how answers read; ``query`` follows them, as
real processes against a real API."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from conftest import FakeApi, endpoint_config
from test_commands import run, write_config


def maps_endpoint(api: FakeApi) -> dict[str, object]:
    config = endpoint_config(
        "socketmap-lookup",
        "",
        maps={
            "aliases": f"{api.url}/aliases?v=2",
            "mailboxes": {
                "target": "http://user:pw@127.0.0.1:1/mailboxes/{key}",
                "value-field": "data.mailbox",
                "not-found-status": [404, 410],
            },
        },
        **{"value-field": "items.0"},
    )
    del config["target"]
    return config


async def test_check_config_shows_maps_and_mapping_without_secrets(
    api: FakeApi, tmp_path: Path
) -> None:
    policy = endpoint_config("policy", "http://127.0.0.1:1/p", **{"policy-format": "json"})
    status, stdout, stderr = await run(
        "check-config", write_config(tmp_path, maps_endpoint(api), policy)
    )
    assert status == 0, stderr
    assert "test-socketmap-lookup: socketmap-lookup on 127.0.0.1:0 -> its maps' targets" in stdout
    assert "    value-field items.0\n" in stdout
    assert f"    map aliases -> {api.url}/aliases (value-field items.0)\n" in stdout
    assert (
        "    map mailboxes -> http://127.0.0.1:1/mailboxes/{key}"
        " (value-field data.mailbox, not-found-status [404, 410])\n"
    ) in stdout
    assert "    other maps -> unknown map (PERM)\n" in stdout
    assert "    policy-format json\n" in stdout
    assert "user:pw" not in stdout
    assert "v=2" not in stdout


async def test_check_config_of_a_plain_endpoint_is_unchanged(tmp_path: Path) -> None:
    status, stdout, stderr = await run(
        "check-config", write_config(tmp_path, endpoint_config("tcp-lookup", "http://a/x"))
    )
    assert status == 0, stderr
    assert stdout.splitlines()[1:] == [
        "  test-tcp-lookup: tcp-lookup on 127.0.0.1:0 -> http://a/x (auth: x-auth-token"
        " inline, timeout 1000 ms)"
    ]


async def test_query_follows_the_maps(api: FakeApi, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/aliases":
            return web.json_response({"items": ["alias@x", "second@x"]})
        return web.json_response([], status=404)

    api.handler = handler
    path = write_config(tmp_path, maps_endpoint(api))
    found = await run("query", path, "test-socketmap-lookup", "a b", "--map", "aliases")
    unknown = await run("query", path, "test-socketmap-lookup", "a b", "--map", "typo")
    assert found[:2] == (0, "alias@x\n"), found[2]
    assert "postfix gets: b'10:OK alias@x,'" in found[2]
    assert [(seen.path, seen.raw_query) for seen in api.seen] == [("/aliases", "v=2&key=a%20b")]
    assert unknown[:2] == (75, ""), unknown[2]
    assert "postfix gets: b'21:PERM unknown map typo,'" in unknown[2]


async def test_query_puts_the_key_in_the_path(api: FakeApi, tmp_path: Path) -> None:
    api.answer_json(["v"])
    config = endpoint_config("tcp-lookup", f"{api.url}/users/{{key}}")
    status, stdout, stderr = await run(
        "query", write_config(tmp_path, config), "test-tcp-lookup", "a/b c@x"
    )
    assert (status, stdout) == (0, "v\n"), stderr
    assert (api.seen[0].path, api.seen[0].raw_query) == ("/users/a/b c@x", "")
