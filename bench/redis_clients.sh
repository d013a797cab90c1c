#!/usr/bin/env bash
# The measurement behind the shared tier's client (docs/performance.md): redis-py with hiredis
# against valkey-glide, CPU per cache hit, in interleaved rounds. Installs Debian's
# redis-server and, into a throwaway virtual environment beside the project's, both clients.
# Run it on an otherwise idle machine; arguments go to bench/redis_clients.py.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
ensure_redis
venv=$ROOT/.venv-redis-clients
make_venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check uvloop "redis[hiredis]" valkey-glide
PYTHONPATH=$ROOT/src "$venv/bin/python" bench/redis_clients.py "$@"
