"""``value-field``, ``not-found-status``, JSON policy answers and bodies, ``{key}`` paths: the
pure functions, hostile JSON included. A changed shape must defer mail, never bounce it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postfix_rest_api_connector.backend.contract import (
    ResponseMapping,
    field_outcome,
    lookup_outcome,
    policy_outcome,
)
from postfix_rest_api_connector.backend.encoding import json_body, path_segment
from postfix_rest_api_connector.backend.routing import Route
from postfix_rest_api_connector.core.model import (
    NOT_FOUND,
    Found,
    LookupRequest,
    PermanentError,
    PolicyRequest,
    TemporaryError,
)
from postfix_rest_api_connector.httpclient import Target

MAILBOX = ("data", "mailbox")


def at(path: str, body: bytes | str, separator: str = ",") -> object:
    raw = body.encode() if isinstance(body, str) else body
    return field_outcome(raw, tuple(path.split(".")), separator)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("data.mailbox", '{"data": {"mailbox": "a@b"}}', Found("a@b")),
        ("items.0", '{"items": ["first", "second"]}', Found("first")),
        ("items.1.id", '{"items": [{"id": 1}, {"id": 2}]}', Found("2")),
        ("n", '{"n": 12.50}', Found("12.50")),
        ("n", '{"n": -0}', Found("-0")),
        ("n", '{"n": 1E+400}', Found("1E+400")),
        ("list", '{"list": ["a@b", 7, "c@d"]}', Found("a@b,7,c@d")),
        ("0", '{"0": "a key that looks like an index"}', Found("a key that looks like an index")),
        ("x", '{"x": "caf\\u00e9 \\u00fc"}', Found("café ü")),
        ("data.mailbox", '{"data": {"mailbox": null}}', NOT_FOUND),
        ("data.mailbox", '{"data": {"mailbox": ""}}', NOT_FOUND),
        ("data.mailbox", '{"data": {"mailbox": []}}', NOT_FOUND),
    ],
    ids=[
        "string",
        "index",
        "index-then-key",
        "float-as-written",
        "negative-zero",
        "float-beyond-double",
        "array-of-strings-and-numbers",
        "digit-key-in-object",
        "escapes",
        "null",
        "empty-string",
        "empty-array",
    ],
)
def test_value_field_answers(path: str, body: str, expected: object) -> None:
    assert at(path, body) == expected


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("data.mailbox", '{"data": {}}'),
        ("data.mailbox", '{"other": 1}'),
        ("data.mailbox", '{"data": null}'),
        ("data.mailbox", '{"data": "a string, not an object"}'),
        ("data.mailbox", '{"data": ["mailbox"]}'),
        ("items.2", '{"items": ["a", "b"]}'),
        ("items.-1", '{"items": ["a", "b"]}'),
        ("items.\u0661", '{"items": ["a", "b"]}'),
        ("data", '{"data": {"mailbox": "a@b"}}'),
        ("data", '{"data": true}'),
        ("data", '{"data": false}'),
        ("data", '{"data": ["a", null]}'),
        ("data", '{"data": ["a", true]}'),
        ("data", '{"data": [["a"]]}'),
        ("data", '{"data": [{"a": 1}]}'),
        ("data", '{"data": [""]}'),
        ("data", '{"data": "a\\u0000b"}'),
        ("data", '{"data": "\\ud800"}'),
        ("data", '{"data": NaN}'),
        ("data", '{"data": Infinity}'),
        ("data", '{"data": -Infinity}'),
        ("data", '{"data": "x"'),
        ("data", "not json"),
        ("data", b'{"data": "\xff"}'),
        ("data", ""),
    ],
    ids=[
        "missing-field",
        "other-fields",
        "null-on-the-way",
        "string-on-the-way",
        "list-with-a-key-step",
        "index-past-the-end",
        "negative-index",
        "non-ascii-digit-index",
        "object",
        "true",
        "false",
        "null-in-array",
        "bool-in-array",
        "nested-array",
        "object-in-array",
        "array-of-one-empty-string",
        "nul",
        "lone-surrogate",
        "nan",
        "infinity",
        "minus-infinity",
        "truncated",
        "not-json",
        "not-utf8",
        "empty-body",
    ],
)
def test_a_changed_shape_is_a_temporary_error(path: str, body: str | bytes) -> None:
    assert isinstance(at(path, body), TemporaryError)


def test_deep_nesting_is_a_temporary_error_not_a_recursion_crash() -> None:
    deep = b'{"a":' * 200_000 + b"1" + b"}" * 200_000
    assert isinstance(at("a", deep), TemporaryError)
    assert isinstance(at("a", b"[" * 200_000 + b"]" * 200_000), TemporaryError)


def test_huge_numbers_keep_their_text_beyond_int_conversion_limits() -> None:
    digits = "9" * 100_000  # past Python's 4300-digit int_max_str_digits
    assert at("n", f'{{"n": {digits}}}') == Found(digits)
    assert at("n", f'{{"n": [{digits}, -{digits}.5e-{digits}]}}') == Found(
        f"{digits},-{digits}.5e-{digits}"
    )


def test_of_duplicate_keys_the_last_wins() -> None:
    assert at("a", '{"a": "first", "a": "last"}') == Found("last")
    assert at("a.b", '{"a": {"b": "x"}, "a": {"c": "y"}}') == TemporaryError(
        "API answer has no value-field"
    )


def test_the_separator_joins_an_array() -> None:
    assert at("v", '{"v": ["a", 1, "b"]}', separator=" ") == Found("a 1 b")


def test_value_field_goes_through_the_status_and_content_type_rows() -> None:
    mapping = ResponseMapping(MAILBOX)
    body = b'{"data": {"mailbox": "a@b"}}'
    assert lookup_outcome(200, body, "application/json", ",", mapping) == Found("a@b")
    assert lookup_outcome(200, body, None, ",", mapping) == Found("a@b")
    assert isinstance(lookup_outcome(200, body, "text/html", ",", mapping), TemporaryError)
    assert lookup_outcome(404, b"", None, ",", mapping) == NOT_FOUND
    assert isinstance(lookup_outcome(403, body, None, ",", mapping), PermanentError)
    assert isinstance(lookup_outcome(503, body, None, ",", mapping), TemporaryError)
    # the plain contract's array is another shape now
    assert isinstance(lookup_outcome(200, b'["a@b"]', None, ",", mapping), TemporaryError)


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (410, "application/json", NOT_FOUND),
        (404, None, NOT_FOUND),
        (410, "text/html; charset=utf-8", TemporaryError("API answered 410 with an HTML page")),
        (400, None, PermanentError("API answered HTTP 400")),
    ],
    ids=["listed", "also-listed", "listed-but-html", "other-4xx"],
)
def test_not_found_status(status: int, content_type: str | None, expected: object) -> None:
    mapping = ResponseMapping(not_found_status=frozenset({404, 410}))
    assert lookup_outcome(status, b"{}", content_type, ",", mapping) == expected


def test_a_404_not_listed_is_a_permanent_error() -> None:
    mapping = ResponseMapping(not_found_status=frozenset({410}))
    assert lookup_outcome(404, b"[]", None, ",", mapping) == PermanentError("API answered HTTP 404")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["data", "mailbox", "0", "x"]), children, max_size=4)
    ),
    max_leaves=20,
)


def _expected_kind(document: Any, path: tuple[str, ...]) -> type | None:
    """What the contract must answer, worked out independently: ``None`` for a miss."""
    node = document
    for step in path:
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return TemporaryError
    if node is None or node in ("", []):
        return None
    scalar = (str, int, float)
    if isinstance(node, bool | dict):
        return TemporaryError
    if isinstance(node, list) and any(
        isinstance(item, bool) or not isinstance(item, scalar) for item in node
    ):
        return TemporaryError
    return Found


@given(
    JSON_VALUES, st.lists(st.sampled_from(["data", "mailbox", "0", "1"]), min_size=1, max_size=3)
)
def test_arbitrary_json_never_crashes_and_finds_only_strings_and_numbers(
    document: Any, path: list[str]
) -> None:
    outcome = field_outcome(json.dumps(document).encode(), tuple(path), ",")
    expected = _expected_kind(document, tuple(path))
    if expected is None:
        assert outcome == NOT_FOUND
    elif expected is TemporaryError:
        assert isinstance(outcome, TemporaryError), outcome
    else:  # found, unless the text is one Postfix cannot take (NUL, surrogates, all empty)
        assert isinstance(outcome, Found | TemporaryError), outcome
        if isinstance(outcome, Found):
            assert outcome.value
            assert "\x00" not in outcome.value


@given(st.binary(max_size=200), st.lists(st.text(max_size=5), min_size=1, max_size=3))
def test_arbitrary_bytes_never_crash(body: bytes, path: list[str]) -> None:
    outcome = field_outcome(body, tuple(path), ",")
    assert isinstance(outcome, Found | TemporaryError) or outcome == NOT_FOUND


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"action": "REJECT x"}', Found("REJECT x")),
        (b'  {"action": " DUNNO ", "reason": "extra keys are ignored"}\n', Found("DUNNO")),
        (b'{"action": "450 4.7.1 later"}', Found("450 4.7.1 later")),
        (b"action=OK", Found("OK")),
        (b"DUNNO", Found("DUNNO")),
    ],
    ids=["reject", "padded-with-extra-keys", "code", "rust-text", "kotlin-text"],
)
def test_policy_actions_as_json_or_text(body: bytes, expected: object) -> None:
    assert policy_outcome(200, body) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"action": "REJECT x\\nwarn=1"}',
        b'{"action": "42"}',
        b'{"action": ""}',
        b'{"action": null}',
        b'{"action": ["DUNNO"]}',
        b'{"result": "DUNNO"}',
        b'{"action": "DUNNO"',
        b'{"action":' * 100_000,
        b'{"action": "{\\"x\\": 1}"}',
    ],
    ids=[
        "newline",
        "bare-number",
        "empty",
        "null",
        "array",
        "no-action",
        "truncated",
        "deep",
        "json-in-action",
    ],
)
def test_a_bad_json_policy_answer_is_a_temporary_error(body: bytes) -> None:
    assert isinstance(policy_outcome(200, body), TemporaryError)


def test_policy_json_body_keeps_the_order_and_cannot_be_injected() -> None:
    request = PolicyRequest(
        (
            (b"request", b"smtpd_access_policy"),
            (b"helo_name", b'evil", "recipient": "victim@example.com'),
            (b"sender", b"m\xc3\xbcller\xff@example.com"),
            (b"recipient", b"a&b=c+d%41@example.com"),
        )
    )
    body = json_body(request)
    assert body.isascii()
    decoded = json.loads(body)
    assert list(decoded) == ["request", "helo_name", "sender", "recipient"]
    assert decoded["helo_name"] == 'evil", "recipient": "victim@example.com'
    assert decoded["sender"] == "müller\ufffd@example.com"
    assert decoded["recipient"] == "a&b=c+d%41@example.com"


@pytest.mark.parametrize(
    ("key", "segment"),
    [
        (b"a/b", "a%2Fb"),
        (b"50%", "50%25"),
        (b"a b+c", "a%20b%2Bc"),
        ("müller".encode(), "m%C3%BCller"),
        (b"?#&=", "%3F%23%26%3D"),
        (b"user@example.com", "user%40example.com"),
    ],
    ids=["slash", "percent", "space-plus", "utf8", "query-marks", "at"],
)
def test_path_segment_is_quote_with_nothing_safe(key: bytes, segment: str) -> None:
    assert path_segment(key) == segment


def route(url: str, *, names_map: bool = True) -> Route:
    return Route.of(Target.parse(url), names_map=names_map)


def sent(url: str, lookup: LookupRequest, *, names_map: bool = True) -> tuple[Target, str]:
    """The target and query string the GET of ``lookup`` goes to."""
    where = route(url, names_map=names_map).request(lookup)
    assert not isinstance(where, PermanentError), where
    return where


def test_a_template_gets_the_key_in_its_path_and_no_query() -> None:
    target, query = sent("http://api:8080/users/{key}/mail?v=2", LookupRequest(b"a/b c", b"x"))
    assert query == ""
    assert target.path == b"/users/a%2Fb%20c/mail?v=2"
    assert target.get_prefix == target.path
    assert target.url == target.url_prefix == "http://api:8080/users/a%2Fb%20c/mail?v=2"


def test_a_template_with_the_map_name() -> None:
    target, query = sent("http://api/{name}/{key}", LookupRequest(b"k", b"my map"))
    assert (target.path, query) == (b"/my%20map/k", "")


@pytest.mark.parametrize("key", [b".", b".."])
def test_a_dot_segment_key_is_refused(key: bytes) -> None:
    assert isinstance(route("http://api/u/{key}").request(LookupRequest(key)), PermanentError)


def test_a_map_target_gets_the_key_alone_the_endpoint_target_the_name_too() -> None:
    lookup = LookupRequest(b"a+b", b"aliases")
    assert sent("http://api/x", lookup, names_map=False)[1] == "key=a%2Bb"
    assert sent("http://api/x", lookup)[1] == "name=aliases&key=a%2Bb"
