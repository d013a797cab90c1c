"""What the schema alone cannot say: rules that span keys, endpoints and the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

from ..httpclient import headers
from ..protocols.modes import MODE_KEYS, MODES, Call, modes_accepting
from .schema import Config, EndpointConfig, SharedCacheConfig


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


def _printable_ascii(token: str) -> bool:
    """A header value, and one that survives being written to a file and read back."""
    return (
        headers.value_problem(token) is None
        and token.isascii()
        and token.strip(" ") == token
        and bool(token)
    )


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
