"""The settings each layer gets from an endpoint's validated config, in that layer's own terms
(seconds instead of milliseconds, certificates and tokens read now)."""

from __future__ import annotations

import base64

from ..backend import BackendSettings
from ..backend.contract import ResponseMapping
from ..backend.routing import Route
from ..cache import CacheSettings, cache_scope
from ..cache.shared import SharedCacheSettings
from ..connection import Limits
from ..httpclient import ClientSettings, Credentials, Headers, StaticCredentials, Target
from ..httpclient.oauth2 import MAX_TOKEN_RESPONSE, OAuth2Credentials, OAuth2Settings
from ..protocols import DecoderLimits
from ..protocols.modes import Call, ReplyOptions
from ..service import RetryPolicy, ServiceSettings
from .schema import (
    BasicAuthConfig,
    EndpointConfig,
    MapConfig,
    OAuth2Config,
    SharedCacheConfig,
    reveal,
    url_for_logs,
)


class UnreadableFile(Exception):
    """A file an endpoint reads (``tls-ca-file``, a secret) could not be read now, though it
    could when the config was validated: one line naming the endpoint and the file (never a
    secret), for a reload to log."""


def read_ca_file(config: EndpointConfig) -> bytes | None:
    """The ``tls-ca-file`` certificates, read now."""
    if config.tls_ca_file is None:
        return None
    try:
        return config.tls_ca_file.read_bytes()
    except OSError as error:
        raise UnreadableFile(
            f"endpoint {config.name}: tls-ca-file {config.tls_ca_file}: cannot read:"
            f" {error.strerror or error}"
        ) from None


def read_client_identity(config: EndpointConfig) -> bytes | None:
    """The ``tls-client-cert`` and ``tls-client-key`` PEM, read now."""
    try:
        return config.client_identity()
    except OSError as error:
        raise UnreadableFile(
            f"endpoint {config.name}: tls-client-cert {config.tls_client_cert}: cannot read:"
            f" {error.strerror or error}"
        ) from None


AuthHeaders = tuple[tuple[str, str], ...]


