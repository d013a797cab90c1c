"""What Postfix sent, as the API gets it: keys and attributes percent-encoded from their raw bytes
here and nowhere else, so that a ``+`` or ``&`` from Postfix reaches the API as itself and never
as a separator."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from ..core.model import LookupRequest, PolicyRequest

_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-"
_UNRESERVED_COMPLEMENT = re.compile(b"[^" + re.escape(_UNRESERVED) + b"]")
"""What ``quote_from_bytes(safe="")`` and ``quote_plus`` escape. Most keys and attribute values
have little of it, and a regex is several times cheaper than those functions."""
_AS_ALNUM = bytes(0x61 if byte in _UNRESERVED else 0x25 for byte in range(256))
"""Maps what neither encoding escapes to ``a`` and the rest to ``%``: a field that needs no
escaping becomes all letters, which ``isalnum`` sees for far less than a ``sub`` that finds
nothing (or a ``translate`` that deletes, which builds its table on every call)."""
_PERCENT = {bytes([byte]): b"%%%02X" % byte for byte in range(256)}
_FORM = {**_PERCENT, b" ": b"+"}


def _percent(match: re.Match[bytes]) -> bytes:
    return _PERCENT[match[0]]


def _form(match: re.Match[bytes]) -> bytes:
    return _FORM[match[0]]


def lookup_query(request: LookupRequest) -> str:
    """``key=K``, or ``name=MAP&key=K`` for a request that names its map (socketmap)."""
    key = _escaped(request.key, _percent).decode("ascii")
    if request.map_name is None:
        return f"key={key}"
    return f"name={_escaped(request.map_name, _percent).decode('ascii')}&key={key}"


def path_segment(raw: bytes) -> str:
    """One path segment of a ``{key}`` or ``{name}`` template: everything but the unreserved
    characters percent-encoded, ``/`` too (``quote(raw, safe="")``)."""
    return _escaped(raw, _percent).decode("ascii")


def form_body(request: PolicyRequest) -> bytes:
    """Every attribute in order, names and values form-encoded from their raw bytes."""
    return form_encoded(request.attributes)


def form_encoded(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``name=value`` pairs joined by ``&``, each side form-encoded from its raw bytes."""
    return b"&".join(
        _escaped(name, _form) + b"=" + _escaped(value, _form) for name, value in fields
    )


def _escaped(raw: bytes, escape: Callable[[re.Match[bytes]], bytes]) -> bytes:
    """Most map names and policy attributes need no escaping: they skip the ``sub``."""
    if not raw or raw.translate(_AS_ALNUM).isalnum():
        return raw
    return _UNRESERVED_COMPLEMENT.sub(escape, raw)


def json_body(request: PolicyRequest) -> bytes:
    """Every attribute in order as one JSON object (``policy-format`` ``json``), in ASCII.

    Bytes that are not UTF-8 become U+FFFD: JSON strings are Unicode, and a replacement can
    neither end a string nor add a field (the decoder refuses duplicate names already).
    """
    fields = {
        name.decode("utf-8", "replace"): value.decode("utf-8", "replace")
        for name, value in request.attributes
    }
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")
