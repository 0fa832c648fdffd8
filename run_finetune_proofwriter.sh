#!/usr/bin/env bash
# Train a ProofWriter reasoner from scratch: a small LLaMA that answers the probe's prompt
# ("<statements> <question> True or False?", no demonstrations) on generated theories.
# The probing and corruption scripts use it by default:  bash run_probing_proofwriter.sh
set -euo pipefail
cd "$(dirname "$0")"

DATA_DIR=${DATA_DIR:-data/proofwriter/reasoner}   # generated here first (train/dev/test theories) when it holds no data
OUT_DIR=${OUT_DIR:-runs/finetune_proofwriter}
DEPTH=${DEPTH:-1}                                 # questions of depth 0..DEPTH (up to 5)
SIZES=${SIZES:-"6000 300 300"}                    # theories per split (train dev test), about 8 questions each
STATEMENTS=${STATEMENTS:-"2 4 8 12 16 20 24"}     # numbers of statements of the theories (the paper's groups; GROUPS is taken by bash)
QUESTIONS=${QUESTIONS:-8}                         # questions per theory
LAYERS=${LAYERS:-4}
HIDDEN=${HIDDEN:-128}
HEADS=${HEADS:-4}
TIE=${TIE:-0}                                     # 1: tied embeddings (the unembedding is the input embedding)
BOS=${BOS:-0}                                     # 1: every prompt starts with "<s>", as a LLaMA tokenizer's do
ROPE_THETA=${ROPE_THETA:-1000000}                 # RoPE's base (larger: more of each head's dimensions match words by content, not by distance)
POSITION_HEADS=${POSITION_HEADS:-0}               # K: layer 0's heads 0..K-1 start attending 1..K tokens back (attention biases; 0: none)
WIRED_LOOKUP=${WIRED_LOOKUP:-0}                   # 1: layer 1's head 0 starts as a lookup of the question's "E is a" among the facts (POSITION_HEADS=3, HEADS=4); 2: each word matched in its own place, every word alike; 3: 2 that also says whether it found the fact (docs/reasoner.md)
WIRED_HOLD=${WIRED_HOLD:-0}                    # with WIRED_LOOKUP=1, 2 or 3: first steps after which the wired weights are put back to their initial values (>= MAX_STEPS: fixed for the whole run)
EARLY_ANSWER=${EARLY_ANSWER:-0}                   # weight of the answer's loss read early too: at the question's last word and the tokens after it (PACK=1; 0: none)
LR=${LR:-0.0005}
BATCH_SIZE=${BATCH_SIZE:-64}
MAX_STEPS=${MAX_STEPS:-5000}                      # 849-878 s measured on 2 cores, compiled, seeds 0-2 (docs/reasoner.md)
WARMUP=${WARMUP:-100}
DECAY_STEPS=${DECAY_STEPS:-0}                     # last steps over which the lr decays linearly to 0 (0: from the end of the warm-up)
EVAL_EVERY=${EVAL_EVERY:-500}
LM_WEIGHT=${LM_WEIGHT:-1.0}                       # auxiliary next-token loss on the prompt's tokens (0: the answer's loss only)
CURRICULUM=${CURRICULUM:-0}                       # epochs that go from the shortest prompts (smallest theories) to the longest
STAGE_STEPS=${STAGE_STEPS:-0}                     # first steps on the smallest theories only, larger groups let in one by one
POSITIVE_STEPS=${POSITIVE_STEPS:-1400}            # first steps on the questions without "not" only
POSITIVE_BATCH=${POSITIVE_BATCH:-0}                # questions per batch in the positive phase (0: BATCH_SIZE; 32: as many theories per step as later, cheaper steps)
POSITIVE_WORDS=${POSITIVE_WORDS:-0}               # 1: the positive phase keeps only the questions whose entity and attribute both occur in the theory
BALANCED=${BALANCED:-0}                           # 1: as many questions of each kind per theory, no shortcut (use another DATA_DIR)
BINDING_PAIRS=${BINDING_PAIRS:-0}                 # pairs of binding questions added to each training theory (unprovable "E is a." whose words occur + a provable one on the same words; use another DATA_DIR)
TRAIN_MORE=${TRAIN_MORE:-0}                       # more questions per training theory, drawn as the others (dev/test unchanged; use another DATA_DIR)
PRIOR_BALANCE=${PRIOR_BALANCE:-0}                 # 1: loss weights that make the answer's prior given the theory's size and "not" 1/2
BINDING_WEIGHT=${BINDING_WEIGHT:-1}               # loss weight of the unprovable questions whose entity and attribute both occur in the theory
LM_QUESTION=${LM_QUESTION:-0}                     # 1: the next-token loss on the question's tokens only (PACK=1)
LM_STATEMENTS=${LM_STATEMENTS:-0}                 # 1: the next-token loss on the statements' tokens only (PACK=1; not on the question, half of which is unprovable)
RECALL=${RECALL:-1}                               # weight of a next-token loss on the theory's facts restated after its statements (PACK=1; 0: none)
RECALL_LAYER=${RECALL_LAYER:-0}                   # the recall loss read after this many layers (logit lens), so the lookup is done early (0: the last layer)
RECALL_ORDER=${RECALL_ORDER:-shuffled}            # order of the facts restated in a recall segment: shuffled, rotated (statements' order from a random fact: each must be found by its entity and attribute), or reversed ("E is a." restated as "a is E.": the lookup by attribute)
OPTIMIZER=${OPTIMIZER:-adamw}                     # adamw, or muon (orthogonalised updates for the blocks' weight matrices, AdamW for the rest)
PACK=${PACK:-1}                                   # 1: batches of whole theories, a theory's questions in one row holding its statements once (same losses, ~3x faster steps)
COMPILE=${COMPILE:-1}                             # 1: torch.compile the training forward (needs g++ on a CPU, else set COMPILE=0; same model, faster steps)
SEED=${SEED:-0}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-0}                             # torch threads (0: all cores); lower it when another job shares the cores
RESTART=${RESTART:-0}                             # 1: ignore an existing checkpoint in OUT_DIR and start over

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
flags=()
[ "$RESTART" = 1 ] && flags+=(--restart)
python -m mechprobe.finetune_proofwriter --data-dir "$DATA_DIR" --out-dir "$OUT_DIR" --depth "$DEPTH" --sizes $SIZES \
  --groups $STATEMENTS --questions "$QUESTIONS" --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --tie "$TIE" --bos "$BOS" --rope-theta "$ROPE_THETA" --position-heads "$POSITION_HEADS" --early-answer "$EARLY_ANSWER" --wired-lookup "$WIRED_LOOKUP" --wired-hold "$WIRED_HOLD" --lr "$LR" \
  --batch-size "$BATCH_SIZE" --max-steps "$MAX_STEPS" --warmup "$WARMUP" --decay-steps "$DECAY_STEPS" --eval-every "$EVAL_EVERY" --curriculum "$CURRICULUM" --stage-steps "$STAGE_STEPS" --positive-steps "$POSITIVE_STEPS" --positive-batch "$POSITIVE_BATCH" --positive-words "$POSITIVE_WORDS" --lm-weight "$LM_WEIGHT" --balanced "$BALANCED" --binding-pairs "$BINDING_PAIRS" --train-more "$TRAIN_MORE" --prior-balance "$PRIOR_BALANCE" --pack "$PACK" --lm-question "$LM_QUESTION" --lm-statements "$LM_STATEMENTS" --binding-weight "$BINDING_WEIGHT" --recall "$RECALL" --recall-layer "$RECALL_LAYER" --recall-order "$RECALL_ORDER" --optimizer "$OPTIMIZER" --compile "$COMPILE" --seed "$SEED" \
  --device "$DEVICE" --threads "$THREADS" "${flags[@]}" "$@"
echo "outputs: $OUT_DIR (best/ and last/ models, results.json, config.json, curves.png, run.log)"
