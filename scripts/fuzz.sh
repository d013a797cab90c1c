#!/usr/bin/env bash
# The long fuzz run, at the lowest CPU priority:
# 1. the atheris (libFuzzer) campaign: every decoder (tcp_table, socketmap, policy, the HTTP
#    response parser) for FUZZ_RUNS executions each (default 1,000,000) from the checked-in seeds
#    in fuzz/corpus/, then the line coverage of each decoder's module over the corpus reached;
#    prints the table of docs/reliability.md. FUZZ_JOBS harnesses at once (default 2); the corpus
#    reached, crashes and libFuzzer's logs go to build/fuzz/.
# 2. every Hypothesis test of the codecs (decoder fuzzing, round-trips, reply tables) and the HTTP
#    parser's differential test with FUZZ_EXAMPLES inputs each (default 20000), printing how many
#    ran per test.
# Arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
ensure_venv test
nice -n 19 "$VENV/bin/python" -m fuzz.campaign --runs "${FUZZ_RUNS:-1000000}" \
    --jobs "${FUZZ_JOBS:-2}"
HYPOTHESIS_PROFILE=fuzz nice -n 19 "$VENV/bin/pytest" -q -p no:cacheprovider tests/protocols \
    tests/httpclient/test_differential.py --hypothesis-show-statistics "$@"
