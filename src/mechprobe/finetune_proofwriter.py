"""Train a ProofWriter reasoner from scratch (run_finetune_proofwriter.sh): a small LLaMA that
answers "True or False?" for the probe's prompt with zero demonstrations (reasoner.py), with the
training loop of the GPT-2 task (training.py: resume, best checkpoint by validation accuracy,
curves). results.json: test accuracy overall, per question depth, per strategy, on the
proof-bearing questions per depth, per number of statements; train seconds and steps.
"""

import argparse
from dataclasses import MISSING, asdict, dataclass, fields

import torch

from . import reasoner as rs
from .optim import OPTIMIZERS
from .tiny import WIRED_PAIRS, wired_slices
from .training import Trainer, bf16_fast, load_checkpoint, plot_curves, run_loop, save_pretrained_atomic
from .utils import (
    MechprobeError,
    add_threads_arg,
    finished_run,
    get_logger,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    prepare,
    run_folder,
    run_main,
    seed_everything,
    seed_int,
    write_config,
    write_json,
)

log = get_logger()


@dataclass
class ReasonerSettings:
    """One run (the CLI's options take these defaults, as the script)."""

    data_dir: str = "data/proofwriter/reasoner"
    out_dir: str = "runs/finetune_proofwriter"
    depth: int = 1
    sizes: tuple = (6000, 300, 300)
    groups: tuple = (2, 4, 8, 12, 16, 20, 24)
    questions: int = 8
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    lr: float = 5e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_steps: int = 5000
    warmup: int = 100
    decay_steps: int = 0
    eval_every: int = 500
    target_acc: float = 0.0
    curriculum: int = 0
    stage_steps: int = 0
    positive_steps: int = 1400
    positive_batch: int = 0
    positive_words: int = 0
    lm_weight: float = 1.0
    balanced: int = 0
    binding_pairs: int = 0
    train_more: int = 0
    prior_balance: int = 0
    pack: int = 1
    lm_question: int = 0
    lm_statements: int = 0
    binding_weight: float = 1.0
    recall: float = 1.0
    recall_layer: int = 0
    recall_order: str = "shuffled"
    optimizer: str = "adamw"
    tie: int = 0
    rope_theta: float = 1e6
    position_heads: int = 0
    early_answer: float = 0.0
    wired_lookup: int = 0
    wired_hold: int = 0
    bos: int = 0
    compile: int = 1
    seed: int = 0
    autocast: str = "auto"
    device: str = "auto"
    threads: int = 0
    restart: bool = False


RESUME_KEYS = (
    "data_dir",
    "depth",
    "sizes",
    "groups",
    "questions",
    "layers",
    "hidden",
    "heads",
    "lr",
    "weight_decay",
    "batch_size",
    "max_steps",
    "warmup",
    "decay_steps",
    "curriculum",
    "stage_steps",
    "positive_steps",
    "positive_batch",
    "positive_words",
    "lm_weight",
    "balanced",
    "binding_pairs",
    "train_more",
    "prior_balance",
    "pack",
    "lm_question",
    "lm_statements",
    "binding_weight",
    "recall",
    "recall_layer",
    "recall_order",
    "optimizer",
    "tie",
    "rope_theta",
    "position_heads",
    "early_answer",
    "wired_lookup",
    "wired_hold",
    "bos",
    "seed",
    "autocast",
)


# settings introduced after the first checkpoints were written: such a checkpoint ran with these values
ADDED = {
    "curriculum": 0,
    "stage_steps": 0,
    "positive_steps": 0,
    "positive_batch": 0,
    "positive_words": 0,
    "lm_weight": 0.0,
    "balanced": 0,
    "binding_pairs": 0,
    "train_more": 0,
    "prior_balance": 0,
    "decay_steps": 0,
    "pack": 0,
    "lm_question": 0,
    "lm_statements": 0,
    "binding_weight": 1.0,
    "recall": 0.0,
    "recall_layer": 0,
    "recall_order": "shuffled",
    "optimizer": "adamw",
    "tie": 0,
    "rope_theta": 10000.0,
    "position_heads": 0,
    "early_answer": 0.0,
    "wired_lookup": 0,
    "wired_hold": 2500,
    "bos": 0,
}


