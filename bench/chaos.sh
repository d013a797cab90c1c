#!/usr/bin/env bash
# Chaos under load at full size: 1000 Postfix-style connections (tcp, socketmap, policy) on the
# real connector with 2 workers for 60 s, a worker SIGKILLed every 3 s and a SIGHUP every 2 s
# (reloads cycling through a changed config, an invalid one and the first), the API flapping
# (up, down, 503, slow, garbage) and 2 % of requests from clients that vanish. Stops by itself
# and prints the report as JSON (tests/chaos_load.py); exits 1 on a wrong answer. Arguments go
# to bench/chaos.py (--connections N, --seconds S, --kill-every S, --hup-every S,
# --same-config, --flap-every S, --vanish-share F).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then  # PYTHON: an interpreter that has the test extras already
    ensure_venv test
    PYTHON=$VENV/bin/python
fi
PYTHONPATH=src "$PYTHON" bench/chaos.py --seconds 60 "$@"
