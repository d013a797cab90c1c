"""The configs a supervisor may restart a worker from: each worker reads the config file itself
on a reload and names the content it applied by its digest, so the supervisor keeps the configs
it validated by digest too."""

from __future__ import annotations

from collections import OrderedDict

from ..config import Config, ConfigError, config_digest, config_from_bytes, read_config_file

KNOWN_CONFIGS = 8
"""The most recent reloads' configs kept by digest, to adopt the one a worker says it applied."""


class KnownConfigs:
    """Configs validated on a reload, by their file's digest (bounded)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._known: OrderedDict[str, Config] = OrderedDict()

    def __contains__(self, digest: str) -> bool:
        return digest in self._known

    def remember_file(self) -> str | None:
        """Read and validate the file; if valid, keep its config under its digest (the most
        recent ``KNOWN_CONFIGS``). The digest, or ``None`` if the file is not valid."""
        try:
            data = read_config_file(self._path)
            config = config_from_bytes(data, self._path)
        except ConfigError:
            return None
        digest = config_digest(data)
        self._known[digest] = config
        self._known.move_to_end(digest)
        while len(self._known) > KNOWN_CONFIGS:
            self._known.popitem(last=False)
        return digest

    def config_for(self, digest: str | None) -> Config | None:
        """The config whose file content has ``digest``: one validated on a reload, or else
        the file read again, if it still has that content (it changed after the reload read
        it); ``None`` if it no longer has, as nothing else is known to be what the worker runs."""
        if digest is None:
            return None
        if digest not in self._known and self.remember_file() != digest:
            return None
        return self._known[digest]
