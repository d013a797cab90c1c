"""The administrator's one-shot commands: ``check-config``, ``query`` and ``purge``."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from .backend import RestBackend
from .cache import open_cache
from .cache.shared import SharedTier
from .config import Config, EndpointConfig
from .config.schema import url_for_logs
from .config.settings import (
    backend_settings,
    cache_settings,
    decoder_limits,
    read_auth_headers,
    reply_options,
    service_settings,
    shared_cache_settings,
    uses_shared_cache,
)
from .core.model import (
    Found,
    LoginRequest,
    LookupRequest,
    Malformed,
    NotFound,
    PolicyRequest,
    Request,
)
from .protocols import FramingError, sasl
from .protocols.modes import Call
from .runtime.endpoint import service_call
from .service import EndpointService


class QueryError(Exception):
    """The query cannot be asked as given."""


EX_TEMPFAIL = 75
"""sysexits.h: the lookup failed (Postfix would defer); 0 is found, 1 not found, like postmap."""


def _token_source(endpoint: EndpointConfig) -> str | None:
    if endpoint.auth_token is not None:
        return "inline"
    if endpoint.auth_token_file is not None:
        return f"file {endpoint.auth_token_file}"
    if endpoint.auth_token_env is not None:
        return f"env {endpoint.auth_token_env}"
    return None


def _auth_summary(endpoint: EndpointConfig) -> str:
    """How the endpoint authenticates to its API: header names, the user name, the
    certificate's path; never a value."""
    kinds = []
    if (token := _token_source(endpoint)) is not None:
        kinds.append(f"x-auth-token {token}")
    if (oauth2 := endpoint.oauth2) is not None:
        kinds.append(f"oauth2 {url_for_logs(oauth2.token_url)} {oauth2.client_id}")
    if endpoint.headers:
        kinds.append(f"headers {', '.join(endpoint.headers)}")
    if endpoint.basic_auth is not None:
        kinds.append(f"basic-auth {endpoint.basic_auth.username}")
    if endpoint.tls_client_cert is not None:
        kinds.append(f"tls-client-cert {endpoint.tls_client_cert}")
    return "; ".join(kinds) or "none"


def check_config(config: Config, path: str) -> int:
    """Print what the config sets up; secrets are named by source, never shown."""
    print(f"{path}: OK, {len(config.endpoints)} endpoint(s), user-agent {config.user_agent!r}")
    for endpoint in config.endpoints:
        print(
            f"  {endpoint.name}: {endpoint.mode} on {endpoint.listen_description} -> "
            f"{endpoint.target_for_logs} (auth: {_auth_summary(endpoint)},"
            f" timeout {endpoint.request_timeout} ms{_login_summary(endpoint)})"
        )
        for line in _routing_summary(endpoint):
            print(f"    {line}")
    shared = config.shared_cache
    if shared is not None:
        users = [e.name for e in config.endpoints if uses_shared_cache(e)]
        password = "file" if shared.password_file else "env" if shared.password_env else "none"
        print(
            f"  shared cache: {shared.url} (key-prefix {shared.key_prefix!r}, timeout"
            f" {shared.timeout} ms, password: {password}) for {', '.join(users) or 'no endpoint'}"
        )
    return 0


def _routing_summary(endpoint: EndpointConfig) -> Iterator[str]:
    """What differs from the plain contract: the maps' own targets and how answers read."""
    yield from _mapping_lines(endpoint.value_field, endpoint.not_found_status)
    if endpoint.policy_format != "form":
        yield f"policy-format {endpoint.policy_format}"
    for name, entry in (endpoint.maps or {}).items():
        reading = entry.reading(endpoint.value_field, endpoint.not_found_status)
        mapping = ", ".join(_mapping_lines(*reading))
        yield f"map {name} -> {url_for_logs(entry.target)}{f' ({mapping})' if mapping else ''}"
    if endpoint.maps:
        other = "unknown map (PERM)" if endpoint.target is None else endpoint.target_for_logs
        yield f"other maps -> {other}"


def _mapping_lines(value_field: str | None, statuses: tuple[int, ...]) -> Iterator[str]:
    if value_field is not None:
        yield f"value-field {value_field}"
    if statuses != (404,):
        yield f"not-found-status {list(statuses)}"


def _login_summary(endpoint: EndpointConfig) -> str:
    if endpoint.mode_spec.call is not Call.LOGIN:
        return ""
    plaintext = "also without TLS" if endpoint.allow_plaintext else "TLS sessions only"
    cached = f", successes cached {endpoint.cache_ttl} ms" if endpoint.cache_ttl else ""
    return (
        f", PLAIN and LOGIN on {plaintext}, refusals after {endpoint.failure_delay} ms,"
        f" {endpoint.request_format} body{cached}"
    )


