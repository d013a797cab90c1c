"""The settings each layer gets from an endpoint's validated config, in that layer's own terms
(seconds instead of milliseconds, certificates and tokens read now)."""

from __future__ import annotations

import base64

from ..backend import BackendSettings
from ..cache import CacheSettings, cache_scope
from ..cache.shared import SharedCacheSettings
from ..connection import Limits
from ..httpclient import ClientSettings, Headers, StaticCredentials, Target
from ..protocols import DecoderLimits
from ..protocols.modes import Call, ReplyOptions
from ..service import RetryPolicy, ServiceSettings
from .schema import BasicAuthConfig, EndpointConfig, SharedCacheConfig, reveal


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


def backend_settings(
    config: EndpointConfig, user_agent: str, auth_headers: AuthHeaders
) -> BackendSettings:
    """The target parsed, the CA and client certificates read now, the auth headers checked."""
    http = ClientSettings(
        user_agent=user_agent,
        accept_json=config.mode_spec.call is not Call.POLICY,
        timeout=config.request_timeout / 1000,
        max_body_bytes=config.max_response_bytes,
        ca_pem=read_ca_file(config),
        identity_pem=read_client_identity(config),
    )
    return BackendSettings(
        target=Target.parse(config.target),
        http=http,
        credentials=StaticCredentials(Headers.of(auth_headers)),
        list_separator=config.list_separator,
        login_format=config.request_format,
    )


def service_settings(config: EndpointConfig) -> ServiceSettings:
    return ServiceSettings(
        timeout=config.request_timeout / 1000,
        retry=RetryPolicy(config.effective_retries, config.retry_backoff / 1000),
        cache_scope=cache_scope(config.name, config.target),
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
