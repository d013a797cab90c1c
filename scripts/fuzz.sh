#!/usr/bin/env bash
# The long fuzz run: every Hypothesis test of the codecs (decoder fuzzing, round-trips, reply
# tables) with FUZZ_EXAMPLES inputs each (default 20000), printing how many ran per test.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_venv test
HYPOTHESIS_PROFILE=fuzz "$VENV/bin/pytest" -q -p no:cacheprovider tests/protocols \
    --hypothesis-show-statistics "$@"
