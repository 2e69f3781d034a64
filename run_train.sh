#!/usr/bin/env bash
# Train with tinytitan. Everything after the script name is passed on as config overrides:
#   ./run_train.sh                                   debug model, built-in corpus, CPU or GPU
#   CONFIG_FILE=./train_configs/other.toml NGPU=8 ./run_train.sh --training.steps=50
# Environment:
#   CONFIG_FILE    TOML recipe (default: the debug model)
#   NGPU           processes per node (default: the node's GPUs, or 1 without GPUs; on CPU,
#                  several processes train with gloo)
#   NNODES         nodes (default 1); with more, each node runs this script with NODE_RANK and
#                  MASTER_ADDR (MASTER_PORT, default 29500), or all of them with RDZV_ENDPOINT=host:port
#   MAX_RESTARTS   times torchrun restarts failed workers, which then resume from the last checkpoint
# The config is checked first, for the ranks and devices it will run on (python -m tinytitan.config):
# a mistake is one `error:` line and exit status 2, and nothing is started or written.
# Exit status: 0 when training finished, or stopped after saving for a preemption notice (SIGTERM or
# SIGUSR1 to this script); 2 for a mistake of the user's, told in one `error:` line, whether the config
# check or the workers found it; anything else is a failure, told with its traceback.
# The first call installs what is missing into .venv (see scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
tt_bootstrap

CONFIG_FILE=${CONFIG_FILE:-./train_configs/debug_model.toml}
for arg in "$@"; do
  case $arg in -h | --help) exec "$PYTHON" -m tinytitan.train "$@" ;; esac
done

# The CUDA devices of this node as torch will see them: nvidia-smi lists them all, while
# CUDA_VISIBLE_DEVICES (when set) hides the others.
CUDA_DEVICES=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  visible=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
  if [ "$visible" -lt "$CUDA_DEVICES" ]; then CUDA_DEVICES=$visible; fi
fi
NGPU=${NGPU:-$CUDA_DEVICES}
[ "$NGPU" != 0 ] || NGPU=1
NNODES=${NNODES:-1}
for name in NGPU NNODES; do
  if ! [[ ${!name} =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $name=${!name}: expected a positive whole number" >&2
    exit 2
  fi
done

# Check the config first, with the ranks and devices it will run on and without importing torch
# (well under a second): a mistake is one line and exit status 2, before any run folder exists,
# rather than a traceback, or a failure report from every worker.
"$PYTHON" -m tinytitan.config --world-size=$((NGPU * NNODES)) --processes-per-node="$NGPU" \
  --cuda-devices="$CUDA_DEVICES" --job.config_file="$CONFIG_FILE" "$@" || exit

if [ "$NGPU" = 1 ] && [ "$NNODES" = 1 ] && [ -z "${MAX_RESTARTS:-}" ]; then
  exec "$PYTHON" -m tinytitan.train --job.config_file="$CONFIG_FILE" "$@"
fi

# What torchrun would set, without its banner about it.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launch=(--nproc_per_node="$NGPU" --nnodes="$NNODES" --max-restarts="${MAX_RESTARTS:-0}")
# Workers restarted by torchrun must not share the rendezvous store with the first attempt: it can
# hand them their predecessors' addresses (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  launch+=(--rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-tinytitan}")
elif [ "$NNODES" = 1 ]; then
  launch+=(--standalone)
else
  : "${MASTER_ADDR:?NNODES=$NNODES: set MASTER_ADDR (and NODE_RANK) or RDZV_ENDPOINT}"
  launch+=(--node_rank="${NODE_RANK:?NNODES=$NNODES: set NODE_RANK}" --master_addr="$MASTER_ADDR" --master_port="${MASTER_PORT:-29500}")
fi

# The workers share torchrun's stderr. It reaches the terminal as it comes, except what a failure
# writes (a worker's `error:` line or traceback, torchrun's log lines and report), which is held
# back until torchrun ends: then a user mistake is told once, in one line, with exit status 2, and
# any other failure (a bug) in full. The training log (stdout) is not held.
hold_failures() {
  local line holding=
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^(Traceback\ |E[0-9]{4}\ ) ]] && holding=1 # torchrun's report follows to the end
    if [ -n "$holding" ] || [[ $line =~ ^(error:\ |\[rank[0-9]+\]:\ |[IWEF][0-9]{4}\ |$) ]]; then
      printf '%s\n' "$line" >>"$held/stderr"
    else
      printf '%s\n' "$line" >&2
    fi
  done
}
# A preemption notice (SIGTERM, SIGUSR1: what a cluster sends before a time limit) goes to the
# workers themselves, which finish their step, save and exit 0; then torchrun exits 0 as well.
# (Sent to torchrun, it would stop them after 30 s and exit 1 with a traceback.)
torchrun=
forward() { [ -z "$torchrun" ] || pkill "-$1" -P "$torchrun" || true; }
trap 'forward TERM' TERM
trap 'forward USR1' USR1
held=$(mktemp -d)
trap 'rm -rf "$held"' EXIT
mkfifo "$held/pipe"
hold_failures <"$held/pipe" &
filter=$!
"$PYTHON" -m torch.distributed.run "${launch[@]}" -m tinytitan.train --job.config_file="$CONFIG_FILE" "$@" \
  2>"$held/pipe" &
torchrun=$!
status=0
wait "$torchrun" || status=$?
while [ "$status" -gt 128 ] && kill -0 "$torchrun" 2>/dev/null; do # the wait ended for a signal, not torchrun
  status=0
  wait "$torchrun" || status=$?
done
wait "$filter" || true
if [ "$status" != 0 ] && grep -q '^error: ' "$held/stderr" 2>/dev/null; then
  grep '^error: ' "$held/stderr" | awk '!seen[$0]++' >&2 # each rank's message, once
  exit 2
fi
[ ! -f "$held/stderr" ] || cat "$held/stderr" >&2
exit "$status"
