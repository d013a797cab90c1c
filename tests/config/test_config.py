"""Config loading: the predecessors' files load unchanged; each problem names its key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from postfix_rest_api_connector import __version__
from postfix_rest_api_connector.config import (
    DEFAULT_FAILURE_ACTION,
    ConfigError,
    load_config,
    parse_config,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _endpoint(**overrides: Any) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "name": "e",
        "mode": "tcp-lookup",
        "target": "http://127.0.0.1:9000/lookup",
        "bind-port": 9001,
    }
    endpoint.update(overrides)
    return endpoint


def _problems(document: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    return raised.value.problems


@pytest.mark.parametrize("name", ["kotlin-predecessor.json", "rust-predecessor.json"])
def test_predecessor_sample_configs_load_unchanged(name: str) -> None:
    config = load_config(FIXTURES / name)
    raw = json.loads((FIXTURES / name).read_text())
    assert config.user_agent == raw["user-agent"]
    for endpoint, expected in zip(config.endpoints, raw["endpoints"], strict=True):
        assert endpoint.name == expected["name"]
        assert endpoint.mode == expected["mode"]
        assert endpoint.target == expected["target"]
        assert endpoint.bind_address == expected["bind-address"]
        assert endpoint.bind_port == expected["bind-port"]
        assert endpoint.auth_token is not None
        assert endpoint.auth_token.get_secret_value() == expected["auth-token"]
        assert endpoint.request_timeout == expected["request-timeout"]
        assert endpoint.list_separator == expected.get("list-separator", ",")


def test_defaults() -> None:
    config = parse_config({"endpoints": [_endpoint()]})
    endpoint = config.endpoints[0]
    assert config.user_agent == f"postfix-rest-api-connector/{__version__}"
    assert endpoint.bind_address == "127.0.0.1"
    assert endpoint.request_timeout == 2000
    assert endpoint.list_separator == ","
    assert endpoint.auth_token is None
    assert endpoint.failure_action == DEFAULT_FAILURE_ACTION
    assert endpoint.idle_timeout == 600_000


def test_auth_token_is_hidden_from_repr() -> None:
    config = parse_config({"endpoints": [_endpoint(**{"auth-token": "hunter2-token"})]})
    assert "hunter2-token" not in repr(config)
    assert "hunter2-token" not in str(config)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"endpoints": [_endpoint()], "typo": 1}, "typo: unknown key"),
        ({"endpoints": [_endpoint(**{"bind-prot": 1})]}, "endpoints[0].bind-prot: unknown key"),
        ({"endpoints": [_endpoint(**{"bind-port": "9001"})]}, "endpoints[0].bind-port: Input"),
        ({"endpoints": [_endpoint(**{"bind-port": 70000})]}, "endpoints[0].bind-port: Input"),
        ({"endpoints": [_endpoint(mode="tcp")]}, "endpoints[0].mode: Input should be"),
        ({"endpoints": [_endpoint(target="ftp://x/")]}, "endpoints[0].target: must be an http"),
        ({"endpoints": [_endpoint(target="/relative")]}, "endpoints[0].target: must be an http"),
        ({"endpoints": [_endpoint(**{"request-timeout": 0})]}, "endpoints[0].request-timeout"),
        (
            {"endpoints": [_endpoint(**{"request-timeout": 10_000_000})]},
            "endpoints[0].request-timeout",
        ),
        ({"endpoints": [_endpoint(**{"request-timeout": 2.5})]}, "endpoints[0].request-timeout"),
        (
            {"endpoints": [_endpoint(**{"bind-address": "not an ip!"})]},
            "endpoints[0].bind-address: must be",
        ),
        ({"endpoints": []}, "endpoints: must list at least one endpoint"),
        ({}, "endpoints: Field required"),
        (
            {"endpoints": [_endpoint(mode="policy", **{"failure-action": "DUNNO"})]},
            "endpoints[0].failure-action: must not let mail through",
        ),
        (
            {"endpoints": [_endpoint(mode="policy", **{"failure-action": "ok fine"})]},
            "endpoints[0].failure-action: must not let mail through",
        ),
        *(
            (
                {"endpoints": [_endpoint(mode="policy", **{"failure-action": permissive})]},
                "endpoints[0].failure-action: must not let mail through",
            )
            for permissive in ("RELAY", "permit", "permit_mynetworks", "451", "12345", "HOLD")
        ),
        ({"endpoints": [_endpoint(target="http://h:99999/")]}, "endpoints[0].target: is not a"),
        ({"endpoints": [_endpoint(target="http://h:abc/")]}, "endpoints[0].target: is not a"),
        ({"endpoints": [_endpoint(target="http://ho st/x")]}, "endpoints[0].target: is not a"),
        (
            {"endpoints": [_endpoint(**{"request-timeout": 100_000})]},
            "endpoints[0].request-timeout: Input should be less than or equal to 99000",
        ),
        (
            {"endpoints": [_endpoint(mode="policy", **{"failure-action": "REJECT a\nb"})]},
            "endpoints[0].failure-action: action contains a line break",
        ),
        (
            {"endpoints": [_endpoint(**{"failure-action": "REJECT x"})]},
            "endpoints[0].failure-action: only applies to mode 'policy'",
        ),
        (
            {"endpoints": [_endpoint(**{"tls-ca-file": "/nonexistent/ca.pem"})]},
            "endpoints[0].tls-ca-file:",
        ),
        (
            {"endpoints": [_endpoint()], "user-agent": "agent\r\nX-Injected: 1"},
            "user-agent: must not contain control characters",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_problem_names_its_key_path(document: object, expected: str) -> None:
    problems = _problems(document)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_duplicate_names_and_addresses_are_rejected() -> None:
    problems = _problems(
        {
            "endpoints": [
                _endpoint(name="a", **{"bind-port": 9001}),
                _endpoint(name="b", **{"bind-port": 9002}),
                _endpoint(name="a", **{"bind-port": 9001}),
            ]
        }
    )
    assert problems == [
        "endpoints[2].name: duplicate name 'a' (also endpoints[0])",
        "endpoints[2].bind-port: 127.0.0.1:9001 is already used by endpoints[0]",
    ]


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(
        {"endpoints": [_endpoint(mode="x"), _endpoint(**{"bind-port": -1})], "extra": True}
    )
    assert len(problems) == 3


def test_token_never_appears_in_error_messages() -> None:
    problems = _problems({"endpoints": [_endpoint(**{"auth-token": 12345678, "mode": "x"})]})
    assert not any("12345678" in problem for problem in problems)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "endpoints": [,]\n}\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems == [f"{path}: invalid JSON at line 2 column 17: Expecting value"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_auth_token_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    monkeypatch.setenv("CONNECTOR_TOKEN", "from-the-env")
    config = parse_config(
        {
            "endpoints": [
                _endpoint(name="a", **{"auth-token-file": str(token_file)}),
                _endpoint(name="b", **{"bind-port": 9002, "auth-token-env": "CONNECTOR_TOKEN"}),
                _endpoint(name="c", **{"bind-port": 9003}),
            ]
        }
    )
    assert [endpoint.token() for endpoint in config.endpoints] == [
        "from-a-file",
        "from-the-env",
        None,
    ]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"auth-token": "x", "auth-token-env": "HOME"},
            "endpoints[0].auth-token-env: give only one of",
        ),
        (
            {"auth-token-env": "SURELY_UNSET_VARIABLE"},
            "endpoints[0].auth-token-env: environment variable SURELY_UNSET_VARIABLE is not set",
        ),
        ({"auth-token": "two\nlines"}, "endpoints[0].auth-token: must be one line"),
        ({"auth-token": ""}, "endpoints[0].auth-token: must be one line"),
    ],
    ids=["two sources", "unset variable", "line break", "empty"],
)
def test_auth_token_sources_are_checked_at_load(keys: dict[str, str], expected: str) -> None:
    problems = _problems({"endpoints": [_endpoint(**keys)]})
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_auth_token_file_must_hold_one_line(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("one\ntwo\n")
    problems = _problems({"endpoints": [_endpoint(**{"auth-token-file": str(token_file)})]})
    assert problems == [
        "endpoints[0].auth-token-file: must be one line of printable ASCII, not empty"
    ]


def test_tls_ca_file_must_hold_certificates(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    problems = _problems({"endpoints": [_endpoint(**{"tls-ca-file": str(garbage)})]})
    assert len(problems) == 1
    assert problems[0].startswith("endpoints[0].tls-ca-file: cannot load PEM certificates")


def test_target_for_logs_drops_credentials_and_query() -> None:
    target = "https://user:pw@api.example.com:8443/postfix/maps?token=s3cret"
    config = parse_config({"endpoints": [_endpoint(target=target)]})
    assert config.endpoints[0].target_for_logs == "https://api.example.com:8443/postfix/maps"
