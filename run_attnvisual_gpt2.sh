#!/usr/bin/env bash
# Heatmaps of the last token's attention to each number per layer (rank and position order),
# for the pretrained model (if any), the finetuned models and a random-init control,
# and one test list drawn as its gold tree next to the probe's tree.
set -euo pipefail
cd "$(dirname "$0")"

MODELS=${MODELS:-runs/finetune_gpt2_k1/best}  # finetuned model folders (space-separated)
PRETRAINED=${PRETRAINED:-}                    # optional pretrained-not-finetuned folder
DATA_DIR=${DATA_DIR:-data/ksmallest/min01}
OUT_DIR=${OUT_DIR:-runs/attnvisual_gpt2}
N_EXAMPLES=${N_EXAMPLES:-1000}                # test lists averaged
EXAMPLE=${EXAMPLE:-0}                         # test list drawn as a tree
VIEW_ITEMS=${VIEW_ITEMS:-8}                   # lists in the interactive view attention_view.html (0: none)
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}  # torch threads (0: all cores); lower it when another job shares the cores

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
python -m mechprobe.attnvisual --models $MODELS ${PRETRAINED:+--pretrained "$PRETRAINED"} --data-dir "$DATA_DIR" \
  --out-dir "$OUT_DIR" --n-examples "$N_EXAMPLES" --example "$EXAMPLE" --view-items "$VIEW_ITEMS" --device "$DEVICE" --threads "$THREADS" "$@"
echo "outputs: $OUT_DIR (attention_rank.png/.pdf, attention_position.png/.pdf, tree_example.png, attention_view.html, attention_matrices.json, config.json)"
