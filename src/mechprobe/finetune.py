"""Finetune (or train from scratch) a GPT-2 on the k-th smallest task.

Loss: cross-entropy of the logits at the last input position against the answer token,
    L = -log softmax(z_T)[answer]      (z_T: logits at the last position, shape (B, V))
AdamW, linear warm-up then linear decay, validation every `eval_every` steps, best
checkpoint (by validation accuracy) kept with save_pretrained. The run resumes from
`<out>/checkpoint.pt` (model, optimizer, scheduler, step, best) after an interruption.
"""

import argparse
import math
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import ksmallest as ks
from .models import _check_dir, load_model, load_tokenizer, scratch_gpt2
from .utils import (
    MechprobeError,
    at_least_two,
    atomic_path,
    check_device,
    get_logger,
    nonneg_int,
    positive_float,
    positive_int,
    progress,
    run_folder,
    run_main,
    seed_everything,
    set_threads,
    write_config,
    write_json,
)

log = get_logger()


def bf16_fast(dev):
    """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16); weights stay fp32."""
    if str(dev).startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def select_trainable(model, tuning):
    """all | attn | mlp | ln : which parameters train."""
    keys = {"attn": ("attn", "self_attn"), "mlp": ("mlp",), "ln": ("ln_", "norm")}
    if tuning not in ("all", *keys):
        raise MechprobeError(f"TUNING={tuning!r}: expected one of all, attn, mlp, ln")
    for name, p in model.named_parameters():
        p.requires_grad = tuning == "all" or any(k in name for k in keys[tuning])
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise MechprobeError(f"TUNING={tuning}: no parameter of {type(model).__name__} matches")
    return n


@torch.no_grad()
def numeric_init(model, tok, vocab, n_freq=6, scale=0.5):
    """Add a value encoding to the input/output embeddings of the number tokens (scratch model only).

    For the number of rank i among the N numbers, v = i / (N - 1) and the first 1 + 2*n_freq
    dimensions get scale * [v - 1/2, sin(pi 2^j v), cos(pi 2^j v) for j < n_freq]. This gives
    the untrained model the numeracy a pretrained GPT-2 brings (which number is bigger), so it
    only has to learn the comparison circuit; it changes the initialisation, not the architecture.
    """
    order = sorted(int(x) for x in vocab)
    N = len(order)
    wte = model.get_input_embeddings().weight
    for i, x in enumerate(order):
        v = i / max(1, N - 1)
        enc = [v - 0.5] + [f(torch.pi * 2**j * v) for j in range(n_freq) for f in (math.sin, math.cos)]
        wte[ks.answer_token_id(tok, x), : len(enc)] += scale * torch.tensor(enc)


def save_pretrained_atomic(model, tok, path):
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def ensure_data(data_dir, model_arg, k, vocab_size, seed, sizes, tok=None, length=16):
    """Generate the dataset when `data_dir` holds none yet (and say so)."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise MechprobeError(f"{data_dir}: is a file; DATA_DIR must be a folder")
    if (Path(data_dir) / "meta.json").exists():
        meta = ks.load_meta(data_dir)
        log.info("using the existing dataset in %s (sizes %s; delete it to regenerate)", data_dir, meta.get("sizes"))
        return meta
    log.info(
        "data directory %s has no dataset yet: generating it (k=%d, %d numbers, sizes %s)",
        data_dir,
        k,
        vocab_size,
        sizes,
    )
    if model_arg == "scratch":
        vocab, source = list(range(vocab_size)), "range"
    else:
        vocab, source = ks.single_token_numbers(tok, vocab_size), f"single-token numbers of {model_arg}"
    return ks.write_dataset(data_dir, vocab, k, length=length, sizes=sizes, seed=seed, source=source)


def plot_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .utils import save_figure

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([h[0] for h in history["train"]], [h[1] for h in history["train"]], lw=0.8)
    ax[0].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
    ax[1].plot([h[0] for h in history["val"]], [h[1] for h in history["val"]], marker="o", ms=3)
    ax[1].set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1.02), title="validation accuracy")
    save_figure(fig, path)


def warmup_linear_decay(warm, total):
    """Learning-rate factor at step s: (s + 1) / warm during the warm-up, then linear decay to 0 at `total`."""
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))


@dataclass
class TrainSettings:
    """One training run (the CLI's options; their defaults are these, the scripts' too).

    lr None: 2e-3 from scratch, 2e-5 for a pretrained model. max_steps 0: epochs decide.
    target_acc: stop once validation accuracy reaches it (0: never). threads 0: all cores.
    """

    data_dir: str
    out_dir: str
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


# Settings a resumed run must share with its checkpoint (the others: where and how fast it runs).
RESUME_KEYS = (
    "model",
    "k",
    "data_dir",
    "epochs",
    "max_steps",
    "lr",
    "weight_decay",
    "batch_size",
    "warmup",
    "tuning",
    "seed",
    "vocab_size",
    "length",
    "sizes",
    "n_layer",
    "n_head",
    "n_embd",
    "numeric_init",
    "autocast",
)


def load_checkpoint(ckpt, settings, dev):
    """The checkpoint's state when it can resume this run; a clear error when it cannot."""
    try:
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        old = st.get("settings")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many kinds
        raise MechprobeError(
            f"{ckpt}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
            "RESTART=1 starts the run over"
        ) from None
    if old is None:
        raise MechprobeError(
            f"{ckpt}: the checkpoint records no settings (an older version wrote it); RESTART=1 starts the run over"
        )
    diff = [f"{k.upper()} {old.get(k)!r} -> {settings.get(k)!r}" for k in RESUME_KEYS if old.get(k) != settings.get(k)]
    if diff:
        raise MechprobeError(
            f"{ckpt}: this run's settings differ from the checkpoint's ({'; '.join(diff)}); "
            "use the checkpoint's settings to resume, or RESTART=1 to start over"
        )
    return st


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