def _finish(tr, task, tok, out, dev):
    """After training: last/ saved, the best checkpoint tested beside the shortcut baselines on the same
    test questions, results.json, curves.png and kinds.png written."""
    from .models import load_model
    from .plots import kinds_figure

    save_pretrained_atomic(tr.model, tok, out / "last")
    best = load_model(out / "best", device=dev)
    test = task.breakdown(best, "test")
    base = rs.baseline_reports(task.items["train"], task.items["test"])
    res = {
        "test": {**test, "lookup": rs.lookup_accuracy(best, tok, task.items["test"])},
        "baselines": base,
        "test_last": task.breakdown(tr.model, "test")["accuracy"],
        "val_acc_best": tr.best,
        "val": task.breakdown(best, "val"),
        "steps": tr.step,
        "train_seconds": round(tr.elapsed, 1),
    }
    write_json(out / "results.json", res)
    plot_curves(tr.history, out / "curves.png")
    kinds_figure({"reasoner": test, **base}, out / "kinds.png", title="test accuracy per question kind")
    log.info(
        "test: balanced accuracy %.3f (%s); accuracy %.3f; %s; %d steps in %.0f s",
        test["balanced_accuracy"],
        ", ".join(f"{b} {r['balanced_accuracy']:.3f}" for b, r in base.items()),
        test["accuracy"],
        ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in test["by_kind"].items() if v),
        tr.step,
        tr.elapsed,
    )
    return res


def _task(a, tok, splits):
    """The training task of settings `a`."""
    return rs.PromptTask(
        tok,
        splits,
        a.batch_size,
        a.seed,
        curriculum=a.curriculum,
        stage_steps=a.stage_steps,
        positive_steps=a.positive_steps,
        positive_batch=a.positive_batch,
        prior_balance=a.prior_balance,
        pack=bool(a.pack),
        lm_question=bool(a.lm_question),
        lm_statements=bool(a.lm_statements),
        binding_weight=a.binding_weight,
        recall=a.recall > 0,
        positive_words=bool(a.positive_words),
        recall_order=a.recall_order,
        early_answer=a.early_answer > 0,
    )


def _data(a):
    """The data files of settings `a` (generated first when the folder holds none) and their questions."""
    cfg = rs.data_config(
        a.depth,
        a.sizes,
        a.groups,
        a.questions,
        a.seed,
        balanced=bool(a.balanced),
        binding_pairs=a.binding_pairs,
        train_more=a.train_more,
    )
    files = rs.ensure_data(a.data_dir, cfg)
    return files, {s: rs.read_questions(f) for s, f in files.items()}


def _model(a, tok):
    """The randomly initialised reasoner of settings `a` for the tokenizer `tok`."""
    arch = dict(tie=bool(a.tie), rope_theta=a.rope_theta, position_heads=a.position_heads, wired_lookup=a.wired_lookup)
    return rs.build_model(tok, a.layers, a.hidden, a.heads, a.seed, **arch)


def _trainer(a, model, dev, answer_ids):
    """The Trainer of settings `a`: optimizer and schedule, the losses' weights, the compiled forward
    (answer_ids: the answer words' token ids, for the early answer loss)."""
    sched = (a.lr, a.weight_decay, a.warmup, a.max_steps, dev)
    losses = (a.lm_weight, a.decay_steps, a.recall, a.compile, a.recall_layer, a.optimizer)
    hold = dict(held=wired_slices(model, a.wired_lookup == 3), hold_steps=a.wired_hold) if a.wired_lookup else {}
    return Trainer(model, *sched, *losses, early_answer=a.early_answer, answer_ids=answer_ids, **hold)


