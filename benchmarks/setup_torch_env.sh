#!/usr/bin/env bash
# The benchmark-only environment for the torch-rechub side of benchmarks/train_throughput.py.
# Never a project dependency: it lives in benchmarks/.venv-torch (gitignored).
#
# torch is pinned to 2.13.0's CPU wheel (the plain "torch" from PyPI pulls several GB of CUDA
# libraries). pip takes it from the configured find-links/indexes when they carry the
# "+cpu" wheel, else from PyTorch's CPU-only index.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${HERE}/.venv-torch"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ ! -x "${VENV}/bin/python" ]; then
  "${PYTHON}" -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
if ! "${VENV}/bin/python" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
  "${VENV}/bin/python" -m pip install --quiet "torch==2.13.0+cpu" \
    || "${VENV}/bin/python" -m pip install --quiet --index-url "${TORCH_CPU_INDEX}" "torch==2.13.0+cpu"
fi
# torch-rechub's own requirements, with torch already satisfied by the CPU wheel above.
"${VENV}/bin/python" -m pip install --quiet "torch-rechub==0.9.0" "torch==2.13.0+cpu"
"${VENV}/bin/python" - <<'PY'
import torch, torch_rechub
from importlib.metadata import version
print(f"benchmarks/.venv-torch: torch {torch.__version__}, torch-rechub {version('torch-rechub')}, "
      f"CUDA built: {torch.version.cuda}")
PY
