"""Logging set-up: the request id on every line, no timestamps of our own under journald."""

from __future__ import annotations

import json
import logging
import os
import sys

from .core.context import request_id


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; the same fields as the text format."""

    def __init__(self, with_time: bool) -> None:
        super().__init__()
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {}
        if self._with_time:
            entry["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z")
        entry.update(
            level=record.levelname,
            logger=record.name,
            request_id=getattr(record, "request_id", "-"),
            message=record.getMessage(),
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Log to stderr; journald adds its own timestamps, so we add none when it is our sink."""
    with_time = not os.environ.get("JOURNAL_STREAM")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter(with_time))
    else:
        timestamp = "%(asctime)s " if with_time else ""
        handler.setFormatter(
            logging.Formatter(f"{timestamp}%(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
