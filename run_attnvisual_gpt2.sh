#!/usr/bin/env bash
# Attention heatmaps on the k-th smallest task: the last token's attention to each number, per layer, in
# position and in rank order; one list drawn as a tree; an interactive view (attention_view.html).
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.attnvisual_gpt2 --help. Other options pass through:
#   bash run_attnvisual_gpt2.sh --example 3 --view-items 4
set -euo pipefail
cd "$(dirname "$0")"

MODELS=${MODELS:-}          # finetuned model folders (space-separated)
PRETRAINED=${PRETRAINED:-}  # a pretrained-not-finetuned folder (empty: none)
DATA_DIR=${DATA_DIR:-}
OUT_DIR=${OUT_DIR:-}
N_EXAMPLES=${N_EXAMPLES:-}  # test lists averaged
DEVICE=${DEVICE:-}
THREADS=${THREADS:-}        # torch threads (0: all cores)

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --pretrained "$PRETRAINED"; opt --data-dir "$DATA_DIR"; opt --out-dir "$OUT_DIR"; opt --n-examples "$N_EXAMPLES"
opt --device "$DEVICE"; opt --threads "$THREADS"
[ -z "$MODELS" ] || args+=(--models $MODELS)
python -m mechprobe.attnvisual_gpt2 ${args[@]+"${args[@]}"} "$@"
