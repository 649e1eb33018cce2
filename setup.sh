#!/usr/bin/env bash
# Create .venv and install the project with everything its tests and sweeps need.
# torch==2.13.0 is the CPU build this machine kind keeps on local disk; on your own machine, install
# the torch build you want first (CUDA or CPU) and this script keeps it (the project asks for torch>=2.1).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    pip install -q "torch==2.13.0"
fi
pip install -q -e ".[test,dask,parquet]"
# the build leaves crossclass.egg-info in the repository root, where it shadows the installed metadata for
# anything run from here (python -m ..., pytest): a stale copy hides entry points added since (sweep plugins)
rm -rf crossclass.egg-info
# optional AutoAttack backend for real_data.cas --autoattack, installed so its tests run; --no-deps because
# its metadata asks for torchvision, which it never imports and whose PyPI wheel breaks a CPU torch
pip install -q --no-deps "torchattacks==3.5.1"
# the authors' AutoAttack as published on PyPI (import name pyautoattack), preferred by real_data.cas --autoattack;
# it declares no dependencies and imports only torch, numpy and the standard library (--no-deps keeps it that way)
pip install -q --no-deps "pyautoattack==0.2.0"