def read_auth_headers(config: EndpointConfig) -> AuthHeaders:
    """Every request's authentication headers, their files and variables read now:
    ``X-Auth-Token``, ``headers``, ``basic-auth``. A failure names the key, never a value."""
    key = "auth-token"
    try:
        token = config.token()
        pairs = [("X-Auth-Token", token)] if token is not None else []
        for name, value in config.headers.items():
            key = f"headers.{name}"
            pairs.append((name, reveal(value)))
        if config.basic_auth is not None:
            key = "basic-auth"
            pairs.append(("Authorization", _basic(config.basic_auth)))
    except (OSError, UnicodeDecodeError, KeyError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error.__class__.__name__
        raise UnreadableFile(f"endpoint {config.name}: {key}: cannot read: {reason}") from None
    return tuple(pairs)


def _basic(config: BasicAuthConfig) -> str:
    """RFC 7617, in UTF-8 (its ``charset="UTF-8"``)."""
    credentials = f"{config.username}:{config.password()}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def read_client_secret(config: EndpointConfig) -> str | None:
    """The ``oauth2`` client secret, read now (from its file or the environment)."""
    return None if config.oauth2 is None else _client_secret(config.name, config.oauth2)


def _client_secret(endpoint: str, oauth2: OAuth2Config) -> str:
    try:
        return oauth2.client_secret()
    except KeyError:
        raise UnreadableFile(
            f"endpoint {endpoint}: oauth2.client-secret-env: {oauth2.client_secret_env} is not set"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnreadableFile(
            f"endpoint {endpoint}: oauth2.client-secret-file {oauth2.client_secret_file}: cannot"
            f" read: {getattr(error, 'strerror', None) or type(error).__name__}"
        ) from None


def backend_settings(
    config: EndpointConfig,
    user_agent: str,
    auth_headers: AuthHeaders,
    client_secret: str | None = None,
) -> BackendSettings:
    """The target parsed, the CA and client certificates read now, the auth headers checked;
    with ``oauth2``, the credentials that obtain a token with ``client_secret`` (read now if not
    given) and send it beside those headers."""
    ca_pem = read_ca_file(config)
    http = ClientSettings(
        user_agent=user_agent,
        accept_json=config.mode_spec.call is not Call.POLICY,
        timeout=config.request_timeout / 1000,
        max_body_bytes=config.max_response_bytes,
        ca_pem=ca_pem,
        identity_pem=read_client_identity(config),
    )
    credentials: Credentials
    oauth2 = config.oauth2
    if oauth2 is not None:
        token_http = ClientSettings(user_agent, True, http.timeout, MAX_TOKEN_RESPONSE, ca_pem)
        credentials = OAuth2Credentials(
            OAuth2Settings(
                endpoint=config.name,
                token_url=Target.parse(oauth2.token_url),
                token_url_for_logs=url_for_logs(oauth2.token_url),
                http=token_http,
                client_id=oauth2.client_id,
                client_secret=(
                    client_secret
                    if client_secret is not None
                    else _client_secret(config.name, oauth2)
                ),
                scope=oauth2.scope,
                audience=oauth2.audience,
                client_auth=oauth2.client_auth,
                extra_headers=auth_headers,
            )
        )
    else:
        credentials = StaticCredentials(Headers.of(auth_headers))
    return BackendSettings(
        target=Target.parse(config.target) if config.target is not None else None,
        http=http,
        credentials=credentials,
        list_separator=config.list_separator,
        mapping=ResponseMapping(_steps(config.value_field), frozenset(config.not_found_status)),
        maps={
            name.encode(): _map_route(config, entry) for name, entry in (config.maps or {}).items()
        },
        policy_format=config.policy_format,
        login_format=config.request_format,
        renews_on_401=config.oauth2 is not None,
    )


def _steps(value_field: str | None) -> tuple[str, ...] | None:
    return tuple(value_field.split(".")) if value_field is not None else None


def _map_route(endpoint: EndpointConfig, entry: MapConfig) -> Route:
    """A map's own target, the key alone in its query; the endpoint's ``value-field`` and
    ``not-found-status`` unless the map gives its own."""
    value_field, statuses = entry.reading(endpoint.value_field, endpoint.not_found_status)
    mapping = ResponseMapping(_steps(value_field), frozenset(statuses))
    return Route.of(Target.parse(entry.target), mapping, names_map=False)


def service_settings(config: EndpointConfig) -> ServiceSettings:
    return ServiceSettings(
        timeout=config.request_timeout / 1000,
        retry=RetryPolicy(config.effective_retries, config.retry_backoff / 1000),
        cache_scope=cache_scope(config.name, config.answer_source),
        cache_ttl=config.cache_ttl / 1000,
        negative_cache_ttl=config.negative_cache_ttl / 1000,
        respect_cache_control=config.cache_control,
        breaker_failures=config.breaker_failures,
        breaker_cooldown=config.breaker_cooldown / 1000,
        failure_delay=config.failure_delay / 1000,
    )


def cache_settings(config: EndpointConfig) -> CacheSettings:
    return CacheSettings(
        max_entries=config.cache_max_entries, stale_for=config.stale_if_error / 1000
    )


def connection_limits(config: EndpointConfig) -> Limits:
    return Limits(
        idle_timeout=config.idle_timeout / 1000,
        read_timeout=config.read_timeout / 1000,
        max_connections=config.max_connections,
    )


def decoder_limits(config: EndpointConfig) -> DecoderLimits:
    return DecoderLimits(
        config.max_request_bytes, config.max_policy_attributes, config.allow_plaintext
    )


def reply_options(config: EndpointConfig) -> ReplyOptions:
    return ReplyOptions(failure_action=config.failure_action)


def shared_cache_settings(config: SharedCacheConfig) -> SharedCacheSettings:
    """The password read now, the timeout in seconds."""
    return SharedCacheSettings(
        url=config.url,
        key_prefix=config.key_prefix,
        timeout=config.timeout / 1000,
        username=config.username,
        password=config.password(),
    )


def uses_shared_cache(config: EndpointConfig) -> bool:
    """Lookups that cache anything go through the shared tier when there is one; the others
    (no TTL, no stale-if-error) keep nothing anywhere, as without it."""
    return config.mode_spec.call is Call.LOOKUP and bool(
        config.cache_ttl or config.negative_cache_ttl or config.stale_if_error
    )
