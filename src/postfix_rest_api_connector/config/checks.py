"""What the schema alone cannot say: rules that span keys, endpoints and the environment."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from ..httpclient import headers
from ..httpclient.reqwest import identity_accepted
from ..protocols.modes import MODE_KEYS, MODES, Call, modes_accepting
from .schema import MAX_SECRET_BYTES, Config, EndpointConfig, SharedCacheConfig, reveal


def _token_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """One token source at most, and it must yield a token now, not at the first lookup."""
    sources = [
        key
        for key, value in (
            ("auth-token", endpoint.auth_token),
            ("auth-token-file", endpoint.auth_token_file),
            ("auth-token-env", endpoint.auth_token_env),
        )
        if value is not None
    ]
    if len(sources) > 1:
        yield f"{where}.{sources[1]}: give only one of auth-token, auth-token-file, auth-token-env"
        return
    if not sources:
        return
    if endpoint.auth_token_env is not None and endpoint.auth_token_env not in os.environ:
        yield f"{where}.auth-token-env: environment variable {endpoint.auth_token_env} is not set"
        return
    try:
        token = endpoint.token() or ""
    except (OSError, UnicodeDecodeError) as error:
        yield f"{where}.auth-token-file: cannot read: {error.__class__.__name__}"
        return
    if not _printable_ascii(token):
        yield f"{where}.{sources[0]}: must be one line of printable ASCII, not empty"


def _oauth2_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """The client secret must be there now, not at the first token request; and one kind of
    API credentials per endpoint."""
    oauth2 = endpoint.oauth2
    if oauth2 is None:
        return
    if endpoint.model_fields_set & {"auth_token", "auth_token_file", "auth_token_env"}:
        yield f"{where}.oauth2: give either oauth2 or an auth-token, not both"
    if endpoint.basic_auth is not None:
        yield f"{where}.oauth2: sends the Authorization header: give either oauth2 or basic-auth"
    if any(name.lower() == "authorization" for name in endpoint.headers):
        yield f"{where}.oauth2: sends the Authorization header: remove it from headers"
    source = "client-secret-file" if oauth2.client_secret_file else "client-secret-env"
    if oauth2.client_secret_env is not None and oauth2.client_secret_env not in os.environ:
        yield f"{where}.oauth2.{source}: environment variable {oauth2.client_secret_env} is not set"
        return
    try:
        secret = oauth2.client_secret()
    except (OSError, UnicodeDecodeError) as error:
        yield f"{where}.oauth2.{source}: cannot read: {error.__class__.__name__}"
        return
    if not secret or headers.value_problem(secret) is not None:
        yield f"{where}.oauth2.{source}: must be one line without control characters, not empty"


def _printable_ascii(token: str) -> bool:
    """A header value, and one that survives being written to a file and read back."""
    return (
        headers.value_problem(token) is None
        and token.isascii()
        and token.strip(" ") == token
        and bool(token)
    )


_CONNECTOR_FIELDS = frozenset({"user-agent", "accept", "accept-encoding", "content-type"})
"""Sent by the connector itself (``User-Agent`` from its own key): a second one would be
ambiguous. ``X-Request-Id`` too, and with an auth-token ``X-Auth-Token``."""
_MAX_NAME = 256


def _shown(name: str) -> str:
    """A header name as a key path shows it: escaped unless it is a valid name, so that an
    injection attempt cannot break the error line it is reported in."""
    if 0 < len(name) <= _MAX_NAME and name.isascii() and name.isprintable() and " " not in name:
        return name
    return ascii(name[:64])


def _header_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """Names and values that can be sent, each once, none the connector sets itself; values
    from files and variables are read now, so that a missing one shows at start."""
    connector_fields = {*_CONNECTOR_FIELDS, "x-request-id"}
    if endpoint.auth_token or endpoint.auth_token_file or endpoint.auth_token_env:
        connector_fields.add("x-auth-token")
    seen: set[str] = set()
    for name, value in endpoint.headers.items():
        lowered = name.lower()
        here = f"{where}.headers.{_shown(name)}"
        problem = headers.name_problem(name)
        if problem is None and len(name) > _MAX_NAME:
            problem = f"must be at most {_MAX_NAME} characters"
        elif problem is None and lowered in connector_fields:
            problem = f"{name} is set by the connector itself"
        elif problem is None and lowered in seen:
            problem = "given twice (header names are case-insensitive)"
        seen.add(lowered)
        if problem is not None:
            yield f"{here}: {problem}"
        else:
            source = "" if isinstance(value, SecretStr) else ".env" if value.env else ".file"
            yield from _secret_problems(partial(reveal, value), here + source, header=True)
    basic = endpoint.basic_auth
    if basic is not None and "authorization" in seen:
        yield f"{where}.basic-auth: sends the Authorization header: remove it from headers"
    if basic is not None:
        key = f"{where}.basic-auth.{'password-env' if basic.password_env else 'password-file'}"
        yield from _secret_problems(basic.password, key, header=False)


def _secret_problems(read: Callable[[], str], key: str, *, header: bool) -> Iterator[str]:
    """A secret that can be read now and sent: a header value one line of printable ASCII, a
    password anything but empty (it goes base64-encoded)."""
    try:
        secret = read()
    except KeyError as error:
        yield f"{key}: environment variable {error.args[0]} is not set"
        return
    except (OSError, UnicodeDecodeError) as error:
        yield f"{key}: cannot read: {error.__class__.__name__}"
        return
    except ValueError as error:
        yield f"{key}: {error}"
        return
    problem = headers.value_problem(secret) if header else None
    if problem is not None:
        yield f"{key}: {problem}"
    elif len(secret.encode()) > MAX_SECRET_BYTES:
        yield f"{key}: longer than {MAX_SECRET_BYTES} bytes"
    elif header and not _printable_ascii(secret):
        yield f"{key}: must be one line of printable ASCII, not empty"
    elif not secret:
        yield f"{key}: must not be empty"


class _EncryptedKey(Exception):
    """``ssl`` asked for the key's passphrase: the connector has none to give."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def _client_cert_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """The certificate and key load as a pair (in ``ssl`` and in pyreqwest, which sends them),
    and only where TLS is spoken."""
    cert, key = endpoint.tls_client_cert, endpoint.tls_client_key
    if cert is None:
        if key is not None:
            yield f"{where}.tls-client-key: needs tls-client-cert"
        return
    targets = [entry.target for entry in (endpoint.maps or {}).values()]
    if endpoint.target is not None:
        targets.append(endpoint.target)
    if any(urlsplit(target).scheme != "https" for target in targets):
        yield (
            f"{where}.tls-client-cert: needs https:// targets, its maps' too (the certificate"
            " is sent in the TLS handshake, which http:// has not)"
        )
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
        pem = endpoint.client_identity() or b""
    except _EncryptedKey:
        where_key = f"{where}.tls-client-key" if key is not None else f"{where}.tls-client-cert"
        yield f"{where_key}: the private key is encrypted: give it unencrypted"
        return
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or error.strerror or error.__class__.__name__
        yield (
            f"{where}.tls-client-cert: cannot load it and its key as a pair (PEM, the key"
            f" unencrypted and matching the certificate): {reason}"
        )
        return
    if not identity_accepted(pem):
        yield f"{where}.tls-client-cert: not a PEM certificate and key the HTTP client accepts"


def cross_checks(config: Config) -> Iterator[str]:
    if not config.endpoints:
        yield "endpoints: must list at least one endpoint"
    if (config.workers or 1) > 1 and config.any_free_port:
        yield "workers: several workers need fixed ports; a bind-port of 0 needs workers 1"
    first_with_name: dict[str, int] = {}
    first_on_address: dict[tuple[str, int], int] = {}
    for index, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{index}]"
        if endpoint.name in first_with_name:
            other = first_with_name[endpoint.name]
            yield f"{where}.name: duplicate name {endpoint.name!r} (also endpoints[{other}])"
        first_with_name.setdefault(endpoint.name, index)
        address = (endpoint.bind_path or endpoint.bind_address.lower(), endpoint.bind_port or 0)
        if (endpoint.bind_port or endpoint.bind_path) and address in first_on_address:
            other = first_on_address[address]
            key = "bind-path" if endpoint.bind_path else "bind-port"
            yield (
                f"{where}.{key}: {endpoint.listen_description}"
                f" is already used by endpoints[{other}]"
            )
        first_on_address.setdefault(address, index)
        metrics = config.metrics
        if (
            metrics is not None
            and metrics.bind_port
            and address == (metrics.bind_address.lower(), metrics.bind_port)
        ):
            yield f"{where}.bind-port: {endpoint.listen_description} is the metrics listener's"
        yield from _token_problems(endpoint, where)
        yield from _header_problems(endpoint, where)
        yield from _client_cert_problems(endpoint, where)
        yield from _oauth2_problems(endpoint, where)
        yield from _mode_problems(endpoint, where)
        yield from _template_problems(endpoint, where)
        if config.shared_cache is not None and ":" in endpoint.name:
            yield f"{where}.name: must not contain ':' with shared-cache (it is part of the keys)"
    if config.shared_cache is not None:
        yield from _shared_cache_problems(config.shared_cache)


def _shared_cache_problems(shared: SharedCacheConfig) -> Iterator[str]:
    """One password source at most, and it must yield one now."""
    if shared.password_file is not None and shared.password_env is not None:
        yield "shared-cache.password-env: give only one of password-file, password-env"
        return
    if shared.password_env is not None and shared.password_env not in os.environ:
        yield f"shared-cache.password-env: environment variable {shared.password_env} is not set"
        return
    try:
        password = shared.password()
    except (OSError, UnicodeDecodeError) as error:
        yield f"shared-cache.password-file: cannot read: {error.__class__.__name__}"
        return
    if password is not None and not _printable_ascii(password):
        source = "password-file" if shared.password_file is not None else "password-env"
        yield f"shared-cache.{source}: must be one line of printable ASCII, not empty"


def _mode_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """Keys the table of modes gives to other modes than this endpoint's, and a
    ``request-timeout`` longer than the mode's client waits."""
    mode = MODES[endpoint.mode]
    for field in sorted(endpoint.model_fields_set):
        key = EndpointConfig.model_fields[field].alias or field
        if key in MODE_KEYS and key not in mode.keys:
            yield f"{where}.{key}: only applies to {_modes_phrase(modes_accepting(key))}"
    longest = mode.max_request_timeout
    if longest is not None and endpoint.request_timeout > longest:
        yield (
            f"{where}.request-timeout: at most {longest} ms for mode '{mode.name}'"
            " (its client gives up after 10 s)"
        )


