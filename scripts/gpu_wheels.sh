#!/usr/bin/env bash
# Fetch, on a machine with network, the pure-Python wheels that the offline GPU machine lacks
# (its image has torch, triton, transformers, sentencepiece, tensorboard, safetensors; not
# torchdata), into .whl/ for scripts/gpu_suite.sh to install first. Python 3.12 is the GPU image's.
#   scripts/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
case ${1:-} in
  -h | --help)
    echo "usage: scripts/gpu_wheels.sh [PYTHON_VERSION]   (default 3.12)"
    sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
esac
# pip would take anything else for a version, or an option of its own
if [ $# -gt 1 ] || ! [[ ${1:-3.12} =~ ^3\.[0-9]+$ ]]; then
  echo "error: scripts/gpu_wheels.sh $*: expected one Python version such as 3.12, or --help" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${1:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "torchdata==0.11.0"
ls -l .whl
