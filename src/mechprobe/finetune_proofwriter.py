"""Train a ProofWriter reasoner from scratch (run_finetune_proofwriter.sh): a small LLaMA that
answers "True or False?" for the probe's prompt with zero demonstrations (reasoner.py), with the
training loop of the GPT-2 task (training.py: resume, best checkpoint by validation accuracy,
curves). results.json: test accuracy overall, per question kind with the balanced accuracy, per
depth, on the proof-bearing questions per depth, per number of statements, beside the shortcut
baselines on the same questions (reasoner.report); train seconds and steps.
"""

import argparse
from dataclasses import MISSING, asdict, dataclass, fields

import torch

from . import reasoner as rs
from .cli import (
    DefaultsHelp,
    add_threads_arg,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    prepare,
    run_main,
    seed_int,
)
from .runs import defining_settings, finished_run, run_folder, write_config, write_json
from .training import Trainer, bf16_fast, load_checkpoint, plot_curves, run_loop, save_pretrained_atomic
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()


@dataclass
class ReasonerSettings:
    """One run: the recipe (docs/reasoner.md) is the default; the CLI's options take these defaults."""

    data_dir: str = "data/proofwriter/reasoner"
    out_dir: str = "runs/finetune_proofwriter"
    depth: int = 1
    sizes: tuple = (6000, 300, 300)
    groups: tuple = (2, 4, 8, 12, 16, 20, 24)
    questions: int = 8
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    rope_theta: float = 1e6
    lr: float = 5e-4
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_steps: int = 5000
    warmup: int = 100
    eval_every: int = 500
    target_acc: float = 0.0
    positive_steps: int = 1400
    lm_weight: float = 1.0
    recall: float = 1.0
    compile: int = 1
    seed: int = 0
    autocast: str = "auto"
    device: str = "auto"
    threads: int = 0
    restart: bool = False


# the settings that do not change what a run trains (a checkpoint resumes under other values)
NOT_DEFINING = ("out_dir", "eval_every", "target_acc", "compile", "device", "threads", "restart")
RESUME_KEYS = tuple(f.name for f in fields(ReasonerSettings) if f.name not in NOT_DEFINING)


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
        positive_steps=a.positive_steps,
        recall=a.recall > 0,
    )


def _data(a):
    """The data files of settings `a` (generated first when the folder holds none) and their questions."""
    cfg = rs.data_config(a.depth, a.sizes, a.groups, a.questions, a.seed)
    files = rs.ensure_data(a.data_dir, cfg)
    return files, {s: rs.read_questions(f) for s, f in files.items()}


def _trainer(a, model, dev):
    """The Trainer of settings `a`."""
    return Trainer(
        model,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup=a.warmup,
        total=a.max_steps,
        dev=dev,
        lm_weight=a.lm_weight,
        recall_weight=a.recall,
        compile=bool(a.compile),
    )


def train(a):
    """Train (or resume) the reasoner with ReasonerSettings `a`; returns results.json's content."""
    out = prepare(a)
    done = None if a.restart else finished_run(out, defining_settings(a, RESUME_KEYS))
    if done is not None:
        log.info("%s holds a complete run with these settings (results.json); restart=True trains it again", out)
        return done
    threads = a.threads
    seed_everything(a.seed)
    files, splits = _data(a)
    tok = rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"])
    task = _task(a, tok, splits)
    model = rs.build_model(tok, a.layers, a.hidden, a.heads, a.seed, rope_theta=a.rope_theta)
    dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    settings = defining_settings(a, RESUME_KEYS)
    ckpt = out / "checkpoint.pt"
    resume = load_checkpoint(ckpt, settings, dev) if ckpt.exists() and not a.restart else None
    tr = _trainer(a, model, dev)
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
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--data-dir", help="generated here first (train/dev/test theories) when it holds no data")
    p.add_argument("--out-dir")
    p.add_argument("--depth", type=nonneg_int, help=f"questions of depth 0..DEPTH (at most {rs.MAX_DEPTH})")
    p.add_argument("--sizes", type=positive_int, nargs=3, metavar=("TRAIN", "DEV", "TEST"), help="theories per split")
    p.add_argument("--groups", type=positive_int, nargs="+", help="numbers of statements of the theories")
    p.add_argument("--questions", type=positive_int, help="questions per theory")
    p.add_argument("--layers", type=positive_int)
    p.add_argument("--hidden", type=positive_int)
    p.add_argument("--heads", type=positive_int)
    p.add_argument("--rope-theta", type=positive_float, help="RoPE's base (larger: heads match words by content)")
    _training_args(p)
    p.add_argument("--seed", type=seed_int, help="the data's draw and the initialisation")
    p.add_argument("--autocast", choices=["auto", "bf16", "none"], help="bf16 autocast for the training forward")
    p.add_argument(
        "--compile",
        type=int,
        choices=[0, 1],
        help="1: torch.compile the training forward (needs a C++ compiler on a CPU; same model)",
    )
    p.add_argument("--device")
    add_threads_arg(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(**{f.name: f.default for f in fields(ReasonerSettings) if f.default is not MISSING})
    return p


def _training_args(p):
    """The schedule and the losses."""
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--weight-decay", type=nonneg_float)
    p.add_argument("--batch-size", type=positive_int, help="questions per step (whole theories, one row each)")
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--warmup", type=nonneg_int)
    p.add_argument("--eval-every", type=positive_int)
    p.add_argument("--target-acc", type=float, help="stop once validation accuracy reaches this (0: never)")
    p.add_argument(
        "--positive-steps",
        type=nonneg_int,
        help="first steps on the questions without 'not' only (whether a statement holds is learnt before its "
        "negation; 0: none)",
    )
    p.add_argument("--lm-weight", type=nonneg_float, help="weight of the next-token loss on the prompts' words")
    p.add_argument(
        "--recall",
        type=nonneg_float,
        help="weight of a next-token loss on the theory's facts restated in a shuffled order after its statements "
        "('Bob is' completed from what the statements say of Bob; 0: none)",
    )


def main(argv=None):
    a = ReasonerSettings(**vars(parser().parse_args(argv)))
    if a.hidden % a.heads:
        raise MechprobeError(f"hidden={a.hidden} is not a multiple of heads={a.heads}")
    return train(a)


if __name__ == "__main__":
    run_main(main)