def _template_problems(endpoint: EndpointConfig, where: str) -> Iterator[str]:
    """``{key}`` for lookups only, ``{name}`` for socketmap only."""
    mode = MODES[endpoint.mode]
    targets = [("target", endpoint.target)] + [
        (f"maps.{name}.target", entry.target) for name, entry in (endpoint.maps or {}).items()
    ]
    for key, url in targets:
        if url is None:
            continue
        if mode.call is not Call.LOOKUP and "{key}" in url:
            yield f"{where}.{key}: {{key}} only applies to the lookup modes"
        if not mode.names_maps and "{name}" in url:
            yield f"{where}.{key}: {{name}} only applies to mode 'socketmap-lookup'"


def _modes_phrase(names: list[str]) -> str:
    lookups = [name for name in names if MODES[name].call is Call.LOOKUP]
    others = " or ".join(f"'{name}'" for name in names if name not in lookups)
    if len(lookups) < 2:
        return "mode " + " or ".join(f"'{name}'" for name in names)
    return "the lookup modes" + (f" and mode {others}" if others else "")


SocketKind = Literal["tcp", "unix", "packet", "connected", "other"]
"""What a socket that systemd passed is: a listening TCP or unix stream socket, or one an
endpoint cannot serve on (``runtime.listeners.socket_kind``)."""

