"""The shared vocabulary: every request type says which of its fields may be secret, and its
``repr`` (what a log line would show) leaves exactly those out."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, get_args, get_type_hints

import pytest

from postfix_rest_api_connector.core.model import SECRET, LoginRequest, Request, secret

REQUEST_TYPES: tuple[type[Any], ...] = get_args(Request)


def _forms(hint: object, marker: str) -> list[Any]:
    """Values carrying ``marker`` that a field of type ``hint`` may hold, likeliest first (the
    compiled build erases a union such as ``bytes | None`` to ``type``: then try each)."""
    forms: dict[str, Any] = {
        "tuple": ((b"name", marker.encode()),),
        "bytes": marker.encode(),
        "str": marker,
        "bool": True,  # carries no marker: its field is left out of the check below
    }
    text = str(hint)
    return sorted(forms.values(), key=lambda value: type(value).__name__ not in text)


def _marked(kind: type[Any]) -> tuple[Any, dict[str, str]]:
    """An instance of ``kind`` whose every field holds a marker of its own, and the markers."""
    hints = get_type_hints(kind)
    fields = dataclasses.fields(kind)
    markers = {field.name: f"MARKER{number}X" for number, field in enumerate(fields)}
    choices = [_forms(hints[field.name], markers[field.name]) for field in fields]
    for values in itertools.product(*choices):
        try:
            return kind(**dict(zip(markers, values, strict=True))), markers
        except TypeError:
            continue
    raise AssertionError(f"no marked {kind.__name__} could be made")


def test_the_request_types_are_the_ones_the_decoders_give() -> None:
    assert {kind.__name__ for kind in REQUEST_TYPES} >= {
        "LookupRequest",
        "PolicyRequest",
        "LoginRequest",
        "LoginChallenge",
    }


def test_a_login_shows_everything_but_its_password() -> None:
    login = LoginRequest(
        id=b"7",
        mechanism="PLAIN",
        username="alice@example.com",
        service="smtp",
        local_ip="127.0.0.1",
        remote_ip="192.0.2.1",
        secured=True,
        password="hunter2",
    )

    assert "hunter2" not in repr(login)
    assert "hunter2" not in str(login)
    assert all(part in repr(login) for part in ("b'7'", "alice@example.com", "192.0.2.1"))


@pytest.mark.parametrize("kind", REQUEST_TYPES, ids=lambda kind: kind.__name__)
def test_repr_shows_every_field_but_the_secret_ones(kind: type[Any]) -> None:
    request, markers = _marked(kind)
    shown = repr(request)

    for field in dataclasses.fields(kind):
        is_secret = field.metadata.get(SECRET, False)
        assert field.repr is not is_secret
        if isinstance(getattr(request, field.name), bool):
            continue
        assert (markers[field.name] in shown) is not is_secret, (field.name, shown)


def test_a_field_declared_secret_is_left_out_of_repr() -> None:
    """What ``secret()`` does for a request type that carries a password."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Login:
        username: str
        password: str = secret()

    login = Login("alice", "hunter2")

    assert "hunter2" not in repr(login)
    assert "alice" in repr(login)
    assert dataclasses.fields(Login)[1].metadata[SECRET] is True
