#!/usr/bin/env bash
# Run the test suite: ./run_tests.sh [pytest arguments]. The first call installs what is missing
# (test extras included) into .venv. GPU tests are skipped on machines without CUDA.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
tt_bootstrap test

exec "$PYTHON" -m pytest "$@"
