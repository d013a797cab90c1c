#!/usr/bin/env bash
# Installs what the tests need (virtualenv, Debian's postfix), then runs every gate and every test.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_venv test
ensure_postfix
export PATH="$VENV/bin:$PATH"
echo "== ruff check"; ruff check .
echo "== ruff format --check"; ruff format --check .
echo "== mypy --strict"; mypy --strict
echo "== pytest"; pytest "$@"
