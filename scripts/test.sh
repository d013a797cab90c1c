#!/usr/bin/env bash
# Installs what the tests need (virtualenvs; Debian's postfix, redis-server and packaging tools),
# then runs every gate and every test twice: on the interpreted editable install (.venv) and on
# the install production gets, the request path compiled with mypyc (.venv-compiled, built from
# this checkout).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_venv test
ensure_postfix
ensure_packaging_tools
ensure_redis
COMPILED_VENV=$ROOT/.venv-compiled
echo "== building the compiled install"; ensure_compiled_venv "$COMPILED_VENV" test
export PATH="$VENV/bin:$PATH"
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy --strict"; mypy --strict
echo "== pytest (interpreted)"; EXPECT_BUILD=interpreted pytest "$@"
# python -m pytest puts this checkout's root, not src/, on sys.path: the compiled install is tested
echo "== pytest (request path compiled with mypyc)"
PATH="$COMPILED_VENV/bin:$PATH" EXPECT_BUILD=compiled "$COMPILED_VENV/bin/python" -m pytest "$@"
