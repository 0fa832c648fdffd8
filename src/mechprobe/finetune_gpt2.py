"""Finetune (or train from scratch) a GPT-2 on the k-th smallest task (the loop: training.py).

Loss: cross-entropy of the logits at the last input position against the answer token,
    L = -log softmax(z_T)[answer]      (z_T: logits at the last position, shape (B, V))
AdamW, linear warm-up then linear decay, validation every `eval_every` steps, best
checkpoint (by validation accuracy) kept with save_pretrained. The run resumes from
`<out>/checkpoint.pt` (model, optimizer, scheduler, step, best) after an interruption.
"""

import argparse
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch

from . import ksmallest as ks
from .cli import (
    DefaultsHelp,
    add_threads_arg,
    at_least_two,
    nonneg_int,
    positive_float,
    positive_int,
    prepare,
    run_main,
    seed_int,
)
from .models import _check_dir, load_model, load_tokenizer, numeric_init, scratch_gpt2
from .runs import defining_settings, finished_run, run_folder, write_config, write_json
from .training import (
    Trainer,
    bf16_fast,
    load_checkpoint,
    plot_curves,
    run_loop,
    save_pretrained_atomic,
    select_trainable,
)
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()


@dataclass
class TrainSettings:
    """One training run (the CLI's options take these defaults).

    data_dir / out_dir None: data/ksmallest/min0<k> / runs/finetune_gpt2_k<k>. lr None: 2e-3 from
    scratch, 2e-5 for a pretrained model. max_steps 0: epochs decide. target_acc: stop once
    validation accuracy reaches it (0: never). threads 0: all cores.
    """

    data_dir: Optional[str] = None
    out_dir: Optional[str] = None
    model: str = "scratch"
    k: int = 1
    epochs: int = 2
    max_steps: int = 3000
    lr: Optional[float] = None
    weight_decay: float = 1e-3
    batch_size: int = 256
    warmup: int = 200
    eval_every: int = 250
    target_acc: float = 0.99
    tuning: str = "all"
    seed: int = 0
    vocab_size: int = 512
    length: int = 16
    sizes: tuple = (200000, 2000, 2000)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    numeric_init: int = 0
    autocast: str = "auto"
    device: str = "auto"
    threads: int = 0
    restart: bool = False

    def __post_init__(self):
        self.data_dir = self.data_dir or f"data/ksmallest/min0{self.k}"
        self.out_dir = self.out_dir or f"runs/finetune_gpt2_k{self.k}"


# Settings a resumed run must share with its checkpoint (the others: where and how fast it runs).
NOT_DEFINING = ("out_dir", "eval_every", "target_acc", "device", "threads", "restart")
RESUME_KEYS = tuple(f.name for f in fields(TrainSettings) if f.name not in NOT_DEFINING)


def build_model(a, meta, tok):
    """(model, tokenizer, lr): the scratch model with its word tokenizer, or the pretrained one."""
    if a.model == "scratch":
        tok = ks.build_word_tokenizer(meta["vocab"])
        model = scratch_gpt2(
            len(tok), n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd, n_positions=max(64, meta["length"])
        )
        if a.numeric_init:
            numeric_init(model, tok, meta["vocab"])
        return model, tok, a.lr or 2e-3
    ks.check_vocab_tokens(tok, meta["vocab"], f"{a.data_dir}/meta.json vocabulary with tokenizer {a.model}")
    return load_model(a.model), tok, a.lr or 2e-5


def _done(a, out):
    """The results of a complete run with these settings in `out` (left alone), unless a.restart."""
    done = None if a.restart else finished_run(out, defining_settings(a, RESUME_KEYS))
    if done is not None:
        log.info("%s holds a complete run with these settings (results.json); restart=True trains it again", out)
    return done


def _record_used_data(a, meta):
    """The dataset's k must be the one asked. Existing lists are used as they are: `a` takes their
    length, vocabulary size and sizes (so that config.json records what the run used), and the log
    says so when they differ from what was asked."""
    if meta["k"] != a.k:
        raise MechprobeError(f"{a.data_dir}/meta.json: dataset has k={meta['k']} but k={a.k} was asked")
    sizes = meta.get("sizes", {})
    used = {
        "length": meta.get("length", a.length),
        "vocab_size": len(meta.get("vocab", [])) or a.vocab_size,
        "sizes": [sizes[s] for s in ("train", "val", "test")] if isinstance(sizes, dict) and sizes else a.sizes,
    }
    if any(getattr(a, key) != v for key, v in used.items()):  # config.json records what the run used
        log.info("%s: the existing lists are used (%s); those settings apply only when generating", a.data_dir, used)
        a.length, a.vocab_size, a.sizes = used["length"], used["vocab_size"], used["sizes"]