_UNSERVABLE = {
    "packet": "not a stream socket: the socket unit needs ListenStream=",
    "connected": "a connection, not a listening socket: the socket unit needs Accept=no",
    "other": "a socket that is neither TCP nor unix: the socket unit needs ListenStream=",
}
_OTHER_KIND = {
    "tcp": "a TCP socket, but a bind-path endpoint serves a unix socket: the socket unit"
    " needs ListenStream=/PATH, or the endpoint bind-port",
    "unix": "a unix socket, but a bind-port endpoint serves TCP: the socket unit needs"
    " ListenStream=ADDRESS:PORT, or the endpoint bind-path",
}


def passed_socket_problems(
    config: Config, passed: Mapping[str, Sequence[SocketKind]]
) -> Iterator[str]:
    """An endpoint that systemd passes sockets for (by its name, ``FileDescriptorName=``)
    serves on them, so they must be of its kind: TCP for ``bind-port``, unix for ``bind-path``.
    The endpoint's address, port and path are not used then, but still checked as usual, so
    that the file works unchanged where no socket is passed."""
    for index, endpoint in enumerate(config.endpoints):
        key, wanted = ("bind-path", "unix") if endpoint.bind_path else ("bind-port", "tcp")
        for kind in dict.fromkeys(passed.get(endpoint.name, ())):
            if kind != wanted:
                what = _UNSERVABLE.get(kind) or _OTHER_KIND[kind]
                yield (
                    f"endpoints[{index}].{key}: the socket systemd passed"
                    f" (FileDescriptorName={endpoint.name}) is {what}"
                )
