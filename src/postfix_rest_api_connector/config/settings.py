"""The settings each layer gets from an endpoint's validated config, in that layer's own terms
(seconds instead of milliseconds, certificates and tokens read now)."""

from __future__ import annotations

from ..backend import BackendSettings
from ..backend.contract import ResponseMapping
from ..backend.routing import Route
from ..cache import CacheSettings, cache_scope
from ..cache.shared import SharedCacheSettings
from ..connection import Limits
from ..httpclient import ClientSettings, Headers, StaticCredentials, Target
from ..protocols import DecoderLimits
from ..protocols.modes import Call, ReplyOptions
from ..service import RetryPolicy, ServiceSettings
from .schema import EndpointConfig, MapConfig, SharedCacheConfig


class UnreadableFile(Exception):
    """A file an endpoint reads (``tls-ca-file``) could not be read now, though it could when the
    config was validated: one line naming the endpoint and the file, for a reload to log."""


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


def backend_settings(config: EndpointConfig, user_agent: str, token: str | None) -> BackendSettings:
    """The target parsed, the CA file's certificates read now, the token as a header."""
    http = ClientSettings(
        user_agent=user_agent,
        accept_json=config.mode_spec.call is not Call.POLICY,
        timeout=config.request_timeout / 1000,
        max_body_bytes=config.max_response_bytes,
        ca_pem=read_ca_file(config),
    )
    token_header = (("X-Auth-Token", token),) if token is not None else ()
    return BackendSettings(
        target=Target.parse(config.target) if config.target is not None else None,
        http=http,
        credentials=StaticCredentials(Headers.of(token_header)),
        list_separator=config.list_separator,
        mapping=ResponseMapping(_steps(config.value_field), frozenset(config.not_found_status)),
        maps={
            name.encode(): _map_route(config, entry) for name, entry in (config.maps or {}).items()
        },
        policy_format=config.policy_format,
        login_format=config.request_format,
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
