"""Reading and validating the config file: one ``ConfigError`` lists every problem found."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .checks import cross_checks
from .schema import Config


class ConfigError(Exception):
    """The config cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_NAMED_KEY = re.compile(r"([a-z][a-z-]*): (.*)", re.DOTALL)


def _key_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    location = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    message = message.removeprefix("Value error, ")
    if error["type"] == "value_error" and (named := _NAMED_KEY.match(message)):
        location, message = (*location, named[1]), named[2]  # a model check naming its key
    return f"{_key_path(location)}: {message}"


def parse_config(document: object) -> Config:
    """Validate an already-parsed JSON document."""
    try:
        config = Config.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        raise ConfigError([_describe(dict(e)) for e in error.errors()]) from None
    problems = list(cross_checks(config))
    if problems:
        raise ConfigError(problems)
    return config


def read_config_file(path: str | Path) -> bytes:
    """The file's bytes, read once: a reload validates these and names them by their digest."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error}"]) from None


def config_digest(data: bytes) -> str:
    """SHA-256 of a config file's bytes: which content a worker applied, whenever it read it."""
    return hashlib.sha256(data).hexdigest()


def config_from_bytes(data: bytes, path: str | Path) -> Config:
    """Validate a config file's bytes (``path`` only names the file in the problems)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: cannot read: {error}"]) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            [f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"]
        ) from None
    return parse_config(document)


def load_config(path: str | Path) -> Config:
    """Read and validate the config file; ``ConfigError`` lists every problem found."""
    return config_from_bytes(read_config_file(path), path)
