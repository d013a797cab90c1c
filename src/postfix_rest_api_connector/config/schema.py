"""The JSON config's schema: the predecessors' keys unchanged, as frozen pydantic models.

``loading`` validates a file into these and ``checks`` adds what spans several keys; every
problem becomes one line naming its key path (``endpoints[1].bind-port: ...``), so that an
administrator can fix the file without reading a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    FilePath,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)
from pyreqwest.http import Url

from .. import __version__
from ..httpclient import headers
from ..protocols import DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_REQUEST, policy
from ..protocols.modes import MODES, SASL_MAX_REQUEST_TIMEOUT, Mode

DEFAULT_USER_AGENT = f"postfix-rest-api-connector/{__version__}"
DEFAULT_FAILURE_ACTION = "DEFER_IF_PERMIT Service temporarily unavailable"
_DEFERRING_ACTIONS = re.compile(
    r"(?i:REJECT|DEFER|DEFER_IF_PERMIT|DEFER_IF_REJECT)(?:\s.*)?|[45]\d\d\s+\S.*", re.DOTALL
)
"""Failure actions that never accept mail. Postfix permits on OK, RELAY, any all-digit value
(a bare ``451`` too), and runs any other word as a restriction (``permit``...)."""

if TYPE_CHECKING:
    ModeName = str
else:
    ModeName = Literal[tuple(MODES)]
    """One of the table of modes' names (``protocols.modes``), nothing else."""


