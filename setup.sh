#!/usr/bin/env bash
# Sets up everything and runs the main job:
#   ./setup.sh                 virtualenv from the pinned lock, the project, then `msmt run`
#   ./setup.sh --install-only  the same without the run (what run_tests.sh uses)
# Idempotent: a second call re-installs only when the lock file or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 10)))' 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "setup.sh: needs Python 3.11 or 3.10 (TFX 1.16); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
PY_TAG=$("$PYTHON" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
LOCK="requirements/lock-${PY_TAG}.txt"
if [ ! -f "$LOCK" ]; then
  echo "setup.sh: no lock file $LOCK for $("$PYTHON" --version); available: $(ls requirements/lock-*.txt)" >&2
  exit 1
fi

VENV=.venv
STAMP="$VENV/.msmt-installed"
WANT=$(cat "$LOCK" setup.py setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "Installing the pinned stack from $LOCK into $VENV ..."
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
  # --compile-bytecode: uv writes no .pyc by default, and then every Python process
  # (each Beam worker, notebook kernel, Kubeflow task) compiles TF and TFX from source
  # again: about 25 s of CPU per `import tfx`, 9 s with the bytecode.
  UV=("$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps --quiet --compile-bytecode)
  "${UV[@]}" -r "$LOCK"
  # TFX 1.16 declares Requires-Python < 3.11 although its whole stack ships cp311
  # wheels (see requirements/README.md); installing it without deps is safe.
  "${UV[@]}" tfx==1.16.0 ml-pipelines-sdk==1.16.0
  "${UV[@]}" -e .
  "$VENV/bin/python" -c 'import os; os.environ["TF_USE_LEGACY_KERAS"]="1"; import tfx, tensorflow_transform, tensorflow_model_analysis, tf_keras, pipeline.cli' \
    2>/dev/null || { echo "setup.sh: the installed stack does not import" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi
exec "$VENV/bin/msmt" run "$@"
