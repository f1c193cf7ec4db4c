#!/usr/bin/env bash
# GPU device check (docs/benchmarks.md, "GPU device check"): synthesis seconds per step with AMP
# off and on and peak GPU memory, segmentation training it/s and the share of it spent waiting
# for data, whole-scan inference seconds per volume. One JSON under runs/benchmarks/ named after
# the GPU; about 4-8 minutes on one GPU.
#
#   benchmarks/device_check.sh              # needs a CUDA device: without one it says so, exit 2
#   benchmarks/device_check.sh --dry-run    # (or DEVICE=cpu) every step on CPU at tiny sizes
#
# Uses the project's environment (.venv, or $PYTHON): install it with a CUDA build of torch,
# e.g. make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
exec "$PYTHON" benchmarks/device_check.py "$@"
