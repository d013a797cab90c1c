#!/usr/bin/env bash
# Installs the connector (and Debian's postfix for postmap), then runs the embedded demo.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_venv
ensure_postfix
exec "$VENV/bin/postfix-rest-api-connector" --demo "$@"