def _defining(a):
    """The settings that define a training run (RESUME_KEYS), as config.json records them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(a, k)) for k in RESUME_KEYS)}


def train(a):
    """Train (or resume) the reasoner with ReasonerSettings `a`; returns results.json's content."""
    out = prepare(a)
    done = None if a.restart else finished_run(out, _defining(a))
    if done is not None:
        log.info("%s holds a complete run with these settings (results.json); RESTART=1 trains it again", out)
        return done
    threads = a.threads
    seed_everything(a.seed)
    files, splits = _data(a)
    tok = rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"], bool(a.bos))
    task = _task(a, tok, splits)
    model = _model(a, tok)
    dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(a, k)) for k in RESUME_KEYS)}
    ckpt = out / "checkpoint.pt"
    resume = load_checkpoint(ckpt, settings, dev, ADDED) if ckpt.exists() and not a.restart else None
    tr = _trainer(a, model, dev, task.word_ids)
    use_bf16 = a.autocast == "bf16" or (a.autocast == "auto" and bf16_fast(dev))
    with run_folder(
        out, outputs=("results.json", "config.json", "curves.png", "kinds.png"), owner="finetune_proofwriter"
    ):
        write_config(
            out,
            asdict(a),
            list(files.values()),
            device=dev,
            threads=threads,
            bf16_autocast=use_bf16,
            params=sum(p.numel() for p in model.parameters()),
            n_questions={s: len(v) for s, v in splits.items()},
            model_config=model.config.to_dict(),
        )
        if resume is not None:
            tr.restore(resume)
            log.info("resuming from %s at step %d/%d (best val acc %.4f)", ckpt, tr.step, a.max_steps, tr.best)
        log.info(
            "%d training questions, %d parameters", len(splits["train"]), sum(p.numel() for p in model.parameters())
        )
        # no validation in the positive phase: answering 'not' questions is not trained yet (accuracy ~0.5)
        run_loop(tr, task, tok, out, settings, use_bf16, a.eval_every, a.target_acc, validate_after=a.positive_steps)
        res = _finish(tr, task, tok, out, dev)
        print(f"model: {out / 'best'}  results: {out / 'results.json'}  curves: {out / 'curves.png'}")
        return res


def parser():
    p = argparse.ArgumentParser(
        description="Train a ProofWriter reasoner (a small LLaMA) from scratch on generated theories.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", help="generated here first (train/dev/test theories) when it holds no data")
    p.add_argument("--out-dir")
    _data_and_model_args(p)
    _schedule_args(p)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--autocast", choices=["auto", "bf16", "none"], help="bf16 autocast for the training forward")
    _switch(p, "--compile", "1: torch.compile the training forward (needs a C++ compiler on a CPU; same model)")
    p.add_argument("--device")
    add_threads_arg(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(**{f.name: f.default for f in fields(ReasonerSettings) if f.default is not MISSING})
    return p


def _switch(p, flag, help):
    """A 0/1 option."""
    p.add_argument(flag, type=int, choices=[0, 1], help=help)


def _data_and_model_args(p):
    p.add_argument("--depth", type=nonneg_int, help=f"questions of depth 0..DEPTH (at most {rs.MAX_DEPTH})")
    p.add_argument("--sizes", type=positive_int, nargs=3, metavar=("TRAIN", "DEV", "TEST"), help="theories per split")
    p.add_argument("--groups", type=positive_int, nargs="+", help="numbers of statements of the theories")
    p.add_argument("--questions", type=positive_int, help="questions per theory")
    p.add_argument("--layers", type=positive_int)
    p.add_argument("--hidden", type=positive_int)
    p.add_argument("--heads", type=positive_int)
    _switch(p, "--tie", "1: the unembedding shares the input embedding's weights (W_U = W_E^T)")
    _switch(
        p,
        "--bos",
        '1: every prompt starts with "<s>", as a LLaMA tokenizer\'s do (a token without content for heads to rest on)',
    )
    p.add_argument(
        "--rope-theta",
        type=positive_float,
        help="RoPE's base (larger: more of each head's dimensions match by content, not by distance)",
    )
    p.add_argument(
        "--position-heads",
        type=nonneg_int,
        help="K > 0: the attention projections get biases and layer 0's heads 0..K-1 start attending 1..K "
        "tokens back (previous-token heads; 'E is a.': the attribute sees its entity 2 back; 0: none)",
    )
    _switch(
        p,
        "--balanced",
        "1: as many questions of each kind per theory (no size or 'not' shortcut; a new DATA_DIR)",
    )
    p.add_argument(
        "--binding-pairs",
        type=nonneg_int,
        help="pairs of binding questions added to each training theory: 'E is a.' unprovable though E and a "
        "occur, with a provable one on the same attribute (else entity); dev/test unchanged; a new DATA_DIR",
    )
    p.add_argument(
        "--train-more",
        type=nonneg_int,
        help="more questions per training theory (drawn as the others; dev/test unchanged; a new DATA_DIR)",
    )


def _schedule_args(p):
    p.add_argument("--lr", type=positive_float)
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="adamw, or muon (Muon on the blocks' weight matrices, AdamW on the rest; the same lr and weight decay)",
    )
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--warmup", type=nonneg_int)
    p.add_argument(
        "--decay-steps",
        type=nonneg_int,
        help="the learning rate stays at LR after the warm-up and decays linearly to 0 over the last DECAY_STEPS "
        "steps (0: it decays from the end of the warm-up)",
    )
    p.add_argument("--eval-every", type=positive_int)
    p.add_argument("--target-acc", type=float, help="stop once validation accuracy reaches this (0: never)")
    _phase_args(p)


