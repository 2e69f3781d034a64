#!/usr/bin/env bash
# Train with tinytitan. Everything after the script name is passed on as config overrides:
#   ./run_train.sh                                   debug model, built-in corpus, CPU or GPU
#   CONFIG_FILE=./train_configs/other.toml NGPU=1 ./run_train.sh --training.steps=50
# CONFIG_FILE defaults to the debug recipe; NGPU is the number of processes (default 1; more
# than one are started by torchrun).
# The first call installs what is missing into .venv (see scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/bootstrap.sh
tt_bootstrap

CONFIG_FILE=${CONFIG_FILE:-./train_configs/debug_model.toml}
NGPU=${NGPU:-1}

if [ "$NGPU" = 1 ]; then
  exec "$PYTHON" -m tinytitan.train --job.config_file="$CONFIG_FILE" "$@"
fi
# Several processes: check the config once first, so that a mistake is one line and exit status 2
# rather than a failure report from every worker.
"$PYTHON" -m tinytitan.config --job.config_file="$CONFIG_FILE" "$@" || exit
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" \
  -m tinytitan.train --job.config_file="$CONFIG_FILE" "$@"
