"""``maps``, ``value-field``, ``not-found-status``, ``{key}`` templates and ``policy-format``:
what loads, what is refused (with its key path), and what each layer is given."""

from __future__ import annotations

from typing import Any

import pytest

from postfix_rest_api_connector.backend.contract import ResponseMapping
from postfix_rest_api_connector.config import ConfigError, parse_config
from postfix_rest_api_connector.config.settings import backend_settings, service_settings


def _endpoint(**overrides: Any) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "name": "e",
        "mode": "socketmap-lookup",
        "target": "http://127.0.0.1:9000/lookup",
        "bind-port": 9001,
    }
    endpoint.update(overrides)
    return {key: value for key, value in endpoint.items() if value is not None}


def _problems(**overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config({"endpoints": [_endpoint(**overrides)]})
    return raised.value.problems


def test_the_defaults_are_todays_contract() -> None:
    endpoint = parse_config({"endpoints": [_endpoint()]}).endpoints[0]
    assert (endpoint.value_field, endpoint.not_found_status, endpoint.maps) == (None, (404,), None)
    assert endpoint.policy_format == "form"
    settings = backend_settings(endpoint, "ua", ())
    assert settings.mapping == ResponseMapping()
    assert settings.maps == {}
    assert service_settings(endpoint).cache_scope == "e http://127.0.0.1:9000/lookup"


def test_maps_as_urls_and_objects_inherit_the_endpoints_mapping() -> None:
    endpoint = parse_config(
        {
            "endpoints": [
                _endpoint(
                    target=None,
                    **{
                        "value-field": "data.mailbox",
                        "not-found-status": [404, 410],
                        "maps": {
                            "aliases": "http://127.0.0.1:9000/aliases",
                            "mailboxes": {
                                "target": "http://127.0.0.1:9000/m/{key}",
                                "value-field": "items.0",
                                "not-found-status": [],
                            },
                            "plain": {"target": "https://api.example/p", "value-field": None},
                        },
                    },
                )
            ]
        }
    ).endpoints[0]
    settings = backend_settings(endpoint, "ua", ())
    assert settings.target is None
    routes = settings.maps
    assert set(routes) == {b"aliases", b"mailboxes", b"plain"}
    assert routes[b"aliases"].mapping == ResponseMapping(("data", "mailbox"), frozenset({404, 410}))
    assert routes[b"mailboxes"].mapping == ResponseMapping(("items", "0"), frozenset())
    assert routes[b"mailboxes"].templated
    assert routes[b"plain"].mapping == ResponseMapping(None, frozenset({404, 410}))
    assert not any(route.names_map for route in routes.values())


def test_cache_scopes_differ_when_the_maps_do() -> None:
    def scope(maps: dict[str, Any]) -> str:
        endpoint = parse_config({"endpoints": [_endpoint(maps=maps)]}).endpoints[0]
        return service_settings(endpoint).cache_scope

    one = scope({"a": "http://127.0.0.1:9000/a"})
    assert one != scope({"a": "http://127.0.0.1:9000/b"})
    assert one != scope({"a": {"target": "http://127.0.0.1:9000/a", "value-field": "x"}})


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"target": None},
            "endpoints[0].target: Field required (or maps for mode socketmap-lookup)",
        ),
        (
            {"mode": "tcp-lookup", "maps": {"a": "http://x/"}},
            "endpoints[0].maps: only applies to mode 'socketmap-lookup'",
        ),
        (
            {"mode": "policy", "target": None, "maps": {"a": "http://x/"}},
            "endpoints[0].maps: only applies to mode 'socketmap-lookup'",
        ),
        ({"maps": {"a b": "http://x/"}}, "endpoints[0].maps: map name 'a b': 1 to 100"),
        ({"maps": {"": "http://x/"}}, "endpoints[0].maps: map name '': 1 to 100"),
        ({"maps": {"a": "ftp://x/"}}, "endpoints[0].maps.a.target: must be an http:// or https://"),
        ({"maps": {"a": {"value-field": "x"}}}, "endpoints[0].maps.a.target: Field required"),
        (
            {"maps": {"a": {"target": "http://x/", "other": 1}}},
            "endpoints[0].maps.a.other: unknown",
        ),
        ({"maps": {"a": 7}}, "endpoints[0].maps.a: Input should be"),
        (
            {"maps": {"a": {"target": "http://x/", "not-found-status": [200]}}},
            "endpoints[0].maps.a.not-found-status: must list HTTP statuses from 400 to 599",
        ),
        ({"value-field": ""}, "endpoints[0].value-field: must be a dot path"),
        ({"value-field": "a..b"}, "endpoints[0].value-field: must be a dot path"),
        ({"value-field": ".a"}, "endpoints[0].value-field: must be a dot path"),
        ({"value-field": ".".join(["a"] * 33)}, "endpoints[0].value-field: must be a dot path"),
        ({"value-field": 3}, "endpoints[0].value-field: Input should be"),
        (
            {"mode": "policy", "value-field": "a"},
            "endpoints[0].value-field: only applies to the lookup modes",
        ),
        ({"not-found-status": [404, 404]}, "endpoints[0].not-found-status: must not list a status"),
        ({"not-found-status": [302]}, "endpoints[0].not-found-status: must list HTTP statuses"),
        ({"not-found-status": 404}, "endpoints[0].not-found-status: Input should be"),
        ({"policy-format": "xml"}, "endpoints[0].policy-format: Input should be 'form' or 'json'"),
        (
            {"mode": "tcp-lookup", "policy-format": "json"},
            "endpoints[0].policy-format: only applies to mode 'policy'",
        ),
        ({"target": "http://x/{key}?k={key}"}, "endpoints[0].target: {key} and {name} may only"),
        ({"target": "http://{key}/"}, "endpoints[0].target: {key} and {name} may only"),
        ({"target": "http://x/a#{key}"}, "endpoints[0].target: must not contain a #fragment"),
        ({"target": "http://x/{id}"}, "endpoints[0].target: the only placeholders are {key}"),
        ({"target": "http://x/{key"}, "endpoints[0].target: the only placeholders are {key}"),
        ({"target": "http://x/{{key}}"}, "endpoints[0].target: the only placeholders are {key}"),
        ({"target": "http://x/%7Bkey%7D/{key}"}, "endpoints[0].target: must not contain %7B"),
        (
            {"mode": "policy", "target": "http://x/{key}"},
            "endpoints[0].target: {key} only applies to the lookup modes",
        ),
        (
            {"mode": "tcp-lookup", "target": "http://x/{name}/{key}"},
            "endpoints[0].target: {name} only applies to mode 'socketmap-lookup'",
        ),
        (
            {"maps": {"a": "http://x/{nope}"}},
            "endpoints[0].maps.a.target: the only placeholders are {key}",
        ),
    ],
    ids=lambda value: str(value)[:60] if isinstance(value, dict) else "",
)
def test_refused_with_the_key_path(overrides: dict[str, Any], problem: str) -> None:
    problems = _problems(**overrides)
    assert any(found.startswith(problem) for found in problems), problems


@pytest.mark.parametrize(
    "target",
    ["http://x/{key}", "http://x/u/{name}/{key}.json?v=2", "https://x:8443/{key}/mail"],
)
def test_templates_that_load(target: str) -> None:
    assert parse_config({"endpoints": [_endpoint(target=target)]}).endpoints[0].target == target
