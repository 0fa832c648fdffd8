#!/usr/bin/env bash
# MechanisticProbe on GPT-2 models finetuned on the k-th smallest task.
# MODELS and DATA_DIRS are space-separated lists, one data folder per model (k is read from its meta.json):
#   MODELS="runs/finetune_gpt2_k0/best runs/finetune_gpt2_k1/best" DATA_DIRS="data/ksmallest/min00 data/ksmallest/min01" bash run_probing_gpt2.sh
set -euo pipefail
cd "$(dirname "$0")"

MODELS=${MODELS:-runs/finetune_gpt2_k1/best}  # finetuned model folders
DATA_DIRS=${DATA_DIRS:-data/ksmallest/min01}  # dataset of each model, same order
PRETRAINED=${PRETRAINED:-}                    # optional pretrained-not-finetuned folder (second reference)
OUT_DIR=${OUT_DIR:-runs/probing_gpt2}
N_EXAMPLES=${N_EXAMPLES:-1024}                # test lists probed
SEEDS=${SEEDS:-"0 1 2"}                       # random-init controls and fold splits
FOLDS=${FOLDS:-2}                             # cross-validation folds grouped by example
NORMALIZE=${NORMALIZE:-max}                   # max (divide each example by its max, as the paper) | none
P2_LABELS=${P2_LABELS:-answer}                # answer (the answer vs the other useful numbers, the original) | rank (k+1 classes); same at k=1
KNOCKOUT=${KNOCKOUT:-1}                       # 1: attention knockout (is the tree used?): gold / probe-predicted useful vs random not-useful numbers
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}  # torch threads (0: all cores); lower it when another job shares the cores

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
python -m mechprobe.probing_gpt2 --models $MODELS --data-dirs $DATA_DIRS ${PRETRAINED:+--pretrained "$PRETRAINED"} \
  --out-dir "$OUT_DIR" --n-examples "$N_EXAMPLES" --seeds $SEEDS --folds "$FOLDS" --normalize "$NORMALIZE" --p2-labels "$P2_LABELS" --knockout "$KNOCKOUT" --device "$DEVICE" --threads "$THREADS" "$@"
echo "outputs: $OUT_DIR (probe_results.json, config.json, probe_by_layer.png, probe_by_k.png, probe_by_head_k<k>.png, knockout_k<k>.png, selectivity_k<k>.png, run.log)"