def _phase_args(p):
    """The curriculum, staged and positive phases, packing."""
    p.add_argument(
        "--curriculum", type=nonneg_int, help="epochs that go through the prompts from the shortest to the longest"
    )
    p.add_argument(
        "--stage-steps",
        type=nonneg_int,
        help="first steps trained on the smallest theories, the larger groups let in one by one "
        "(equal shares of these steps; 0: none)",
    )
    p.add_argument(
        "--positive-steps",
        type=nonneg_int,
        help="first steps trained on the questions without 'not' only (whether the statement holds is learnt "
        "before its negation; 0: none)",
    )
    p.add_argument(
        "--positive-batch",
        type=nonneg_int,
        help="questions per batch in the positive phase (0: BATCH_SIZE; half of it packs as many theories per "
        "step as later, about half of a theory's questions being without 'not': cheaper steps)",
    )
    _switch(
        p,
        "--positive-words",
        "1: the positive phase keeps only the questions whose entity and attribute both occur in the theory "
        "(the words' presence tells nothing there; the answer is whether they are bound)",
    )
    _switch(
        p,
        "--prior-balance",
        "1: weight each question's loss so that the answer's prior given the theory's size and 'not' is 1/2",
    )
    _switch(
        p,
        "--pack",
        "1: batches of whole theories, each theory's questions packed into one row that holds its statements "
        "once (the same losses as the prompts run apart, at a fraction of the tokens); 0: questions drawn apart",
    )
    _loss_args(p)


def _loss_args(p):
    """The auxiliary losses and the loss weights."""
    p.add_argument(
        "--binding-weight",
        type=nonneg_float,
        help="loss weight of the unprovable questions whose entity and attribute both occur in the theory "
        "(the words alone do not answer them; 1: as the others)",
    )
    _switch(
        p,
        "--lm-question",
        "1: the next-token loss on the question's tokens only (with --pack 1), not on the statements",
    )
    _switch(
        p,
        "--lm-statements",
        "1: the next-token loss on the statements' tokens only (with --pack 1), not on the question (whose "
        "unprovable half would train completing 'Bob is' with attributes that are not Bob's)",
    )
    p.add_argument(
        "--lm-weight",
        type=nonneg_float,
        help="weight of the auxiliary next-token loss on the prompt's tokens (0: the answer's loss only)",
    )
    p.add_argument(
        "--recall",
        type=nonneg_float,
        help="weight of a next-token loss on each packed row's recall segment: the theory's facts restated in "
        "another order after its statements, so that 'Bob is' must be completed from what the statements say "
        "of Bob (with --pack 1; 0: none)",
    )
    p.add_argument(
        "--recall-layer",
        type=nonneg_int,
        help="read the recall loss after this many layers (the model's own norm and unembedding on the residual "
        "stream there), so that the lookup is done early enough for the later layers to use (0: the last layer)",
    )
    p.add_argument(
        "--recall-order",
        choices=rs.RECALL_ORDERS,
        help="order of the facts in a recall segment: shuffled (only 'Bob is' -> Bob's attributes can be "
        "predicted), rotated (the statements' order from a random first fact: each restated fact must also be "
        "found among the statements, by its entity and attribute together, to predict the next one) or reversed "
        "(shuffled, each fact 'E is a.' restated as 'a is E.': 'big is' -> the entities said to be big)",
    )
    _circuit_args(p)


