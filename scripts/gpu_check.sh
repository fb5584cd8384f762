#!/usr/bin/env bash
# On a machine with NVIDIA GPUs: start a local cluster, run a --gpu 1 job that must see exactly its
# device (CUDA_VISIBLE_DEVICES, nvidia-smi -L and, where torch is installed, torch.cuda.device_count()),
# check that a second --gpu 1 job waits while the first runs, and print one line (gpu_check: OK|FAIL|SKIP).
# Needs a Python that can import iris and its dependencies: the project's .venv (uv sync), or $PYTHON
# (e.g. with the dependencies installed from carried wheels, see ../shared/fixtures/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" scripts/gpu_check.py
