#!/usr/bin/env bash
# The one-shot GPU suite: for a machine with one NVIDIA GPU and no network, in under 8 minutes.
#   scripts/gpu_suite.sh [OUT_DIR]     (default: $OUT when set, else outputs/gpu_suite)
# 1. reports what is installed (and which pure-Python packages are missing),
# 2. runs the GPU-marked tests (CI runs the rest on CPU),
# 3. benchmarks the fused kernels at TinyLlama shapes (bench_kernels.py),
# 4. trains tinyllama_1b (bf16, seq 2048) on synthetic tokens: our variants and transformers'
#    LlamaForCausalLM (bench_train.py),
# 5. times downstream evaluation of tinyllama_1b (bf16) on 1,000 synthetic HellaSwag-format items
#    (bench_eval.py),
# then prints a Markdown summary and writes summary.md, environment.txt, pytest.log,
# bench_kernels.json, bench_train.json and bench_eval.json (device name, versions, date) into OUT_DIR.
# Wheels of missing pure-Python packages (torchdata: fetch it beforehand with scripts/gpu_wheels.sh)
# are carried in .whl/ and installed into /tmp/tinytitan-site first. Without CUDA it dry-runs on
# the debug model.
set -uo pipefail
# Only an output folder is an argument: --help, or any other option, must not become one and start the suite.
case ${1:-} in
  -h | --help)
    echo "usage: scripts/gpu_suite.sh [OUT_DIR]"
    sed -n '2,/^set /s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  -*)
    echo "error: scripts/gpu_suite.sh: unknown option $1: expected an output folder, or --help" >&2
    exit 2
    ;;
esac
if [ $# -gt 1 ]; then
  echo "error: scripts/gpu_suite.sh: $# arguments: expected at most one, the output folder (see --help)" >&2
  exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${1:-${OUT:-outputs/gpu_suite}}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/tinytitan-site .whl/*.whl && export PYTHONPATH=/tmp/tinytitan-site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. What is installed.
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$PYTHON" - <<'EOF'
import importlib.metadata as metadata, platform
import torch
print(f"python {platform.python_version()}; torch {torch.__version__}; cuda {torch.version.cuda}; "
      f"gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
for name in ("triton", "numpy", "sentencepiece", "tensorboard", "torchdata", "transformers", "safetensors", "pytest", "flash-attn"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING")
EOF
} 2>&1 | tee "$OUT_DIR/environment.txt"

# The project itself, from this checkout (tinytitan maps kernels/ by itself when not installed).
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# 2. The GPU tests (the others run in CI, on CPU).
echo "== tests"
timeout 150 "$PYTHON" -m pytest -q -p no:cacheprovider -ra -m gpu test >"$OUT_DIR/pytest.log" 2>&1
tests_status=$?
grep -E "passed|failed|skipped|error" "$OUT_DIR/pytest.log" | tail -4

# 3. The kernels.
echo "== kernels"
timeout 90 "$PYTHON" scripts/bench_kernels.py --json "$OUT_DIR/bench_kernels.json" >"$OUT_DIR/bench_kernels.md" 2>"$OUT_DIR/bench_kernels.log"
kernels_status=$?
[ $kernels_status -ne 0 ] && tail -20 "$OUT_DIR/bench_kernels.log"

# 4. Training throughput.
echo "== training throughput"
if "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  bench_args=(--flavor tinyllama_1b --seq-len 2048 --warmup 4 --steps 10)
else
  bench_args=(--flavor debug --warmup 1 --steps 3)  # dry run on CPU
fi
timeout 240 "$PYTHON" scripts/bench_train.py "${bench_args[@]}" \
  --json "$OUT_DIR/bench_train.json" --markdown "$OUT_DIR/bench_train.md" 2>"$OUT_DIR/bench_train.log"
bench_status=$?
[ $bench_status -ne 0 ] && tail -20 "$OUT_DIR/bench_train.log"

# 5. Downstream evaluation throughput (the Llama 2 tokenizer when the checkout has it beside it).
echo "== evaluation throughput"
if "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  eval_args=(--flavor tinyllama_1b --items 1000)
else
  eval_args=(--flavor debug --items 20)  # dry run on CPU
fi
for tokenizer in shared/assets/llama2-tokenizer.model ../shared/assets/llama2-tokenizer.model; do
  [ -f "$tokenizer" ] && eval_args+=(--tokenizer "$tokenizer") && break
done
timeout 120 "$PYTHON" scripts/bench_eval.py "${eval_args[@]}" \
  --json "$OUT_DIR/bench_eval.json" >"$OUT_DIR/bench_eval.md" 2>"$OUT_DIR/bench_eval.log"
eval_status=$?
[ $eval_status -ne 0 ] && tail -20 "$OUT_DIR/bench_eval.log"

{
  echo "# GPU suite"
  echo
  echo '```'
  cat "$OUT_DIR/environment.txt"
  echo '```'
  echo
  echo "GPU tests (exit $tests_status): $(grep -E "passed|failed|skipped" "$OUT_DIR/pytest.log" | tail -1)"
  echo
  [ $kernels_status -eq 0 ] && cat "$OUT_DIR/bench_kernels.md" || echo "bench_kernels failed (exit $kernels_status)"
  echo
  [ $bench_status -eq 0 ] && cat "$OUT_DIR/bench_train.md" || echo "bench_train failed (exit $bench_status)"
  echo
  [ $eval_status -eq 0 ] && cat "$OUT_DIR/bench_eval.md" || echo "bench_eval failed (exit $eval_status)"
} >"$OUT_DIR/summary.md"
echo "== summary"
cat "$OUT_DIR/summary.md"
[ $tests_status -eq 0 ] && [ $kernels_status -eq 0 ] && [ $bench_status -eq 0 ] && [ $eval_status -eq 0 ]
