#!/usr/bin/env bash
# Fetch, on a machine with network, the pure-Python wheels that the offline GPU machine lacks
# (its image has torch, triton, transformers, sentencepiece, tensorboard, safetensors; not
# torchdata), into .whl/ for scripts/gpu_suite.sh to install first. Python 3.12 is the GPU image's.
#   scripts/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${1:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "torchdata==0.11.0"
ls -l .whl
