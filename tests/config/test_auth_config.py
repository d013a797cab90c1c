"""The API authentication keys at load: ``headers``, ``basic-auth``, ``tls-client-cert`` and
``tls-client-key``. Every header injection attempt is refused with its key path; secrets stay
out of reprs, problems and ``check-config``."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from postfix_rest_api_connector.commands import check_config
from postfix_rest_api_connector.config import ConfigError, parse_config
from postfix_rest_api_connector.config.settings import read_auth_headers
from test_tls import KeyPair, _issue, _make_ca

SECRET = "hdr-s3cret"


def _endpoint(**overrides: Any) -> dict[str, Any]:
    endpoint: dict[str, Any] = {
        "name": "e",
        "mode": "tcp-lookup",
        "target": "https://127.0.0.1:9000/lookup",
        "bind-port": 9001,
    }
    endpoint.update(overrides)
    return endpoint


def _problems(**overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config({"endpoints": [_endpoint(**overrides)]})
    return raised.value.problems


CONTROL = "must not contain control characters (line breaks, tabs, NUL)"
BAD_NAME = "must be a header name (letters, digits and !#$%&'*+.^_`|~-)"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-A": f"{SECRET}\r\nX-Evil: 1"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A": f"{SECRET}\nX-Evil: 1"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A": f"{SECRET}\rX"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A": f"{SECRET}\x00"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A": f"{SECRET}\x7f"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A": f"{SECRET}\t"}, f"endpoints[0].headers.X-A: {CONTROL}"),
        ({"X-A\r\nX-Evil": "1"}, f"endpoints[0].headers.'X-A\\r\\nX-Evil': {BAD_NAME}"),
        ({"X-A\n": "1"}, f"endpoints[0].headers.'X-A\\n': {BAD_NAME}"),
        ({"X-A\x00": "1"}, f"endpoints[0].headers.'X-A\\x00': {BAD_NAME}"),
        ({"X A": "1"}, f"endpoints[0].headers.'X A': {BAD_NAME}"),
        ({"X-A:": "1"}, f"endpoints[0].headers.X-A:: {BAD_NAME}"),
        ({"": "1"}, f"endpoints[0].headers.'': {BAD_NAME}"),
        ({"X-Ä": "1"}, f"endpoints[0].headers.'X-\\xc4': {BAD_NAME}"),
        ({"Host": "evil"}, "endpoints[0].headers.Host: Host is set by the connector itself"),
        (
            {"content-length": "0"},
            "endpoints[0].headers.content-length: content-length is set by the connector itself",
        ),
        (
            {"Transfer-Encoding": "chunked"},
            "endpoints[0].headers.Transfer-Encoding: Transfer-Encoding is set by the connector"
            " itself",
        ),
        (
            {"CONNECTION": "close"},
            "endpoints[0].headers.CONNECTION: CONNECTION is set by the connector itself",
        ),
        (
            {"User-Agent": "x"},
            "endpoints[0].headers.User-Agent: User-Agent is set by the connector itself",
        ),
        (
            {"X-Request-Id": "x"},
            "endpoints[0].headers.X-Request-Id: X-Request-Id is set by the connector itself",
        ),
        (
            {"X-A": "1", "x-a": "2"},
            "endpoints[0].headers.x-a: given twice (header names are case-insensitive)",
        ),
        ({"X-A": ""}, "endpoints[0].headers.X-A: must be one line of printable ASCII, not empty"),
        ({"X-A": " padded"}, "endpoints[0].headers.X-A: must be one line of printable ASCII"),
        ({"X-A": 7}, 'endpoints[0].headers.X-A: must be a string, {"file": PATH} or {"env": NAME}'),
        ({"X-A": {}}, "endpoints[0].headers.X-A.file: give exactly one of file, env"),
        (
            {"X-A": {"file": "/etc/hostname", "env": "HOME"}},
            "endpoints[0].headers.X-A.file: give exactly one of file, env",
        ),
        ({"X-A": {"path": "/x"}}, "endpoints[0].headers.X-A.path: unknown key"),
        (
            {"X-A": {"env": "SURELY_UNSET_VARIABLE"}},
            "endpoints[0].headers.X-A.env: environment variable SURELY_UNSET_VARIABLE is not set",
        ),
        (
            {"X-A": {"file": "/nonexistent/x"}},
            "endpoints[0].headers.X-A.file: Path does not point to a file",
        ),
    ],
    ids=[
        "value CRLF", "value LF", "value CR", "value NUL", "value DEL", "value TAB",
        "name CRLF", "name LF", "name NUL", "name space", "name colon", "name empty",
        "name not ASCII", "Host", "Content-Length", "Transfer-Encoding", "Connection",
        "User-Agent", "X-Request-Id", "twice", "empty value", "padded value", "number",
        "no source", "two sources", "unknown source", "unset variable", "missing file",
    ],
)  # fmt: skip
def test_header_injection_attempts_are_refused_with_the_key_path(
    headers: dict[str, Any], expected: str
) -> None:
    problems = _problems(headers=headers)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems
    assert "\n" not in problems[0]
    assert "\r" not in problems[0]
    assert SECRET not in problems[0]


@pytest.mark.parametrize(
    "content", [f"{SECRET}\r\nX-Evil: 1\n", f"{SECRET}\nX-Evil: 1", f"{SECRET}\x00"]
)
def test_a_header_file_that_would_inject_is_refused(tmp_path: Path, content: str) -> None:
    value_file = tmp_path / "value"
    value_file.write_text(content, encoding="utf-8")
    problems = _problems(headers={"X-A": {"file": str(value_file)}})
    assert problems == [f"endpoints[0].headers.X-A.file: {CONTROL}"]


def test_a_header_from_the_environment_that_would_inject_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_HEADER_VALUE", f"{SECRET}\r\nX-Evil: 1")
    problems = _problems(headers={"X-A": {"env": "TEST_HEADER_VALUE"}})
    assert problems == [f"endpoints[0].headers.X-A.env: {CONTROL}"]


def test_an_oversized_header_file_is_refused(tmp_path: Path) -> None:
    value_file = tmp_path / "value"
    value_file.write_text("x" * 20_000, encoding="ascii")
    problems = _problems(headers={"X-A": {"file": str(value_file)}})
    assert problems == ["endpoints[0].headers.X-A.file: longer than 16384 bytes"]


def test_too_many_headers_are_refused() -> None:
    problems = _problems(headers={f"X-{n}": "v" for n in range(33)})
    assert len(problems) == 1
    assert problems[0].startswith("endpoints[0].headers: Dictionary should have at most 32 items")


def test_x_auth_token_in_headers_only_without_an_auth_token() -> None:
    problems = _problems(headers={"X-Auth-Token": "x"}, **{"auth-token": "y"})
    assert problems == [
        "endpoints[0].headers.X-Auth-Token: X-Auth-Token is set by the connector itself"
    ]
    parse_config({"endpoints": [_endpoint(headers={"X-Auth-Token": "x"})]})


def test_headers_are_read_in_order_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value_file = tmp_path / "value"
    value_file.write_text(" from-file \n", encoding="utf-8")
    password_file = tmp_path / "password"
    password_file.write_text("pa:ss wörd\n", encoding="utf-8")
    monkeypatch.setenv("TEST_HEADER_VALUE", "from-env")
    config = parse_config(
        {
            "endpoints": [
                _endpoint(
                    headers={
                        "Authorization": "Bearer x.y",
                        "X-File": {"file": str(value_file)},
                        "X-Env": {"env": "TEST_HEADER_VALUE"},
                    },
                    **{"auth-token": "tok"},
                ),
                _endpoint(
                    name="f",
                    **{
                        "bind-port": 9002,
                        "basic-auth": {"username": "ü", "password-file": str(password_file)},
                    },
                ),
            ]
        }
    )
    first, second = config.endpoints
    assert read_auth_headers(first) == (
        ("X-Auth-Token", "tok"),
        ("Authorization", "Bearer x.y"),
        ("X-File", "from-file"),
        ("X-Env", "from-env"),
    )
    # RFC 7617: base64 of UTF-8 "ü:pa:ss wörd" (a colon in the password is fine)
    assert read_auth_headers(second) == (("Authorization", "Basic w7w6cGE6c3Mgd8O2cmQ="),)


def test_header_values_stay_out_of_the_repr() -> None:
    config = parse_config({"endpoints": [_endpoint(headers={"Authorization": SECRET})]})
    assert SECRET not in repr(config)
    assert SECRET not in str(config.endpoints[0].headers)


@pytest.mark.parametrize(
    ("basic", "expected"),
    [
        ({"username": "u"}, "endpoints[0].basic-auth.password-file: give exactly one of"),
        (
            {"username": "u", "password-file": "/etc/hostname", "password-env": "HOME"},
            "endpoints[0].basic-auth.password-file: give exactly one of",
        ),
        (
            {"username": "u:v", "password-env": "HOME"},
            "endpoints[0].basic-auth.username: must not contain ':' or control characters",
        ),
        (
            {"username": "u\r\n", "password-env": "HOME"},
            "endpoints[0].basic-auth.username: must not contain ':' or control characters",
        ),
        (
            {"username": "u", "password-env": "SURELY_UNSET_VARIABLE"},
            "endpoints[0].basic-auth.password-env: environment variable SURELY_UNSET_VARIABLE",
        ),
        ({"password-env": "HOME"}, "endpoints[0].basic-auth.username: Field required"),
        ({"username": "u", "password": "x"}, "endpoints[0].basic-auth.password: unknown key"),
    ],
    ids=["no password", "two passwords", "colon", "line break", "unset", "no user", "inline"],
)
def test_basic_auth_is_checked_at_load(basic: dict[str, str], expected: str) -> None:
    problems = _problems(**{"basic-auth": basic})
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_basic_auth_and_an_authorization_header_exclude_each_other() -> None:
    problems = _problems(
        headers={"authorization": "Bearer x"},
        **{"basic-auth": {"username": "u", "password-env": "HOME"}},
    )
    assert problems == [
        "endpoints[0].basic-auth: sends the Authorization header: remove it from headers"
    ]


def test_an_empty_basic_password_is_refused(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("\n", encoding="utf-8")
    problems = _problems(**{"basic-auth": {"username": "u", "password-file": str(password_file)}})
    assert problems == ["endpoints[0].basic-auth.password-file: must not be empty"]


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    """A client certificate and key, and another pair of the same CA."""
    directory = tmp_path_factory.mktemp("client-pki")
    _make_ca(directory)
    return (
        _issue(directory, "client", "DNS:a.example", "clientAuth"),
        _issue(directory, "other", "DNS:b.example", "clientAuth"),
    )


def _tls(pair: KeyPair, key: Path | None = None, **more: Any) -> dict[str, Any]:
    return {"tls-client-cert": str(pair.cert), "tls-client-key": str(key or pair.key), **more}


def test_a_client_certificate_loads(client_pki: tuple[KeyPair, KeyPair], tmp_path: Path) -> None:
    pair, _ = client_pki
    both = tmp_path / "both.pem"
    both.write_bytes(pair.key.read_bytes() + pair.cert.read_bytes())
    config = parse_config(
        {
            "endpoints": [
                _endpoint(**_tls(pair)),
                _endpoint(name="f", **{"bind-port": 9002, "tls-client-cert": str(both)}),
            ]
        }
    )
    assert config.endpoints[0].tls_client_cert == pair.cert


def test_a_key_that_does_not_match_is_refused(client_pki: tuple[KeyPair, KeyPair]) -> None:
    pair, other = client_pki
    problems = _problems(**_tls(pair, other.key))
    assert len(problems) == 1
    assert problems[0].startswith("endpoints[0].tls-client-cert: cannot load it and its key")


def test_a_certificate_without_its_key_is_refused(client_pki: tuple[KeyPair, KeyPair]) -> None:
    pair, _ = client_pki
    problems = _problems(**{"tls-client-cert": str(pair.cert)})
    assert len(problems) == 1
    assert problems[0].startswith("endpoints[0].tls-client-cert: cannot load it and its key")


def test_an_encrypted_key_is_refused(client_pki: tuple[KeyPair, KeyPair], tmp_path: Path) -> None:
    pair, _ = client_pki
    encrypted = tmp_path / "encrypted.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl CLI not found: install Debian's openssl package")
    command = [openssl, "pkcs8", "-topk8", "-in", str(pair.key), "-out", str(encrypted)]
    subprocess.run([*command, "-passout", "pass:x"], check=True, capture_output=True, timeout=30)
    problems = _problems(**_tls(pair, encrypted))
    assert problems == [
        "endpoints[0].tls-client-key: the private key is encrypted: give it unencrypted"
    ]


def test_files_that_are_not_pem_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="ascii")
    problems = _problems(**_tls(KeyPair(garbage, garbage)))
    assert len(problems) == 1
    assert problems[0].startswith("endpoints[0].tls-client-cert: cannot load it and its key")


def test_a_client_certificate_needs_an_https_target(client_pki: tuple[KeyPair, KeyPair]) -> None:
    pair, _ = client_pki
    problems = _problems(**_tls(pair, target="http://127.0.0.1:9000/lookup"))
    needs_https = [
        "endpoints[0].tls-client-cert: needs https:// targets, its maps' too (the certificate"
        " is sent in the TLS handshake, which http:// has not)"
    ]
    assert problems == needs_https
    socketmap: dict[str, Any] = {"mode": "socketmap-lookup", "target": "https://127.0.0.1:9/l"}
    plain_map = {**socketmap, "maps": {"aliases": "http://127.0.0.1:9000/aliases"}}
    assert _problems(**_tls(pair, **plain_map)) == needs_https
    tls_map = {**socketmap, "maps": {"aliases": "https://127.0.0.1:9000/aliases"}}
    parse_config({"endpoints": [_endpoint(**_tls(pair, **tls_map))]})  # loads


def test_a_key_alone_is_refused(client_pki: tuple[KeyPair, KeyPair]) -> None:
    pair, _ = client_pki
    problems = _problems(**{"tls-client-key": str(pair.key)})
    assert problems == ["endpoints[0].tls-client-key: needs tls-client-cert"]


def test_check_config_names_each_auth_kind_without_secrets(
    client_pki: tuple[KeyPair, KeyPair], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair, _ = client_pki
    password_file = tmp_path / "password"
    password_file.write_text("basic-pa55\n", encoding="utf-8")
    monkeypatch.setenv("TEST_HEADER_VALUE", "env-s3cret")
    config = parse_config(
        {
            "endpoints": [
                _endpoint(name="plain"),
                _endpoint(
                    name="all",
                    headers={"X-Api-Key": SECRET, "X-Tenant": {"env": "TEST_HEADER_VALUE"}},
                    **{
                        "bind-port": 9002,
                        "auth-token": "tok-s3cret",
                        "basic-auth": {"username": "mail", "password-file": str(password_file)},
                        **_tls(pair),
                    },
                ),
            ]
        }
    )
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert check_config(config, "c.json") == 0
    lines = output.getvalue().splitlines()
    assert "(auth: none, timeout 2000 ms)" in lines[1]
    assert (
        "(auth: x-auth-token inline; headers X-Api-Key, X-Tenant; basic-auth mail;"
        f" tls-client-cert {pair.cert}, timeout 2000 ms)"
    ) in lines[2]
    text = output.getvalue()
    for secret in (SECRET, "env-s3cret", "basic-pa55", "tok-s3cret", str(pair.key)):
        assert secret not in text
