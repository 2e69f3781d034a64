#!/usr/bin/env bash
# Run the style checks and the test suite: ./run_tests.sh [pytest arguments]
#   ./run_tests.sh                 everything (what CI runs)
#   ./run_tests.sh -m "not e2e"    the fast in-process tests only
# The first call installs what is missing (test extras included) into .venv. GPU tests are skipped
# on machines without CUDA.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
tt_bootstrap test

# Style first: a violation fails the run before any test starts (fix with `ruff format .` and
# `ruff check --fix .`, using .venv/bin/ruff).
"$PYTHON" -m ruff check --quiet .
"$PYTHON" -m ruff format --check --quiet .
exec "$PYTHON" -m pytest "$@"