def train(a):
    """Train or finetune (see the module docstring) with TrainSettings `a`; returns the results
    written to results.json."""
    a.sizes = list(a.sizes)
    out = prepare(a)
    if (done := _done(a, out)) is not None:
        return done
    seed_everything(a.seed)
    tok = None if a.model == "scratch" else load_tokenizer(_check_dir(a.model, "model"))
    meta = ks.ensure_data(a.data_dir, a.model, a.k, a.vocab_size, a.seed, tuple(a.sizes), tok, a.length)
    _record_used_data(a, meta)
    model, tok, lr = build_model(a, meta, tok)
    dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    n_train = select_trainable(model, a.tuning)
    data = ks.load_splits(a.data_dir, tok)
    ks.check_fits(model, max((ids for ids, _ in data.values()), key=lambda x: x.shape[1]), a.data_dir)
    task = ks.ListTask(data, a.batch_size, a.seed)
    steps_per_epoch = math.ceil(len(data["train"][0]) / a.batch_size)
    total = a.max_steps or a.epochs * steps_per_epoch
    if total <= 0:
        raise MechprobeError("nothing to train: max_steps=0 and epochs=0; give one of them a positive value")
    settings = defining_settings(a, RESUME_KEYS)
    ckpt = out / "checkpoint.pt"
    resume = load_checkpoint(ckpt, settings, dev) if ckpt.exists() and not a.restart else None
    tr = Trainer(model, lr=lr, weight_decay=a.weight_decay, warmup=a.warmup, total=total, dev=dev)
    use_bf16 = a.autocast == "bf16" or (a.autocast == "auto" and bf16_fast(dev))
    with run_folder(out, outputs=("results.json", "config.json", "curves.png"), owner="finetune_gpt2"):
        config = {
            **asdict(a),
            "lr": lr,
            "bf16_autocast": use_bf16,
            "total_steps": total,
            "steps_per_epoch": steps_per_epoch,
            "trainable_params": n_train,
            "params": sum(p.numel() for p in model.parameters()),
            "device": dev,
            "threads": a.threads,
            "model_config": model.config.to_dict(),
        }
        write_config(
            out,
            config,
            [Path(a.data_dir) / f"{x}.jsonl" for x in ("train", "val", "test")] + [Path(a.data_dir) / "meta.json"],
        )
        if resume is not None:
            tr.restore(resume)
            log.info("resuming from %s at step %d/%d (best val acc %.4f)", ckpt, tr.step, total, tr.best)
        run_loop(tr, task, tok, out, settings, use_bf16, a.eval_every, a.target_acc)
        return finish(tr, data, tok, out, lr, dev, a.k)


def finish(tr, data, tok, out, lr, dev, k):
    """Save the last model, score last and best on the test split, write results.json and the curves."""
    save_pretrained_atomic(tr.model, tok, out / "last")
    res = {
        "test_acc_last": ks.model_accuracy(tr.model, *data["test"]),
        "val_acc_best": tr.best,
        "steps": tr.step,
        "total_steps": tr.total,
        "train_seconds": round(tr.elapsed, 1),
        "lr": lr,
        "k": k,
    }
    res["test_acc_best"] = ks.model_accuracy(load_model(out / "best", device=dev), *data["test"])
    write_json(out / "results.json", res)
    plot_curves(tr.history, out / "curves.png")
    log.info(
        "test accuracy: last %.4f, best %.4f; %d steps in %.0f s",
        res["test_acc_last"],
        res["test_acc_best"],
        tr.step,
        tr.elapsed,
    )
    return res


def parser():
    p = argparse.ArgumentParser(
        description="Finetune GPT-2 (or train the embedded scratch GPT-2) on the k-th smallest task.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model", help="local pretrained GPT-2 folder, or 'scratch' for the embedded default")
    p.add_argument("--k", type=int)
    p.add_argument(
        "--data-dir", help="dataset folder; generated first when it holds no dataset (None: data/ksmallest/min0<K>)"
    )
    p.add_argument("--out-dir", help="the run's folder (None: runs/finetune_gpt2_k<K>)")
    p.add_argument("--epochs", type=nonneg_int)
    p.add_argument("--max-steps", type=nonneg_int, help="stop after this many steps (0: epochs decide)")
    p.add_argument("--lr", type=positive_float, help="default 2e-3 from scratch, 2e-5 for a pretrained model")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--warmup", type=nonneg_int)
    p.add_argument("--eval-every", type=positive_int)
    p.add_argument("--target-acc", type=float, help="stop early once validation accuracy reaches this (0: never)")
    p.add_argument("--tuning", help="all | attn | mlp | ln")
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--vocab-size", type=positive_int, help="numbers in the vocabulary when the data must be generated")
    p.add_argument("--length", type=at_least_two, help="numbers per list when the data must be generated")
    p.add_argument("--sizes", type=positive_int, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--n-layer", type=positive_int, help="scratch model only")
    p.add_argument("--n-head", type=positive_int, help="scratch model only")
    p.add_argument("--n-embd", type=positive_int, help="scratch model only")
    p.add_argument(
        "--numeric-init",
        type=int,
        help="scratch model only: 1 = start the number embeddings from a value encoding (see numeric_init), "
        "0 = plain random init",
    )
    p.add_argument(
        "--autocast",
        choices=["auto", "bf16", "none"],
        help="bf16 autocast for the training forward (auto: when the device computes bf16 natively); "
        "weights and evaluation stay fp32",
    )
    p.add_argument("--device")
    add_threads_arg(p)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(**{f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING})
    return p


def main(argv=None):
    a = TrainSettings(**vars(parser().parse_args(argv)))
    if not 0 <= a.k < a.length and not (Path(a.data_dir) / "meta.json").exists():
        raise MechprobeError(f"k={a.k} is outside the list: expected 0 <= k < {a.length}")
    return train(a)


if __name__ == "__main__":
    run_main(main)
