"""Policy delegation (SMTPD_POLICY_README): ``name=value`` lines ended by an empty line.

Values are attacker-controlled (HELO name, sender) and kept as raw bytes. The reply is exactly
``action=ACTION\\n\\n``; Postfix hangs for its timeout on anything else.
"""

from __future__ import annotations

import re

from ..core.model import Found, Malformed, Outcome, PolicyRequest, Request
from . import DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_REQUEST
from .errors import KeptOnFramingError, RequestTooLarge, UnsendableReply

MAX_ACTION = 2048
"""Longer actions are refused: Postfix's SMTP reply text could not carry them anyway."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PolicyDecoder:
    """Collects attribute lines until the empty line; limits bytes and attributes per request."""

    __slots__ = (
        "_attributes",
        "_buffer",
        "_max_attributes",
        "_max_request",
        "_names",
        "_problem",
        "_request_bytes",
    )

    def __init__(
        self,
        max_request: int = DEFAULT_MAX_REQUEST,
        max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
    ) -> None:
        self._max_request = max_request
        self._max_attributes = max_attributes
        self._buffer = b""
        self._start_request()

    def _start_request(self) -> None:
        self._attributes: list[tuple[bytes, bytes]] = []
        self._names: set[bytes] = set()
        self._problem: str | None = None
        self._request_bytes = 0

    @property
    def has_partial(self) -> bool:
        return bool(self._buffer) or self._request_bytes > 0

    def feed(self, data: bytes) -> list[PolicyRequest | Malformed]:
        buffer = self._buffer + data if self._buffer else data
        requests: list[PolicyRequest | Malformed] = []
        with KeptOnFramingError(requests):
            start = self._split(buffer, requests)
            self._buffer = buffer[start:]
            if self._request_bytes + len(self._buffer) > self._max_request:
                raise RequestTooLarge(f"policy request longer than {self._max_request} bytes")
        return requests

    def _split(self, buffer: bytes, requests: list[PolicyRequest | Malformed]) -> int:
        """Append every complete request; return where the incomplete rest starts."""
        start = 0
        while not self._request_bytes and (end := buffer.find(b"\n\n", start)) > start:
            request = self._whole_request(buffer[start:end])
            if request is None:
                break
            requests.append(request)
            start = end + 2
        while (end := buffer.find(b"\n", start)) >= 0:
            self._count(end + 1 - start)
            line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
            if line_end == start:
                requests.append(self._finish_request())
            else:
                self._add_attribute(buffer[start:line_end])
            start = end + 1
        return start

    def _whole_request(self, block: bytes) -> PolicyRequest | None:
        """A request that arrived whole, read in bulk, as Postfix sends it; ``None`` leaves
        anything unusual (a CR, a limit, a bad line) to the line-by-line path and its reasons."""
        if len(block) + 2 > self._max_request or block.find(b"\r") >= 0:
            return None
        lines = block.split(b"\n")
        if len(lines) > self._max_attributes:
            return None
        attributes: list[tuple[bytes, bytes]] = []
        names: set[bytes] = set()
        for line in lines:  # one loop, no generators: a third of the instructions, compiled
            name, equals, value = line.partition(b"=")
            if not name or not equals or name in names:
                return None
            names.add(name)
            attributes.append((name, value))
        return PolicyRequest(tuple(attributes))

    def _count(self, line_bytes: int) -> None:
        self._request_bytes += line_bytes
        if self._request_bytes > self._max_request:
            raise RequestTooLarge(f"policy request longer than {self._max_request} bytes")

    def _add_attribute(self, line: bytes) -> None:
        if self._problem is not None:
            return
        name, equals, value = line.partition(b"=")
        if not equals or not name:
            self._problem = "attribute line without 'name='"
        elif name in self._names:
            self._problem = "duplicate attribute"
        elif len(self._attributes) >= self._max_attributes:
            self._problem = f"more than {self._max_attributes} attributes"
        else:
            self._names.add(name)
            self._attributes.append((name, value))

    def _finish_request(self) -> PolicyRequest | Malformed:
        request: PolicyRequest | Malformed
        if self._problem is not None:
            request = Malformed(self._problem)
        elif not self._attributes:
            request = Malformed("empty policy request")
        else:
            request = PolicyRequest(tuple(self._attributes))
        self._start_request()
        return request


def check_action(action: str) -> str | None:
    """Why ``action`` cannot be sent as one policy reply line, or ``None`` when it can."""
    if not action or action.isspace():
        return "empty action"
    if _CONTROL.search(action):
        return "action contains a line break or control character"
    if len(action) > MAX_ACTION:
        return f"action longer than {MAX_ACTION} characters"
    return None


def encode_reply(action: str) -> bytes:
    """``action=ACTION\\n\\n``; raises ``UnsendableReply`` when ``check_action`` objects."""
    problem = check_action(action)
    if problem is not None:
        raise UnsendableReply(problem)
    return b"action=" + action.encode("utf-8") + b"\n\n"


class Replies:
    """The reply table: a found action is passed on; anything else gets the endpoint's
    ``failure-action``, encoded once, never ``DUNNO`` or ``OK``."""

    __slots__ = ("_failure_reply",)

    def __init__(self, failure_action: str) -> None:
        self._failure_reply = encode_reply(failure_action)

    def __call__(self, request: Request | None, outcome: Outcome) -> bytes:
        if isinstance(outcome, Found):
            try:
                return encode_reply(outcome.value)
            except UnsendableReply:
                return self._failure_reply
        return self._failure_reply
