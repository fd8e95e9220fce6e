#!/usr/bin/env bash
# The demo: real data that ships offline (scikit-learn's handwritten digits) -> WebDataset shards
# -> train llip_demo on CPU (~3 min on 2 cores) -> zero-shot evals of every checkpoint -> table.
# Env: CONFIG (llip_demo | clip_demo | siglip_demo), DATA_DIR, LOGS_DIR; extra args are overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export WANDB_MODE=${WANDB_MODE:-offline}
export CONFIG=${CONFIG:-llip_demo} DATA_DIR=${DATA_DIR:-data/digits} LOGS_DIR=${LOGS_DIR:-logs}

$PY -m llip.data.synthetic.digits "$DATA_DIR"
$PY -m llip.main "$CONFIG" "train_data=$DATA_DIR/train-{000000..000005}.tar" "logs=$LOGS_DIR" "$@"
$PY -m evals.main_mc --fname config_evals/demo.yaml
echo
echo "run dir:    $LOGS_DIR/$CONFIG (config.yaml, metrics.jsonl, wandb/)"
echo "checkpoint: $(ls -d "$LOGS_DIR/$CONFIG"/checkpoints/step_* | tail -1)"
