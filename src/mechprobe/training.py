"""The training loop shared by the GPT-2 task (finetune_gpt2.py) and the ProofWriter reasoner
(finetune_proofwriter.py): AdamW with linear warm-up and decay, cross-entropy of the answer token
at each prompt's last position, validation every `eval_every` steps, the best checkpoint by
validation accuracy (save_pretrained), and resume from `<out>/checkpoint.pt` (model, optimizer,
schedule, step, best, history, RNG, and the settings the run must share to resume).
"""

import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import last_logits
from .packing import PackedPrompts
from .runs import atomic_path
from .utils import MechprobeError, get_logger, progress

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
        raise MechprobeError(f"tuning={tuning!r}: expected one of all, attn, mlp, ln")
    for name, p in model.named_parameters():
        p.requires_grad = tuning == "all" or any(k in name for k in keys[tuning])
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise MechprobeError(f"tuning={tuning}: no parameter of {type(model).__name__} matches")
    return n


@torch.no_grad()
def save_pretrained_atomic(model, tok, path):
    path = Path(path)
    tmp = path.with_name("." + path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def plot_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import save_figure

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5), layout="tight")
    ax[0].plot([h[0] for h in history["train"]], [h[1] for h in history["train"]], lw=0.8)
    ax[0].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
    ax[1].plot([h[0] for h in history["val"]], [h[1] for h in history["val"]], marker="o", ms=3)
    ax[1].set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1.02), title="validation accuracy")
    save_figure(fig, path)


def warmup_linear_decay(warm, total):
    """Learning-rate factor at step s: (s + 1) / warm during the warm-up, then linearly down to 0 at
    `total`."""
    return lambda s: (s + 1) / warm if s < warm else min(1.0, max(0.0, (total - s) / max(1, total - warm)))


def load_checkpoint(ckpt, settings, dev):
    """The checkpoint's state when it can resume this run (the same `settings`); a clear error when it
    cannot."""
    try:
        st = torch.load(ckpt, map_location=dev, weights_only=False)
        old = st.get("settings")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises many kinds
        raise MechprobeError(
            f"{ckpt}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:150]}); "
            "restart=True starts the run over"
        ) from None
    if old is None:
        raise MechprobeError(
            f"{ckpt}: the checkpoint records no settings (an older version wrote it); restart=True starts the run over"
        )
    diff = [f"{k}={old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if diff:
        raise MechprobeError(
            f"{ckpt}: this run's settings differ from the checkpoint's ({'; '.join(diff)}); "
            "use the checkpoint's settings to resume, or restart=True to start over"
        )
    return st


def compiled(model):
    """torch.compile(model) with dynamic shapes (batches differ in length): the same function, fused
    kernels. On a CPU, inductor builds its kernels with a C++ compiler; without one this stops here."""
    if next(model.parameters()).device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        raise MechprobeError("compile=1 needs a C++ compiler on a CPU (g++, c++ or clang++ on PATH); use compile=0")
    return torch.compile(model, dynamic=True)


class Trainer:
    """The state of one training run: model, optimizer, schedule, step, best, history.

    AdamW (lr, weight_decay) with `warmup` steps of linear warm-up, then a linear decay to 0 at step
    `total`. The loss is the cross-entropy of the logits at each prompt's last (real) token against the
    answer token: L = -log softmax(z_last)[answer]. With packed prompts (packing.PackedPrompts):
        L += lm_weight * mean_{t} -log softmax(z_t)[x_{t+1}]          (the prompts' own tokens)
        L += recall_weight * mean_{recall t} -log softmax(z_t)[x_{t+1}] (the recall segments)
    With compile, the training forward
    is torch.compile'd (the same function; evaluation, checkpoints and save_pretrained use the plain
    module)."""

    def __init__(
        self,
        model,
        *,
        lr,
        weight_decay,
        warmup,
        total,
        dev,
        lm_weight=0.0,
        recall_weight=0.0,
        compile=False,
    ):
        self.model, self.total, self.dev = model, total, dev
        self.lm_weight, self.recall_weight = lm_weight, recall_weight
        self.forward = compiled(model) if compile else model  # the training forward; evaluation stays eager
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, warmup_linear_decay(min(warmup, total // 10 + 1), total)
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

    def loss(self, ids, mask, answers, use_bf16):
        """The loss of a batch: ids (B, T), mask (B, T) of right-padded prompts (or None), or ids a
        PackedPrompts of B prompts and mask None; answers (B,)."""
        packed = isinstance(ids, PackedPrompts)
        with torch.autocast(torch.device(self.dev).type, dtype=torch.bfloat16, enabled=use_bf16):
            if packed:
                z = ids.logits(self.forward)  # (R * T, V)
                logits = z[ids.last]  # (B, V)
            else:
                logits = last_logits(self.forward, ids, mask)  # (B, V)
        loss = F.cross_entropy(logits.float(), answers)
        if not packed:
            return loss
        extra = (
            (self.recall_weight, ids.recall_loss(z) if self.recall_weight else None),
            (self.lm_weight, ids.lm_loss(z) if self.lm_weight else None),
        )
        for w, x in extra:
            loss = loss if x is None else loss + w * x
        return loss

    def train_step(self, ids, mask, answers, use_bf16):
        """One AdamW step on a batch (loss()); returns the loss."""
        self.model.train()
        ids, answers = ids.to(self.dev), answers.to(self.dev)
        mask = None if mask is None else mask.to(self.dev)
        loss = self.loss(ids, mask, answers, use_bf16)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.history["train"].append((self.step, loss.item()))
        return loss.item()


def run_loop(tr, task, tok, out, settings, use_bf16, eval_every, target_acc=0.0, validate_after=0):
    """Train to the last step (or the target accuracy), validating and checkpointing on the way.

    task: epoch_batches(epoch) -> the epoch's list of index tensors (deterministic, so a resumed
    run takes the same batches); batch(idx) -> (ids, mask or None, answers); accuracy(model, split).
    validate_after: no validation up to this step (the checkpoints are still written every
    eval_every steps), e.g. during a phase whose validation accuracy means nothing yet."""
    t0 = time.time() - tr.elapsed
    bar = progress(total=tr.total, initial=tr.step, desc="train", unit="step")
    cache = {0: task.epoch_batches(0)}
    steps_per_epoch = len(cache[0])
    while tr.step < tr.total:
        epoch, within = divmod(tr.step, steps_per_epoch)
        if epoch not in cache:
            cache = {0: cache[0], epoch: task.epoch_batches(epoch)}
        loss = tr.train_step(*task.batch(cache[epoch][within]), use_bf16)  # (ids, mask, answers)
        bar.update(1)
        if tr.step % eval_every == 0 and tr.step <= validate_after and tr.step != tr.total:
            if bar.disable:
                log.info(
                    "step %d/%d: loss %.4f (no validation before step %d)", tr.step, tr.total, loss, validate_after
                )
            tr.elapsed = time.time() - t0
            with atomic_path(out / "checkpoint.pt") as tmp:
                torch.save(tr.state(settings), tmp)
        elif tr.step % eval_every == 0 or tr.step == tr.total:
            acc = task.accuracy(tr.model, "val")
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
            if target_acc and acc >= target_acc:
                log.info(
                    "validation accuracy %.4f reached the target %.4f at step %d: stopping early",
                    acc,
                    target_acc,
                    tr.step,
                )
                break
    bar.close()
    tr.elapsed = time.time() - t0
