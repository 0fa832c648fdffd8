#!/usr/bin/env bash
# Causal analysis on the k-th smallest task: head entropy, head pruning by entropy against random heads,
# and the attention flow with the lowest-entropy heads masked.
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.causal_gpt2 --help. Other options pass through:
#   bash run_causal_gpt2.sh --entropy-order position --flow-positions 3 12
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}            # a finetuned model folder
DATA_DIR=${DATA_DIR:-}
OUT_DIR=${OUT_DIR:-}
N_EXAMPLES=${N_EXAMPLES:-}  # test lists
SEEDS=${SEEDS:-}            # random masking seeds (space-separated)
DEVICE=${DEVICE:-}
THREADS=${THREADS:-}        # torch threads (0: all cores)

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --model "$MODEL"; opt --data-dir "$DATA_DIR"; opt --out-dir "$OUT_DIR"; opt --n-examples "$N_EXAMPLES"
opt --device "$DEVICE"; opt --threads "$THREADS"
[ -z "$SEEDS" ] || args+=(--seeds $SEEDS)
python -m mechprobe.causal_gpt2 ${args[@]+"${args[@]}"} "$@"
