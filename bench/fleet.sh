#!/usr/bin/env bash
# The fleet benchmark (issue #13), one command: installs nginx with the echo module (the API),
# Debian's redis-server and the compiled connector, builds the load generator, runs bench/fleet.py
# (3 instances, 1000 Zipf-drawn hot keys, TTL 10 s, with the shared tier and without it, 3
# interleaved rounds of 60 s: about 20 minutes). Run it on an otherwise idle machine; arguments go
# to bench/fleet.py (--runs N, --duration S, --warmup S, --results FILE).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
ensure_compiled_venv "$ROOT/.venv-compiled"
ensure_nginx
ensure_redis
command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
gcc -O2 -Wall -Wextra -o "$build/loadgen" bench/loadgen.c -lm
"$ROOT/.venv-compiled/bin/python" bench/fleet.py --loadgen "$build/loadgen" "$@"
