"""The ``shared-cache`` section: what it accepts, and every refusal with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postfix_rest_api_connector.config import ConfigError, parse_config
from postfix_rest_api_connector.config.settings import shared_cache_settings, uses_shared_cache

ENDPOINT = {
    "name": "users",
    "mode": "tcp-lookup",
    "target": "http://127.0.0.1:8080/users",
    "bind-port": 9001,
    "cache-ttl": 60000,
}


def problems(shared: Any, endpoint: dict[str, Any] | None = None) -> list[str]:
    try:
        parse_config({"shared-cache": shared, "endpoints": [endpoint or ENDPOINT]})
    except ConfigError as error:
        return error.problems
    return []


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://redis.example:6380/2", "unix:///run/redis/redis.sock"],
)
def test_the_three_url_forms_are_accepted(url: str) -> None:
    assert problems({"url": url}) == []


@pytest.mark.parametrize(
    ("shared", "expected"),
    [
        ({"url": "http://127.0.0.1:6379"}, "shared-cache.url: must be a redis://, rediss:// or"),
        ({"url": "redis://:pw@127.0.0.1:6379/0"}, "shared-cache.url: must not hold a password"),
        ({"url": "unix://relative.sock"}, "shared-cache.url: unix:/// needs an absolute"),
        ({"url": "redis:///0"}, "shared-cache.url: needs a host"),
        ({"url": "redis://h:99999/0"}, "shared-cache.url: is not a valid URL"),
        ({"url": "redis://h/0", "timeout": 0}, "shared-cache.timeout: Input should be greater"),
        ({"url": "redis://h/0", "key-prefix": "a b"}, "shared-cache.key-prefix: String should"),
        ({"url": "redis://h/0", "colour": "red"}, "shared-cache.colour: unknown key"),
        ({"url": "redis://h/0", "password-env": "PRAC_NO_SUCH"}, "environment variable"),
        ({}, "shared-cache.url: Field required"),
    ],
)
def test_a_bad_section_is_refused_with_its_key_path(shared: Any, expected: str) -> None:
    found = problems(shared)
    assert any(problem.startswith(expected) or expected in problem for problem in found), found


def test_one_password_source_at_most(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    monkeypatch.setenv("PRAC_REDIS_PASSWORD", "s3cret")
    both = {
        "url": "redis://h/0",
        "password-file": str(secret),
        "password-env": "PRAC_REDIS_PASSWORD",
    }
    assert problems(both) == [
        "shared-cache.password-env: give only one of password-file, password-env"
    ]
    config = parse_config(
        {
            "shared-cache": {"url": "redis://h/0", "password-file": str(secret)},
            "endpoints": [ENDPOINT],
        }
    )
    assert config.shared_cache is not None
    settings = shared_cache_settings(config.shared_cache)
    assert settings.password == "s3cret"
    assert "s3cret" not in repr(settings), "the password never shows"


def test_endpoint_names_hold_no_colon_with_a_shared_cache() -> None:
    assert problems({"url": "redis://h/0"}, {**ENDPOINT, "name": "a:b"}) == [
        "endpoints[0].name: must not contain ':' with shared-cache (it is part of the keys)"
    ]


@pytest.mark.parametrize(
    ("extra", "uses"),
    [
        ({"cache-ttl": 60000}, True),
        ({"cache-ttl": 0, "negative-cache-ttl": 1000}, True),
        ({"cache-ttl": 0, "stale-if-error": 1000}, True),
        ({"cache-ttl": 0}, False),
    ],
)
def test_only_lookups_that_cache_something_use_it(extra: dict[str, Any], uses: bool) -> None:
    config = parse_config(
        {"shared-cache": {"url": "redis://h/0"}, "endpoints": [{**ENDPOINT, **extra}]}
    )
    assert uses_shared_cache(config.endpoints[0]) is uses
