"""Compiles the modules every request passes through with mypyc (docs/performance.md: CPU per
request 0.7 to 0.8 of the interpreted code's). Everything else is in pyproject.toml.

POSTFIX_REST_API_CONNECTOR_COMPILE chooses:
  auto (default)  compile; where there is no C compiler or no Python headers, install the same
                  code interpreted, with a warning
  1               compile, or fail the build
  0               interpreted only (scripts/lib.sh sets it for the editable development install:
                  a compiled module would shadow every later edit of its .py file)
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "codecs/__init__.py",
    "codecs/errors.py",
    "codecs/policy.py",
    "codecs/socketmap.py",
    "codecs/tcp_table.py",
    "httpclient/base.py",
    "httpclient/codec.py",
    "httpclient/native.py",
    "backend.py",
    "cache.py",
    "connection.py",
    "context.py",
    "model.py",
    "replies.py",
    "resilience.py",
    "service.py",
    "stats.py",
]
"""From the codecs to the HTTP client: the request path, and nothing that runs only at start."""


def _compiled_extensions(mode: str) -> list[object]:
    if mode == "0":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 - only a compiling build has mypy

    extensions = mypycify(
        [
            # the build environment has no runtime dependencies: their types are Any here, and
            # checked for real by `mypy --strict` in scripts/test.sh
            "--ignore-missing-imports",
            *(f"src/postfix_rest_api_connector/{module}" for module in COMPILED),
        ],
        opt_level="3",
        group_name="postfix_rest_api_connector",
    )
    if mode == "auto":
        for extension in extensions:
            extension.optional = True  # a failed compile leaves the interpreted module in place
    return list(extensions)


mode = os.environ.get("POSTFIX_REST_API_CONNECTOR_COMPILE", "auto")
if mode not in ("auto", "0", "1"):
    sys.exit(f"POSTFIX_REST_API_CONNECTOR_COMPILE={mode!r}: expected auto, 0 or 1")
setup(ext_modules=_compiled_extensions(mode))
