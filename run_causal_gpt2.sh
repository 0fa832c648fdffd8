#!/usr/bin/env bash
# Head entropy, head pruning (random / lowest-entropy first / highest-entropy first) and the
# attention-flow case study, on a GPT-2 finetuned on the k-th smallest task.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-runs/finetune_gpt2_k1/best}
DATA_DIR=${DATA_DIR:-data/ksmallest/min01}
OUT_DIR=${OUT_DIR:-runs/causal_gpt2}
N_EXAMPLES=${N_EXAMPLES:-1000}                # test lists
SHARES=${SHARES:-"0 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9"}
SEEDS=${SEEDS:-"0 1 2 3 4"}                   # random masking seeds
ENTROPY_ORDER=${ENTROPY_ORDER:-rank}          # rank | position | per_list: which entropy orders heads
FLOW_MASK_SHARE=${FLOW_MASK_SHARE:-0.4}       # lowest-entropy heads masked in the flow case study
FLOW_POSITIONS=${FLOW_POSITIONS:-}            # where the k+1 useful numbers are put (smallest first); empty: spread (3 12 for k=1)
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}  # torch threads (0: all cores); lower it when another job shares the cores

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
python -m mechprobe.causal --model "$MODEL" --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" --n-examples "$N_EXAMPLES" \
  --shares $SHARES --seeds $SEEDS --entropy-order "$ENTROPY_ORDER" --flow-mask-share "$FLOW_MASK_SHARE" \
  ${FLOW_POSITIONS:+--flow-positions $FLOW_POSITIONS} --device "$DEVICE" --threads "$THREADS" "$@"
echo "outputs: $OUT_DIR (head_entropy.png, pruning.png, attention_flow.png, causal_results.json, config.json)"
