#!/usr/bin/env bash
# The demo: real data that ships offline (scikit-learn's handwritten digits) -> WebDataset shards
# -> train llip_demo on CPU (~3 min on 2 cores) -> zero-shot top-1 on the held-out digits.
# Env: CONFIG (llip_demo | clip_demo | siglip_demo), DATA_DIR, LOGS_DIR; extra args are overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CONFIG=${CONFIG:-llip_demo}
DATA_DIR=${DATA_DIR:-data/digits}
LOGS_DIR=${LOGS_DIR:-logs}

$PY -m llip.data.digits "$DATA_DIR"
$PY -m llip.main "$CONFIG" "train_data=$DATA_DIR/train-{000000..000005}.tar" "logs=$LOGS_DIR" "$@"
$PY -m evals.digits_demo "$LOGS_DIR/$CONFIG" --data "$DATA_DIR"