def _check_target(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.fragment:
        raise ValueError("must not contain a #fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        Url(url)  # the HTTP client's own parser, so that no request can fail on it later
    except ValueError as error:
        raise ValueError(f"is not a valid URL: {error}") from None
    return url


_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
PLACEHOLDERS = frozenset({"{key}", "{name}"})


def _check_template(url: str) -> str:
    """``{key}`` and ``{name}`` only, only in the path, and nothing the parser would take for
    them once it has percent-encoded the braces."""
    if "{" not in url and "}" not in url:
        return url
    placeholders = _PLACEHOLDER.findall(url)
    rest = _PLACEHOLDER.sub("", url)
    if set(placeholders) - PLACEHOLDERS or "{" in rest or "}" in rest:
        raise ValueError("the only placeholders are {key} and {name}")
    parts = urlsplit(url)
    if sum(parts.path.count(mark) for mark in PLACEHOLDERS) != len(placeholders):
        raise ValueError("{key} and {name} may only stand in the path")
    if re.search("%7[bd]", url, re.IGNORECASE):
        raise ValueError("must not contain %7B or %7D beside {key} or {name}")
    return url


TargetUrl = Annotated[str, AfterValidator(_check_target), AfterValidator(_check_template)]
"""A target: an http(s) URL, maybe a ``{key}``/``{name}`` template."""
_DOT_PATH = re.compile(r"[^.\x00-\x1f]{1,200}(?:\.[^.\x00-\x1f]{1,200}){0,31}")


def _check_value_field(path: str | None) -> str | None:
    if path is not None and not _DOT_PATH.fullmatch(path):
        raise ValueError("must be a dot path of at most 32 non-empty names (data.mailbox)")
    return path


def _check_statuses(statuses: tuple[int, ...]) -> tuple[int, ...]:
    if any(not 400 <= status <= 599 for status in statuses):
        raise ValueError("must list HTTP statuses from 400 to 599")
    if len(set(statuses)) != len(statuses):
        raise ValueError("must not list a status twice")
    return statuses


ValueField = Annotated[str | None, AfterValidator(_check_value_field)]


def _tuple_from_list(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


Statuses = Annotated[
    tuple[int, ...], BeforeValidator(_tuple_from_list), AfterValidator(_check_statuses)
]
"""HTTP statuses (``not-found-status``)."""
_MAP_NAME = re.compile(r"[!-~]{1,100}")


class MapConfig(BaseModel):
    """One socketmap map's own target (``maps``); its ``value-field`` and ``not-found-status``
    replace the endpoint's when given."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    target: TargetUrl
    value_field: ValueField = Field(None, alias="value-field")
    """``null`` given: the plain JSON array; not given: the endpoint's."""
    not_found_status: Statuses | None = Field(None, alias="not-found-status")

    def reading(
        self, value_field: str | None, statuses: tuple[int, ...]
    ) -> tuple[str | None, tuple[int, ...]]:
        """Its ``value-field`` and ``not-found-status``, the endpoint's where it gives none."""
        return (
            self.value_field if "value_field" in self.model_fields_set else value_field,
            statuses if self.not_found_status is None else self.not_found_status,
        )


def _check_maps(maps: dict[str, MapConfig] | None) -> dict[str, MapConfig] | None:
    for name in maps or {}:
        if not _MAP_NAME.fullmatch(name):
            raise ValueError(f"map name {name!r}: 1 to 100 printable ASCII characters, no space")
    return maps


def _check_header_text(value: str) -> str:
    """Sent as a header on every request: a control character would end or split the header."""
    problem = headers.value_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_ca_file(path: Path | None) -> Path | None:
    """Load the CAs now: a file that is not PEM certificates would otherwise fail every lookup."""
    if path is not None:
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"cannot load PEM certificates: {error}") from None
    return path


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _check_bind_address(address: str) -> str:
    """An IP address, or a host name such as ``localhost`` as the predecessors accepted."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not _HOSTNAME.fullmatch(address):
            raise ValueError("must be an IP address or a host name") from None
    return address


def _check_failure_action(action: str) -> str:
    problem = policy.check_action(action)
    if problem is not None:
        raise ValueError(problem)
    if not _DEFERRING_ACTIONS.fullmatch(action):
        raise ValueError(
            "must not let mail through when the API fails: use REJECT, DEFER, DEFER_IF_PERMIT,"
            " DEFER_IF_REJECT or a 4xx/5xx code with text"
        )
    return action


Milliseconds = Annotated[int, Field(strict=True)]

MAX_SECRET_BYTES = 16 * 1024
"""A header value or password read from a file: far more than any credential needs."""


def read_secret(file: Path | None, env: str | None) -> str:
    """The secret in ``file`` (stripped, as ``auth-token-file``) or in the variable ``env``.
    Raises ``OSError``, ``UnicodeDecodeError``, ``KeyError`` (no such variable) or ``ValueError``
    (too long); none of them carries the secret."""
    if file is None:
        return os.environ[env or ""]
    with file.open("rb") as opened:
        data = opened.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"longer than {MAX_SECRET_BYTES} bytes")
    return data.decode("utf-8").strip()


class SecretSource(BaseModel):
    """A header value kept out of the config file: ``{"file": PATH}`` or ``{"env": NAME}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    file: FilePath | None = None
    env: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("file: give exactly one of file, env")
        return self

    @field_validator("file", mode="before")
    @classmethod
    def _path_from_string(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    def read(self) -> str:
        return read_secret(self.file, self.env)


def reveal(value: SecretStr | SecretSource) -> str:
    """A header value: the literal one, or read now from its file or variable."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value.read()


def _value_kind(value: object) -> str | None:
    if isinstance(value, str | SecretStr):
        return "function-string"
    return "function-object" if isinstance(value, dict | SecretSource) else None


HeaderValue = Annotated[
    Annotated[SecretStr, Tag("function-string")] | Annotated[SecretSource, Tag("function-object")],
    Discriminator(
        _value_kind,
        custom_error_type="header_value",
        custom_error_message='must be a string, {"file": PATH} or {"env": NAME}',
    ),
]
"""A literal value or where to read it. The tags start with ``function-`` so that, like
pydantic's own validator names, they stay out of the key path of an error."""


def _check_username(name: str) -> str:
    if ":" in name or headers.value_problem(name) is not None:
        raise ValueError("must not contain ':' or control characters")
    return name


class BasicAuthConfig(BaseModel):
    """``Authorization: Basic`` (RFC 7617) from a user name and a password kept out of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    username: Annotated[str, AfterValidator(_check_username)] = Field(min_length=1, max_length=256)
    """No colon: it separates the user name from the password."""
    password_file: FilePath | None = Field(None, alias="password-file")
    password_env: str | None = Field(None, alias="password-env", min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> BasicAuthConfig:
        if (self.password_file is None) == (self.password_env is None):
            raise ValueError("password-file: give exactly one of password-file, password-env")
        return self

    @field_validator("password_file", mode="before")
    @classmethod
    def _path_from_string(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    def password(self) -> str:
        return read_secret(self.password_file, self.password_env)


def url_for_logs(url: str) -> str:
    """A URL without user info or query string, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class OAuth2Config(BaseModel):
    """The client-credentials grant (RFC 6749 section 4.4): the API's bearer token comes from
    ``token-url``, renewed before it expires."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    token_url: Annotated[str, AfterValidator(_check_target)] = Field(alias="token-url")
    client_id: Annotated[str, AfterValidator(_check_header_text)] = Field(
        alias="client-id", min_length=1, max_length=1000
    )
    client_secret_file: FilePath | None = Field(None, alias="client-secret-file")
    client_secret_env: str | None = Field(None, alias="client-secret-env", min_length=1)
    scope: str | None = Field(None, pattern=r"^[!#-\[\]-~]+( [!#-\[\]-~]+)*$", max_length=4000)
    """RFC 6749 section 3.3: scope tokens separated by one space."""
    audience: Annotated[str, AfterValidator(_check_header_text)] | None = Field(
        None, min_length=1, max_length=4000
    )
    client_auth: Literal["basic", "post"] = Field("basic", alias="client-auth")
    """RFC 6749 section 2.3.1: HTTP Basic, or ``client_id`` and ``client_secret`` in the form."""

    @model_validator(mode="after")
    def _one_secret(self) -> OAuth2Config:
        if (self.client_secret_file is None) == (self.client_secret_env is None):
            raise ValueError(
                "client-secret-file: give exactly one of client-secret-file, client-secret-env"
            )
        return self

    @field_validator("client_secret_file", mode="before")
    @classmethod
    def _path_from_string(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    def client_secret(self) -> str:
        """From the file or the environment, read now (both checked at load)."""
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text(encoding="utf-8").strip()
        return os.environ[self.client_secret_env or ""]


class EndpointConfig(BaseModel):
    """One listener and the REST target it asks."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1)
    mode: ModeName
    target: TargetUrl | None = None
    """Required unless ``maps`` names every map's target."""
    bind_address: Annotated[str, AfterValidator(_check_bind_address)] = Field(
        "127.0.0.1", alias="bind-address"
    )
    bind_port: int | None = Field(None, alias="bind-port", ge=0, le=65535)
    bind_path: str | None = Field(None, alias="bind-path", pattern=r"^/.+", max_length=100)
    socket_mode: str = Field("0660", alias="socket-mode", pattern=r"^0?[0-7]{3}$")
    socket_owner: str | None = Field(
        None, alias="socket-owner", pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]+)?$"
    )
    auth_token: SecretStr | None = Field(None, alias="auth-token")
    auth_token_file: FilePath | None = Field(None, alias="auth-token-file")
    auth_token_env: str | None = Field(None, alias="auth-token-env", min_length=1)
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=32)
    basic_auth: BasicAuthConfig | None = Field(None, alias="basic-auth")
    tls_client_cert: FilePath | None = Field(None, alias="tls-client-cert")
    tls_client_key: FilePath | None = Field(None, alias="tls-client-key")
    request_timeout: Milliseconds = Field(2000, alias="request-timeout", ge=1, le=99_000)
    """Below Postfix's own 100 s, after which it gives up and asks again."""
    list_separator: str = Field(",", alias="list-separator")
    value_field: ValueField = Field(None, alias="value-field")
    not_found_status: Statuses = Field((404,), alias="not-found-status")
    maps: Annotated[dict[str, MapConfig] | None, AfterValidator(_check_maps)] = None
    policy_format: Literal["form", "json"] = Field("form", alias="policy-format")
    idle_timeout: Milliseconds = Field(600_000, alias="idle-timeout", ge=1_000, le=86_400_000)
    read_timeout: Milliseconds = Field(10_000, alias="read-timeout", ge=100, le=600_000)
    max_connections: int = Field(2048, alias="max-connections", ge=1, le=1_000_000)
    failure_action: Annotated[str, AfterValidator(_check_failure_action)] = Field(
        DEFAULT_FAILURE_ACTION, alias="failure-action"
    )
    max_request_bytes: int = Field(
        DEFAULT_MAX_REQUEST, alias="max-request-bytes", ge=512, le=16 * 1024 * 1024
    )
    max_policy_attributes: int = Field(
        DEFAULT_MAX_ATTRIBUTES, alias="max-policy-attributes", ge=32, le=100_000
    )
    max_response_bytes: int = Field(
        1024 * 1024, alias="max-response-bytes", ge=1024, le=64 * 1024 * 1024
    )
    tls_ca_file: Annotated[FilePath | None, AfterValidator(_check_ca_file)] = Field(
        None, alias="tls-ca-file"
    )
    cache_ttl: Milliseconds = Field(0, alias="cache-ttl", ge=0, le=86_400_000)
    negative_cache_ttl: Milliseconds = Field(0, alias="negative-cache-ttl", ge=0, le=86_400_000)
    cache_max_entries: int = Field(10_000, alias="cache-max-entries", ge=1, le=10_000_000)
    cache_control: bool = Field(True, alias="cache-control")
    stale_if_error: Milliseconds = Field(0, alias="stale-if-error", ge=0, le=7 * 86_400_000)
    retries: int | None = Field(None, ge=0, le=10)
    retry_backoff: Milliseconds = Field(25, alias="retry-backoff", ge=1, le=60_000)
    breaker_failures: int = Field(0, alias="breaker-failures", ge=0, le=1_000_000)
    breaker_cooldown: Milliseconds = Field(5_000, alias="breaker-cooldown", ge=100, le=3_600_000)
    # sasl only (the table of modes says which keys each mode takes)
    failure_delay: Milliseconds = Field(
        2_000, alias="failure-delay", ge=0, le=SASL_MAX_REQUEST_TIMEOUT
    )
    """From a refused login's arrival to its answer; smtpd gives up after 10 s."""
    allow_plaintext: bool = Field(False, alias="allow-plaintext")
    request_format: Literal["form", "json"] = Field("form", alias="request-format")
    oauth2: OAuth2Config | None = None

    @model_validator(mode="after")
    def _a_target(self) -> EndpointConfig:
        if self.target is None and not self.maps:
            raise ValueError("target: Field required (or maps for mode socketmap-lookup)")
        return self

    @model_validator(mode="after")
    def _one_listener(self) -> EndpointConfig:
        """A TCP port or a unix socket path: exactly one (reported with the key's name)."""
        if self.bind_port is None and self.bind_path is None:
            raise ValueError("bind-port: Field required (or bind-path for a unix socket)")
        if self.bind_port is not None and self.bind_path is not None:
            raise ValueError("bind-path: give either bind-port or bind-path, not both")
        if self.bind_path is None and self.model_fields_set & {"socket_mode", "socket_owner"}:
            raise ValueError("socket-mode: socket-mode and socket-owner only apply with bind-path")
        return self

    @property
    def target_for_logs(self) -> str:
        """The target without user info or query string, which may carry secrets."""
        if self.target is None:
            return "its maps' targets"
        return url_for_logs(self.target)

    @property
    def answer_source(self) -> str:
        """What the API's answers depend on beyond the key: the targets and, when set, how
        answers read; a cache scope (``cache_scope``), so that a reload changing any of them
        never serves an answer of the old."""
        source = self.target or ""
        if self.maps or self.value_field or self.not_found_status != (404,):
            maps = {name: m.model_dump(exclude_unset=True) for name, m in (self.maps or {}).items()}
            source += f" {self.value_field} {self.not_found_status} {maps}"
        return source

    @property
    def listen_description(self) -> str:
        if self.bind_path is not None:
            return f"unix:{self.bind_path}"
        host = self.bind_address
        return f"[{host}]:{self.bind_port}" if ":" in host else f"{host}:{self.bind_port}"

    def token(self) -> str | None:
        """The auth token from whichever source the config names (checked at load)."""
        if self.auth_token is not None:
            return self.auth_token.get_secret_value()
        if self.auth_token_file is not None:
            return self.auth_token_file.read_text(encoding="utf-8").strip()
        if self.auth_token_env is not None:
            return os.environ[self.auth_token_env]
        return None

    def client_identity(self) -> bytes | None:
        """``tls-client-key`` and ``tls-client-cert`` in one PEM buffer, as pyreqwest takes them
        (the key may sit in the certificate file)."""
        if self.tls_client_cert is None:
            return None
        key = self.tls_client_key.read_bytes() if self.tls_client_key is not None else b""
        return key + b"\n" + self.tls_client_cert.read_bytes()

    @property
    def mode_spec(self) -> Mode:
        return MODES[self.mode]

    @property
    def effective_retries(self) -> int:
        """The mode's default unless configured (lookups retry once, policy requests never)."""
        if self.retries is not None:
            return self.retries
        return self.mode_spec.default_retries

    @field_validator(
        "tls_ca_file", "auth_token_file", "tls_client_cert", "tls_client_key", mode="before"
    )
    @classmethod
    def _path_from_string(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    @field_validator("maps", mode="before")
    @classmethod
    def _entries_from_urls(cls, value: object) -> object:
        """A map given as a URL string is a map with only a target."""
        if isinstance(value, dict):
            return {k: {"target": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class MetricsConfig(BaseModel):
    """The optional HTTP listener for ``/metrics``, ``/healthz`` and ``/readyz``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    bind_address: Annotated[str, AfterValidator(_check_bind_address)] = Field(
        "127.0.0.1", alias="bind-address"
    )
    bind_port: int = Field(alias="bind-port", ge=0, le=65535)


def _check_redis_url(url: str) -> str:
    """``redis://``, ``rediss://`` (TLS, the system CAs) or ``unix:///path``; never a password
    in the URL, where every log of the URL would show it."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a redis://, rediss:// or unix:/// URL")
    if parts.password is not None:
        raise ValueError("must not hold a password: give password-file or password-env")
    if parts.scheme == "unix" and not parts.path.startswith("/"):
        raise ValueError("unix:/// needs an absolute socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("needs a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as error:
        raise ValueError(f"is not a valid URL: {error}") from None
    return url


class SharedCacheConfig(BaseModel):
    """The optional shared tier of every lookup endpoint's cache, on Redis or Valkey."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: Annotated[str, AfterValidator(_check_redis_url)]
    key_prefix: str = Field(
        "postfix-rest-api-connector:", alias="key-prefix", max_length=100, pattern=r"^[!-~]*$"
    )
    timeout: Milliseconds = Field(50, ge=1, le=5000)
    username: str | None = Field(None, min_length=1, pattern=r"^[!-~]+$")
    password_file: FilePath | None = Field(None, alias="password-file")
    password_env: str | None = Field(None, alias="password-env", min_length=1)

    @field_validator("password_file", mode="before")
    @classmethod
    def _path_from_string(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    def password(self) -> str | None:
        """From the file or the environment (checked at load)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        if self.password_env is not None:
            return os.environ[self.password_env]
        return None


class Config(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    user_agent: Annotated[str, AfterValidator(_check_header_text)] = Field(
        DEFAULT_USER_AGENT, alias="user-agent", min_length=1
    )
    shutdown_timeout: Milliseconds = Field(10_000, alias="shutdown-timeout", ge=0, le=600_000)
    metrics: MetricsConfig | None = None
    shared_cache: SharedCacheConfig | None = Field(None, alias="shared-cache")
    workers: int | None = Field(None, ge=1, le=256)
    """Processes; ``None`` (the default) is one per CPU this process may run on."""
    endpoints: tuple[EndpointConfig, ...]

    @property
    def any_free_port(self) -> bool:
        """Some listener asks for any free port (0): each worker would get a different one."""
        ports = [e.bind_port for e in self.endpoints if e.bind_path is None]
        if self.metrics is not None:
            ports.append(self.metrics.bind_port)
        return 0 in ports

    @property
    def effective_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return 1 if self.any_free_port else len(os.sched_getaffinity(0))

    @field_validator("endpoints", mode="before")
    @classmethod
    def _tuple_from_list(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value
