#!/usr/bin/env bash
# Train a ProofWriter reasoner from scratch: a small LLaMA that answers the probe's prompt
# ("<statements> <question> True or False?", no demonstrations) on generated theories, learnt end to end
# (docs/reasoner.md). MODEL=reasoner in the probing and corruption scripts reads it.
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.finetune_proofwriter --help. Other options pass through:
#   SEED=1 DATA_DIR=data/proofwriter/reasoner_s1 OUT_DIR=runs/reasoner_s1 bash run_finetune_proofwriter.sh --early-answer 1
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-}      # the theories (generated here first when the folder holds none)
OUT_DIR=${OUT_DIR:-}        # the run's folder: best/ and last/ models, results.json, kinds.png, curves.png, run.log
SIZES=${SIZES:-}            # theories per split: "train dev test"
LAYERS=${LAYERS:-}
HIDDEN=${HIDDEN:-}
HEADS=${HEADS:-}
MAX_STEPS=${MAX_STEPS:-}
BATCH_SIZE=${BATCH_SIZE:-}  # questions per step (whole theories)
LR=${LR:-}
SEED=${SEED:-}              # the theories' draw and the initialisation (another seed needs another DATA_DIR)
DEVICE=${DEVICE:-}          # auto | cpu | cuda
THREADS=${THREADS:-}        # torch threads (0: all cores); lower it when another job shares the cores
RESTART=${RESTART:-}        # 1: ignore an existing checkpoint in OUT_DIR and start over

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --data-dir "$DATA_DIR"; opt --out-dir "$OUT_DIR"; opt --layers "$LAYERS"; opt --hidden "$HIDDEN"; opt --heads "$HEADS"
opt --max-steps "$MAX_STEPS"; opt --batch-size "$BATCH_SIZE"; opt --lr "$LR"; opt --seed "$SEED"; opt --device "$DEVICE"
opt --threads "$THREADS"
[ -z "$SIZES" ] || args+=(--sizes $SIZES)
[ "$RESTART" != 1 ] || args+=(--restart)
python -m mechprobe.finetune_proofwriter ${args[@]+"${args[@]}"} "$@"