def _circuit_args(p):
    """The early answer loss and the wired-in lookup."""
    p.add_argument(
        "--early-answer",
        type=nonneg_float,
        help="weight of the answer's loss read early too: at the question's last word ('E is a .': at a) and each "
        "token after it but the last, over the two answer words' logits (with --pack 1; 0: at the last token only)",
    )
    p.add_argument(
        "--wired-lookup",
        type=int,
        choices=[0, 1, 2, 3],
        help="1: layer 1's head 0 starts as a lookup, wired in at init: at the attribute of a question 'E is a.' it "
        "attends to the fact 'E is a.' among the statements (needs --position-heads 3 and --heads 4); 2: the same, "
        "each word matched in its own place, every word alike; 3: 2 that also says whether it found the fact "
        "(layer 1's MLP: 'not found' on one direction) and reads 'E is not a.' as 'E is a.'",
    )
    p.add_argument(
        "--wired-hold",
        type=nonneg_int,
        help="with --wired-lookup 1, 2 or 3: the wired weights are put back to their initial values after each of the "
        "first WIRED_HOLD steps (else training unlearns them before the answer learns to read them; >= MAX_STEPS: "
        "fixed for the whole run, the default; with 3 the held weights include the embeddings and 3 RMSNorm gains)",
    )


def main(argv=None):
    a = ReasonerSettings(**vars(parser().parse_args(argv)))
    if a.hidden % a.heads:
        raise MechprobeError(f"HIDDEN={a.hidden} is not a multiple of HEADS={a.heads}")
    if a.position_heads > a.heads:
        raise MechprobeError(f"POSITION_HEADS={a.position_heads} is more than HEADS={a.heads}")
    for name, on in (("LM_QUESTION", a.lm_question), ("LM_STATEMENTS", a.lm_statements)):
        if on and not a.pack:
            raise MechprobeError(f"{name}=1 needs PACK=1 (this next-token loss is computed on packed rows)")
    if a.lm_question and a.lm_statements:
        raise MechprobeError(
            "LM_QUESTION=1 and LM_STATEMENTS=1: the next-token loss is on one or the other; choose one"
        )
    if a.recall and not a.pack:
        raise MechprobeError(
            f"RECALL={a.recall:g} needs PACK=1 (the recall segments are packed after the statements); "
            "with PACK=0 set RECALL=0"
        )
    if a.wired_lookup and (a.position_heads != 3 or a.heads != 4 or a.layers < 2):
        raise MechprobeError(
            f"WIRED_LOOKUP={a.wired_lookup} needs POSITION_HEADS=3, HEADS=4 and LAYERS >= 2 (layer 0's heads 0-2 "
            f"copy the 3 tokens before each token; layer 1's head 0 matches them): got {a.position_heads}, {a.heads}, "
            f"{a.layers}"
        )
    if a.wired_lookup == 3 and a.hidden // a.heads <= 2 * WIRED_PAIRS:
        raise MechprobeError(
            f"WIRED_LOOKUP=3 needs HIDDEN/HEADS > {2 * WIRED_PAIRS} (the found signal's direction lies beside the "
            f"words' {2 * WIRED_PAIRS} code dimensions of a head): got {a.hidden}/{a.heads}"
        )
    if a.wired_lookup == 3 and a.tie:
        raise MechprobeError(
            "WIRED_LOOKUP=3 holds the word embeddings (the codes): with TIE=1 the unembedding would be held too; "
            "set TIE=0"
        )
    if a.early_answer and not a.pack:
        raise MechprobeError(
            f"EARLY_ANSWER={a.early_answer:g} needs PACK=1 (the early positions are read from packed rows)"
        )
    if a.positive_words and not a.positive_steps:
        raise MechprobeError("POSITIVE_WORDS=1 needs POSITIVE_STEPS > 0 (it selects the positive phase's questions)")
    if a.recall_layer and not a.recall:
        raise MechprobeError(f"RECALL_LAYER={a.recall_layer} needs RECALL > 0 (it says where the recall loss is read)")
    if a.recall_order != "shuffled" and not a.recall:
        raise MechprobeError(f"RECALL_ORDER={a.recall_order} needs RECALL > 0 (it orders the recall segments)")
    if a.recall_layer > a.layers:
        raise MechprobeError(f"RECALL_LAYER={a.recall_layer}: expected 0 (the last layer) to {a.layers} (LAYERS)")
    return train(a)


if __name__ == "__main__":
    run_main(main)
