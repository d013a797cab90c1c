"""Compiles the modules every request passes through with mypyc (docs/performance.md: CPU per
request about three quarters of the interpreted code's). Everything else is in pyproject.toml.

POSTFIX_REST_API_CONNECTOR_COMPILE chooses:
  auto (default)  compile; if anything about it fails (no mypy, no C compiler, no Python headers,
                  a compiler error), install the same code interpreted, with a warning
  1               compile, or fail the build
  0               interpreted only
An editable install is always interpreted: a compiled module beside its source would shadow
every later edit of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED = ["core", "protocols", "connection", "service", "cache", "backend", "httpclient"]
"""The packages of the request path, from the codecs to the HTTP client, each compiled whole;
nothing that runs only at start (config, runtime, supervisors, admin, the command line)."""
EDITABLE_COMMANDS = {"editable_wheel", "develop"}
BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "install"}


def _warn(message: str) -> None:
    print(f"postfix-rest-api-connector: {message}; installing it interpreted", file=sys.stderr)


def _compiled_extensions(mode: str) -> list[Extension]:
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only a compiling build needs mypy

        return list(
            mypycify(
                [
                    # the build environment lacks the runtime dependencies: their types are Any
                    # here, and checked for real by `mypy --strict` in scripts/test.sh
                    "--ignore-missing-imports",
                    *(f"src/postfix_rest_api_connector/{package}" for package in COMPILED),
                ],
                opt_level="3",
                group_name="postfix_rest_api_connector",
            )
        )
    except (Exception, SystemExit) as error:  # mypy reports its errors by exiting
        if mode == "1":
            raise
        _warn(f"mypyc could not translate the request path ({error!r})")
        return []


class CompileRequestPath(build_ext):  # type: ignore[misc,unused-ignore] # setuptools: maybe untyped
    """Translates with mypyc only when extensions are really built: pip also runs this file to
    read the metadata, and a translation is a whole mypy run (see ``BUILD_COMMANDS``).

    In ``auto`` mode, a failed compile of any module leaves none compiled: every module's
    extension imports mypyc's one shared library, and compiled classes cannot mix with
    interpreted copies of the modules they use."""

    def finalize_options(self) -> None:
        if BUILD_COMMANDS.intersection(sys.argv):  # not for egg_info or sdist, which finalize us
            self.distribution.ext_modules = _compiled_extensions(MODE)
        super().finalize_options()

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:
            if MODE == "1":
                raise
            _warn(f"compiling the request path failed ({error!r})")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions: list[Extension] = []


MODE = os.environ.get("POSTFIX_REST_API_CONNECTOR_COMPILE", "auto")
if MODE not in ("auto", "0", "1"):
    sys.exit(f"POSTFIX_REST_API_CONNECTOR_COMPILE={MODE!r}: expected auto, 0 or 1")
if EDITABLE_COMMANDS.intersection(sys.argv):
    MODE = "0"
# A stand-in, replaced by the real extensions when they are built: with it, setuptools runs
# build_ext and tags the wheel for this Python and platform.
TO_COMPILE = [Extension("postfix_rest_api_connector.__mypyc__", sources=[])]
setup(
    ext_modules=[] if MODE == "0" else TO_COMPILE,
    cmdclass={} if MODE == "0" else {"build_ext": CompileRequestPath},
)
