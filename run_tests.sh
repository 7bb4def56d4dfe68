#!/usr/bin/env bash
# Runs the test suite; sets up the virtualenv first if needed (./setup.sh --install-only).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --install-only
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest "$@"
