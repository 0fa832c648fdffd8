#!/usr/bin/env bash
# Finetune GPT-2 on the k-th smallest task (or train the embedded scratch GPT-2).
# Edit the variables below, or override any of them from the environment:
#   MODEL=/models/gpt2 K=2 OUT_DIR=runs/finetune_gpt2_k2 bash run_finetune_gpt2.sh
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-scratch}                        # local pretrained GPT-2 folder, or "scratch" (embedded default)
K=${K:-1}                                      # 0-indexed rank of the answer: 1 = second smallest (paper's min01)
VOCAB_SIZE=${VOCAB_SIZE:-512}                  # numbers to draw from (used when the data must be generated)
LENGTH=${LENGTH:-16}                           # numbers per list (used when the data must be generated)
DATA_DIR=${DATA_DIR:-data/ksmallest/min0${K}}  # generated here first when it holds no dataset
OUT_DIR=${OUT_DIR:-runs/finetune_gpt2_k${K}}
EPOCHS=${EPOCHS:-2}
MAX_STEPS=${MAX_STEPS:-3000}                   # 0 = let EPOCHS decide
LR=${LR:-}                                     # empty: 2e-3 from scratch, 2e-5 for a pretrained model
BATCH_SIZE=${BATCH_SIZE:-256}
WARMUP=${WARMUP:-200}
EVAL_EVERY=${EVAL_EVERY:-250}
TARGET_ACC=${TARGET_ACC:-0.99}                 # stop once validation accuracy reaches this (0 = never)
TUNING=${TUNING:-all}                          # all | attn | mlp | ln
SEED=${SEED:-0}
SIZES=${SIZES:-"200000 2000 2000"}             # train / val / test lists when generating
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-0}                          # torch threads (0: all cores); lower it when another job shares the cores
RESTART=${RESTART:-0}                          # 1: ignore an existing checkpoint in OUT_DIR and start over

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
python -m mechprobe.finetune --model "$MODEL" --k "$K" --vocab-size "$VOCAB_SIZE" --length "$LENGTH" --data-dir "$DATA_DIR" \
  --out-dir "$OUT_DIR" --epochs "$EPOCHS" --max-steps "$MAX_STEPS" ${LR:+--lr "$LR"} --batch-size "$BATCH_SIZE" \
  --warmup "$WARMUP" --eval-every "$EVAL_EVERY" --target-acc "$TARGET_ACC" --tuning "$TUNING" --seed "$SEED" \
  --sizes $SIZES --device "$DEVICE" --threads "$THREADS" $([ "$RESTART" = 1 ] && echo --restart) "$@"
echo "outputs: $OUT_DIR (best/ and last/ models, results.json, config.json, curves.png)"
