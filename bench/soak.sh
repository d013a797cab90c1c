#!/usr/bin/env bash
# The soak (issue #16): 30 minutes of steady moderate load (150 Postfix-style connections, 1500
# requests/s in all) on the real connector with 2 workers, the API failing for 10 s every
# minute; tasks, descriptors, pooled API connections and RSS sampled every minute (a line on
# stderr each), the report as JSON at the end. Not in CI. Arguments go to bench/soak.py
# (--minutes N, --connections N, --rate R). Stops by itself; loopback only.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then  # PYTHON: an interpreter that has the test extras already
    ensure_venv test
    PYTHON=$VENV/bin/python
fi
PYTHONPATH=src "$PYTHON" bench/soak.py "$@"
