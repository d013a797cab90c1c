"""What Postfix sent, as the API gets it: keys and attributes percent-encoded from their raw bytes
here and nowhere else, so that a ``+`` or ``&`` from Postfix reaches the API as itself and never
as a separator."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from ..core.model import LookupRequest, PolicyRequest

_UNRESERVED_COMPLEMENT = re.compile(rb"[^A-Za-z0-9_.~-]")
"""What ``quote_from_bytes(safe="")`` and ``quote_plus`` escape. Most keys and attribute values
have little of it, and a regex is several times cheaper than those functions."""
_PERCENT = {bytes([byte]): b"%%%02X" % byte for byte in range(256)}
_FORM = {**_PERCENT, b" ": b"+"}


def _percent(match: re.Match[bytes]) -> bytes:
    return _PERCENT[match[0]]


def _form(match: re.Match[bytes]) -> bytes:
    return _FORM[match[0]]


def lookup_query(request: LookupRequest) -> str:
    """``key=K``, or ``name=MAP&key=K`` for a request that names its map (socketmap)."""
    escape = _UNRESERVED_COMPLEMENT.sub
    key = escape(_percent, request.key).decode("ascii")
    if request.map_name is None:
        return f"key={key}"
    return f"name={escape(_percent, request.map_name).decode('ascii')}&key={key}"


def path_segment(raw: bytes) -> str:
    """One path segment of a ``{key}`` or ``{name}`` template: everything but the unreserved
    characters percent-encoded, ``/`` too (``quote(raw, safe="")``)."""
    return _UNRESERVED_COMPLEMENT.sub(_percent, raw).decode("ascii")


def form_body(request: PolicyRequest) -> bytes:
    """Every attribute in order, names and values form-encoded from their raw bytes."""
    return form_encoded(request.attributes)


def form_encoded(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``name=value`` pairs joined by ``&``, each side form-encoded from its raw bytes."""
    escape = _UNRESERVED_COMPLEMENT.sub
    return b"&".join(escape(_form, name) + b"=" + escape(_form, value) for name, value in fields)


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
