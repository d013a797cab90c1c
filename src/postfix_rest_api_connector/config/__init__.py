"""The config: its schema (``schema``), the rules across keys (``checks``), reading and
validating the file (``loading``), and the settings each layer gets from it (``settings``)."""

from __future__ import annotations

from .loading import (
    ConfigError,
    config_digest,
    config_from_bytes,
    load_config,
    parse_config,
    read_config_file,
)
from .schema import (
    DEFAULT_FAILURE_ACTION,
    DEFAULT_USER_AGENT,
    Config,
    EndpointConfig,
    MetricsConfig,
    SharedCacheConfig,
)

__all__ = [
    "DEFAULT_FAILURE_ACTION",
    "DEFAULT_USER_AGENT",
    "Config",
    "ConfigError",
    "EndpointConfig",
    "MetricsConfig",
    "SharedCacheConfig",
    "config_digest",
    "config_from_bytes",
    "load_config",
    "parse_config",
    "read_config_file",
]
