#!/usr/bin/env bash
# The benchmark suite, one command: installs nginx with the echo module (the fake API) and the
# connector, builds the load generator, runs every scenario 3 times and prints the table of
# medians. Run it on an otherwise idle machine. Arguments go to bench/run.py
# (--scenarios quick|all|hotkeys|oauth2, --runs N, --duration S, --warmup S, --peer-src DIR,
# --peer-cmd 'COMMAND {config}').
# The connector measured is the one production installs, the request path compiled with mypyc
# (.venv-compiled); `--peer-src src` runs this checkout's interpreted code beside it.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
VENV=$ROOT/.venv-compiled
ensure_compiled_venv "$VENV"
ensure_nginx
command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
gcc -O2 -Wall -Wextra -o "$build/loadgen" bench/loadgen.c -lm
"$VENV/bin/python" bench/run.py --loadgen "$build/loadgen" "$@"
