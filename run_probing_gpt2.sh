#!/usr/bin/env bash
# The MechanisticProbe on GPT-2 models finetuned on the k-th smallest task (run_finetune_gpt2.sh first):
# S_P1 / S_P2 against random-init controls, by layer, per head, and the attention knockout.
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.probing_gpt2 --help. Other options pass through:
#   MODELS="runs/finetune_gpt2_k1/best runs/finetune_gpt2_k2/best" DATA_DIRS="data/ksmallest/min01 data/ksmallest/min02" \
#     bash run_probing_gpt2.sh --p2-labels rank
set -euo pipefail
cd "$(dirname "$0")"

MODELS=${MODELS:-}          # finetuned model folders (space-separated, one per k)
DATA_DIRS=${DATA_DIRS:-}    # the dataset of each model, in the same order
PRETRAINED=${PRETRAINED:-}  # a pretrained-not-finetuned folder (a second reference; empty: none)
OUT_DIR=${OUT_DIR:-}
N_EXAMPLES=${N_EXAMPLES:-}  # test lists probed
SEEDS=${SEEDS:-}            # random-init controls and fold splits (space-separated)
DEVICE=${DEVICE:-}          # cpu | cuda
THREADS=${THREADS:-}        # torch threads (0: all cores)

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --pretrained "$PRETRAINED"; opt --out-dir "$OUT_DIR"; opt --n-examples "$N_EXAMPLES"; opt --device "$DEVICE"
opt --threads "$THREADS"
[ -z "$MODELS" ] || args+=(--models $MODELS)
[ -z "$DATA_DIRS" ] || args+=(--data-dirs $DATA_DIRS)
[ -z "$SEEDS" ] || args+=(--seeds $SEEDS)
python -m mechprobe.probing_gpt2 ${args[@]+"${args[@]}"} "$@"