def load_splits(data_dir, tok):
    """{split: (ids (N, n), answer ids (N,))} for train / val / test."""
    return {s: ks.encode_records(tok, ks.load_split(data_dir, s)) for s in ("train", "val", "test")}


class Trainer:
    """The state of one training run: model, optimizer, schedule, step, best, history."""

    def __init__(self, model, lr, a, total, dev):
        self.model, self.a, self.total, self.dev = model, a, total, dev
        self.opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=a.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_linear_decay(min(a.warmup, total // 10 + 1), total)
        )
        self.step, self.best, self.history, self.elapsed = 0, -1.0, {"train": [], "val": []}, 0.0

    def state(self, settings):
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "step": self.step,
            "best": self.best,
            "history": self.history,
            "elapsed": self.elapsed,
            "rng": torch.get_rng_state(),
            "settings": settings,
        }

    def restore(self, st):
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.step, self.best, self.history, self.elapsed = st["step"], st["best"], st["history"], st["elapsed"]
        torch.set_rng_state(st["rng"])

    def batch(self, n_train, steps_per_epoch):
        """Indices of this step's batch: the epoch's seeded permutation, sliced."""
        epoch, within = divmod(self.step, steps_per_epoch)
        perm = torch.from_numpy(np.random.default_rng(self.a.seed * 1000 + epoch).permutation(n_train))
        return perm[within * self.a.batch_size : (within + 1) * self.a.batch_size]

    def train_step(self, ids, answers, use_bf16):
        """One AdamW step on CE(last-position logits, answer); returns the loss."""
        self.model.train()
        with torch.autocast(torch.device(self.dev).type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = self.model(input_ids=ids.to(self.dev), logits_to_keep=1).logits[:, -1]  # (B, V)
        loss = F.cross_entropy(logits.float(), answers.to(self.dev))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.history["train"].append((self.step, loss.item()))
        return loss.item()


def train(a):
    """Train or finetune (see the module docstring) with TrainSettings `a`; returns the results
    written to results.json."""
    a.sizes = list(a.sizes)
    check_device(a.device)
    threads = set_threads(a.threads)
    seed_everything(a.seed)
    out = Path(a.out_dir)
    if out.exists() and not out.is_dir():
        raise MechprobeError(f"{out}: is a file; OUT_DIR must be a folder")
    tok = None if a.model == "scratch" else load_tokenizer(_check_dir(a.model, "model"))
    meta = ensure_data(a.data_dir, a.model, a.k, a.vocab_size, a.seed, tuple(a.sizes), tok, a.length)
    if meta["k"] != a.k:
        raise MechprobeError(f"{a.data_dir}/meta.json: dataset has k={meta['k']} but K={a.k} was asked")
    model, tok, lr = build_model(a, meta, tok)
    dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    n_train = select_trainable(model, a.tuning)
    data = load_splits(a.data_dir, tok)
    steps_per_epoch = math.ceil(len(data["train"][0]) / a.batch_size)
    total = a.max_steps or a.epochs * steps_per_epoch
    if total <= 0:
        raise MechprobeError("nothing to train: MAX_STEPS=0 and EPOCHS=0; give one of them a positive value")
    settings = {k: getattr(a, k) for k in RESUME_KEYS}
    ckpt = out / "checkpoint.pt"
    resume = load_checkpoint(ckpt, settings, dev) if ckpt.exists() and not a.restart else None
    tr = Trainer(model, lr, a, total, dev)
    use_bf16 = a.autocast == "bf16" or (a.autocast == "auto" and bf16_fast(dev))
    with run_folder(out, outputs=("results.json", "config.json", "curves.png")):
        config = {
            **asdict(a),
            "lr": lr,
            "bf16_autocast": use_bf16,
            "total_steps": total,
            "steps_per_epoch": steps_per_epoch,
            "trainable_params": n_train,
            "params": sum(p.numel() for p in model.parameters()),
            "device": dev,
            "threads": threads,
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
        run_loop(tr, data, tok, out, settings, steps_per_epoch, use_bf16)
        return finish(tr, data, tok, out, lr, dev)


def run_loop(tr, data, tok, out, settings, steps_per_epoch, use_bf16):
    """Train to the last step (or the target accuracy), validating and checkpointing on the way."""
    a = tr.a
    train_ids, train_ans = data["train"]
    t0 = time.time() - tr.elapsed
    bar = progress(total=tr.total, initial=tr.step, desc="train", unit="step")
    while tr.step < tr.total:
        idx = tr.batch(len(train_ids), steps_per_epoch)
        loss = tr.train_step(train_ids[idx], train_ans[idx], use_bf16)
        bar.update(1)
        if tr.step % a.eval_every == 0 or tr.step == tr.total:
            acc = ks.model_accuracy(tr.model, *data["val"])
            tr.history["val"].append((tr.step, acc))
            bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{acc:.4f}")
            if bar.disable:  # no progress bar (not a terminal): one log line per validation
                log.info("step %d/%d: loss %.4f, validation accuracy %.4f", tr.step, tr.total, loss, acc)
            if acc > tr.best:
                tr.best = acc
                save_pretrained_atomic(tr.model, tok, out / "best")
            tr.elapsed = time.time() - t0
            with atomic_path(out / "checkpoint.pt") as tmp:
                torch.save(tr.state(settings), tmp)
            if a.target_acc and acc >= a.target_acc:
                log.info(
                    "validation accuracy %.4f reached the target %.4f at step %d: stopping early",
                    acc,
                    a.target_acc,
                    tr.step,
                )
                break
    bar.close()
    tr.elapsed = time.time() - t0


def finish(tr, data, tok, out, lr, dev):
    """Save the last model, score last and best on the test split, write results.json and the curves."""
    save_pretrained_atomic(tr.model, tok, out / "last")
    res = {
        "test_acc_last": ks.model_accuracy(tr.model, *data["test"]),
        "val_acc_best": tr.best,
        "steps": tr.step,
        "total_steps": tr.total,
        "train_seconds": round(tr.elapsed, 1),
        "lr": lr,
        "k": tr.a.k,
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="local pretrained GPT-2 folder, or 'scratch' for the embedded default")
    p.add_argument("--k", type=int)
    p.add_argument("--data-dir", required=True, help="dataset folder; generated first when it holds no dataset")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--epochs", type=nonneg_int)
    p.add_argument("--max-steps", type=nonneg_int, help="stop after this many steps (0: epochs decide)")
    p.add_argument("--lr", type=positive_float, help="default 2e-3 from scratch, 2e-5 for a pretrained model")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--warmup", type=nonneg_int)
    p.add_argument("--eval-every", type=positive_int)
    p.add_argument("--target-acc", type=float, help="stop early once validation accuracy reaches this (0: never)")
    p.add_argument("--tuning", help="all | attn | mlp | ln")
    p.add_argument("--seed", type=int)
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
    p.add_argument(
        "--threads",
        type=nonneg_int,
        help="torch threads (0: all cores); lower it when another job shares the cores",
    )
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.set_defaults(**{f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING})
    return p


def main(argv=None):
    a = TrainSettings(**vars(parser().parse_args(argv)))
    if not 0 <= a.k < a.length and not (Path(a.data_dir) / "meta.json").exists():
        raise MechprobeError(f"K={a.k} is outside the list: expected 0 <= K < {a.length}")
    return train(a)


if __name__ == "__main__":
    run_main(main)
