#!/usr/bin/env bash
# Finetune GPT-2 on the k-th smallest task (or train the embedded scratch GPT-2).
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.finetune_gpt2 --help. Other options pass through:
#   MODEL=/models/gpt2 K=2 bash run_finetune_gpt2.sh --epochs 3 --tuning attn
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}            # a local pretrained GPT-2 folder, or scratch (the embedded small GPT-2)
K=${K:-}                    # 0-indexed rank of the answer: 1 = the second smallest (the paper's min01)
DATA_DIR=${DATA_DIR:-}      # the lists (generated here first when the folder holds none); empty: data/ksmallest/min0<K>
OUT_DIR=${OUT_DIR:-}        # the run's folder; empty: runs/finetune_gpt2_k<K>
MAX_STEPS=${MAX_STEPS:-}    # 0: the epochs decide
BATCH_SIZE=${BATCH_SIZE:-}
LR=${LR:-}                  # empty: 2e-3 from scratch, 2e-5 for a pretrained model
TARGET_ACC=${TARGET_ACC:-}  # stop once validation accuracy reaches this (0: never)
SEED=${SEED:-}
DEVICE=${DEVICE:-}          # auto | cpu | cuda
THREADS=${THREADS:-}        # torch threads (0: all cores); lower it when another job shares the cores
RESTART=${RESTART:-}        # 1: ignore an existing checkpoint in OUT_DIR and start over

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --model "$MODEL"; opt --k "$K"; opt --data-dir "$DATA_DIR"; opt --out-dir "$OUT_DIR"; opt --max-steps "$MAX_STEPS"
opt --batch-size "$BATCH_SIZE"; opt --lr "$LR"; opt --target-acc "$TARGET_ACC"; opt --seed "$SEED"; opt --device "$DEVICE"
opt --threads "$THREADS"
[ "$RESTART" != 1 ] || args+=(--restart)
python -m mechprobe.finetune_gpt2 ${args[@]+"${args[@]}"} "$@"