async def query(
    config: Config,
    endpoint_name: str,
    args: list[str],
    map_name: str | None,
    password: str | None = None,
) -> int:
    """One real request through the endpoint's service, printed as ``postmap -q`` would.

    The exact reply Postfix would receive goes to stderr; a found value (sasl: the user name
    of a login that succeeded) to stdout.
    """
    endpoint = next((e for e in config.endpoints if e.name == endpoint_name), None)
    if endpoint is None:
        names = ", ".join(e.name for e in config.endpoints)
        print(f"no endpoint named {endpoint_name!r} (endpoints: {names})", file=sys.stderr)
        return 2
    try:
        request = _request(endpoint, args, map_name, password)
    except QueryError as error:
        print(error, file=sys.stderr)
        return 2
    if isinstance(request, Malformed):  # the sasl codec refused it: no API call
        return _refused(endpoint, request)
    backend = RestBackend(
        backend_settings(endpoint, config.user_agent, read_auth_headers(endpoint))
    )
    service = EndpointService(
        endpoint.name, backend, service_settings(endpoint), open_cache(cache_settings(endpoint))
    )
    try:
        ask, _ = service_call(service, endpoint.mode_spec.call)
        outcome = await ask(request)
    finally:
        await backend.close()
    reply = endpoint.mode_spec.new_replies(reply_options(endpoint))(request, outcome)
    _print_reply(reply)
    if isinstance(outcome, Found):
        print(outcome.value)
        return 0
    return 1 if isinstance(outcome, NotFound) else EX_TEMPFAIL


def _print_reply(reply: bytes) -> None:
    if reply:
        print(f"postfix gets: {reply!r}", file=sys.stderr)
    else:
        print("postfix gets: its connection reset (smtpd answers 454 4.7.0)", file=sys.stderr)


def _refused(endpoint: EndpointConfig, request: Malformed) -> int:
    reply = endpoint.mode_spec.new_replies(reply_options(endpoint))(request, NotFound())
    _print_reply(reply)
    return 1


def _request(
    endpoint: EndpointConfig, args: list[str], map_name: str | None, password: str | None
) -> Request:
    """The request Postfix would send, from the command line, as the table of modes says."""
    mode = endpoint.mode_spec
    if mode.call is Call.LOGIN:
        return _login_request(endpoint, " ".join(args), password)
    if password is not None:
        raise QueryError("--password-file only applies to a sasl endpoint")
    if mode.call is Call.POLICY:
        return PolicyRequest(
            tuple(
                (name.encode(), value.encode())
                for name, _, value in (a.partition("=") for a in args)
            )
        )
    key = " ".join(args).encode()
    if not mode.names_maps:
        return LookupRequest(key)
    if not map_name:
        raise QueryError(f"a {mode.name} endpoint needs --map NAME, as Postfix always sends one")
    return LookupRequest(key, map_name.encode())


def _login_request(
    endpoint: EndpointConfig, username: str, password: str | None
) -> LoginRequest | Malformed:
    """Decoded from the lines smtpd would send for ``AUTH PLAIN`` in a TLS session, so that the
    codec's own checks apply as they would to Postfix."""
    if password is None:
        raise QueryError(f"a {endpoint.mode} endpoint needs --password-file FILE")
    decoder = endpoint.mode_spec.new_decoder(decoder_limits(endpoint))
    try:
        decoded = decoder.feed(sasl.client_login(username, password))
    except FramingError:
        raise QueryError("the login does not fit in one line of the protocol") from None
    request = decoded[-1]
    assert isinstance(request, LoginRequest | Malformed)
    return request


async def purge(config: Config, endpoint_name: str, key: str, map_name: str | None) -> int:
    """Delete the key's shared entry and tell every instance to drop it from its in-process
    tier: after this, the next lookup of it asks the API (exit 0; 75 if the shared tier could
    not be reached; 2 if the config has none or the endpoint keeps nothing)."""
    endpoint = next((e for e in config.endpoints if e.name == endpoint_name), None)
    if endpoint is None or config.shared_cache is None or not uses_shared_cache(endpoint):
        print(
            f"no lookup endpoint named {endpoint_name!r} that uses a shared-cache",
            file=sys.stderr,
        )
        return 2
    if endpoint.mode_spec.names_maps and not map_name:
        print(f"a {endpoint.mode} endpoint needs --map NAME", file=sys.stderr)
        return 2
    tier = SharedTier(shared_cache_settings(config.shared_cache))
    try:
        rkey = tier.key(endpoint.name, map_name.encode() if map_name else None, key.encode())
        done = await tier.invalidate(rkey)
    finally:
        await tier.close()
    if not done:
        print("the shared cache could not be reached", file=sys.stderr)
        return EX_TEMPFAIL
    return 0
