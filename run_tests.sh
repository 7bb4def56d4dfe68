#!/usr/bin/env bash
# Runs the test suite; sets up the virtualenv first if needed (./setup.sh --install-only).
# Two pytest-xdist workers (MSMT_TEST_WORKERS; 0 runs in this process): most of the suite is
# single-threaded Python (tracing, Beam, TFMA), so the second core was idle. Tests sharing a
# pipeline-run fixture stay on one worker (tests/conftest.py). Later -n/--dist flags win.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --install-only
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -n "${MSMT_TEST_WORKERS:-2}" --dist loadgroup "$@"
