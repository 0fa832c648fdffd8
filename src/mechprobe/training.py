"""The training loop shared by the GPT-2 task (finetune.py) and the ProofWriter reasoner
(finetune_proofwriter.py): AdamW with linear warm-up and decay, cross-entropy of the answer token
at each prompt's last position, validation every `eval_every` steps, the best checkpoint by
validation accuracy (save_pretrained), and resume from `<out>/checkpoint.pt` (model, optimizer,
schedule, step, best, history, RNG, and the settings the run must share to resume).
"""

import shutil
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import last_logits
from .optim import make_optimizers
from .packing import PackedPrompts
from .utils import MechprobeError, atomic_path, get_logger, progress

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

    from .utils import save_figure

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5), layout="tight")
    ax[0].plot([h[0] for h in history["train"]], [h[1] for h in history["train"]], lw=0.8)
    ax[0].set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
    ax[1].plot([h[0] for h in history["val"]], [h[1] for h in history["val"]], marker="o", ms=3)
    ax[1].set(xlabel="step", ylabel="validation accuracy", ylim=(0, 1.02), title="validation accuracy")
    save_figure(fig, path)


def warmup_linear_decay(warm, total, decay=0):
    """Learning-rate factor at step s: (s + 1) / warm during the warm-up, then 1 until the last `decay`
    steps, which go linearly to 0 at `total` (decay 0: the decay starts right after the warm-up)."""
    start = warm if decay <= 0 else max(warm, total - decay)
    return lambda s: (s + 1) / warm if s < warm else min(1.0, max(0.0, (total - s) / max(1, total - start)))


def load_checkpoint(ckpt, settings, dev, added=None):
    """The checkpoint's state when it can resume this run; a clear error when it cannot.
    added: {setting: value} for settings introduced after the checkpoint was written (a checkpoint
    that lacks one ran with that value)."""
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
    old = {**(added or {}), **old}
    diff = [f"{k.upper()} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if diff:
        raise MechprobeError(
            f"{ckpt}: this run's settings differ from the checkpoint's ({'; '.join(diff)}); "
            "use the checkpoint's settings to resume, or RESTART=1 to start over"
        )
    return st


def compiled(model):
    """torch.compile(model) with dynamic shapes (batches differ in length): the same function, fused
    kernels. On a CPU, inductor builds its kernels with a C++ compiler; without one this stops here."""
    if next(model.parameters()).device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        raise MechprobeError("COMPILE=1 needs a C++ compiler on a CPU (g++, c++ or clang++ on PATH); use COMPILE=0")
    return torch.compile(model, dynamic=True)


def check_readout_layer(model, layer):
    """layer (0: the last) for layer_readout, checked against the model: 0 <= layer <= its layers."""
    n = model.config.num_hidden_layers
    if not 0 <= layer <= n:
        raise MechprobeError(f"RECALL_LAYER={layer}: expected 0 (the last layer) to {n} (the model's layers)")
    if layer and not hasattr(getattr(model, "model", None), "norm"):
        raise MechprobeError(
            f"RECALL_LAYER={layer}: needs a LLaMA-family model (model.model.norm), not {type(model).__name__}"
        )
    return 0 if layer == n else layer


def layer_readout(model, h):
    """Next-token logits read from the residual stream h (..., D) after an inner layer with the model's
    own final norm and unembedding (the logit lens): z = W_U RMSNorm(h), (..., V). A loss on z asks
    the first layers to have computed the next token by then (LLaMA-family: model.model.norm)."""
    return model.lm_head(model.model.norm(h))


class Trainer:
    """The state of one training run: model, optimizer, schedule, step, best, history.

    The loss is the cross-entropy of the logits at each prompt's last (real) token against the
    answer token: L = -log softmax(z_last)[answer]. With lm_weight > 0 (right-padded batches with a
    mask), the mean next-token cross-entropy over the prompt's own tokens is added:
        L += lm_weight * mean_{t < last} -log softmax(z_t)[x_{t+1}]
    (an auxiliary loss: copying a statement's words into the question is what a reasoner's
    attention needs to learn, matching the question with the statements). With recall_weight > 0 and
    packed prompts that carry recall segments, their mean next-token cross-entropy is added too:
        L += recall_weight * mean_{recall tokens} -log softmax(z_t)[x_{t+1}]
    where z_t is read after layer recall_layer when it is set (layer_readout; 0: the model's logits).
    With early_answer > 0 and packed prompts that carry early positions (a question's last word and
    the tokens after it), the answer is read there too, over the answer words' logits only:
        L += early_answer * mean_{early t} -log softmax(z_t[answer_ids])[answer]
    (deep supervision: the answer is asked for where the question's words meet the statements, not
    only several tokens later). held: [(parameter, index)] slices put back to their values at the first
    step after each of the first hold_steps optimizer steps (a wired-in circuit kept while the rest of
    the model learns to use it; `tiny.wired_slices`).
    With compile, the training forward is torch.compile'd (the same function; evaluation, checkpoints
    and save_pretrained use the plain module). optimizer: "adamw", or "muon" (optim.make_optimizers:
    Muon on the blocks' weight matrices, AdamW on the rest; one lr schedule drives both)."""

    def __init__(
        self,
        model,
        lr,
        weight_decay,
        warmup,
        total,
        dev,
        lm_weight=0.0,
        decay=0,
        recall_weight=0.0,
        compile=False,
        recall_layer=0,
        optimizer="adamw",
        early_answer=0.0,
        answer_ids=None,
        held=(),
        hold_steps=0,
    ):
        if early_answer and answer_ids is None:
            raise ValueError("early_answer needs answer_ids (the answer words' token ids)")
        self.early_answer, self.answer_ids = early_answer, answer_ids
        self.held, self.hold_steps, self._kept = list(held), hold_steps, None
        self.model, self.total, self.dev, self.lm_weight = model, total, dev, lm_weight
        self.recall_layer = check_readout_layer(model, recall_layer) if recall_weight else 0
        self.forward = compiled(model) if compile else model  # the training forward; evaluation stays eager
        self.recall_weight = recall_weight
        self.opts = make_optimizers(model, lr, weight_decay, optimizer)
        lam = warmup_linear_decay(min(warmup, total // 10 + 1), total, decay)
        self.scheds = [torch.optim.lr_scheduler.LambdaLR(o, lam) for o in self.opts]
        self.opt, self.sched = self.opts[0], self.scheds[0]  # AdamW (with "muon": over the rest)
        self.step, self.best, self.history, self.elapsed = 0, -1.0, {"train": [], "val": []}, 0.0

    def state(self, settings):
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            **(
                {"muon": self.opts[1].state_dict(), "muon_sched": self.scheds[1].state_dict()}
                if len(self.opts) > 1
                else {}
            ),
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
        if len(self.opts) > 1:
            self.opts[1].load_state_dict(st["muon"])
            self.scheds[1].load_state_dict(st["muon_sched"])
        self.step, self.best, self.history, self.elapsed = st["step"], st["best"], st["history"], st["elapsed"]
        torch.set_rng_state(st["rng"])

    def train_step(self, ids, mask, answers, use_bf16, weights=None):
        """One AdamW step; ids (B, T), mask (B, T) of right-padded prompts or None (or ids a PackedPrompts
        of B prompts and mask None), answers (B,);
        weights (B,): the answer loss is then the weighted mean sum_i w_i L_i / sum_i w_i."""
        self.model.train()
        if self._kept is None:  # the held slices' values before the first step of this process
            self._kept = [(p, idx, p.data[idx].clone()) for p, idx in self.held]
        ids, answers = ids.to(self.dev), answers.to(self.dev)
        mask = None if mask is None else mask.to(self.dev)
        packed = isinstance(ids, PackedPrompts)
        aux = bool(self.lm_weight) and (mask is not None or packed)
        with torch.autocast(torch.device(self.dev).type, dtype=torch.bfloat16, enabled=use_bf16):
            if packed:
                z, h = ids.outputs(self.forward, self.recall_layer or None)  # (R * T, V), (R * T, D) or None
                logits = z[ids.last]
            elif aux:
                z = self.forward(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
                last = mask.sum(1) - 1
                logits = z[torch.arange(len(ids), device=ids.device), last]
            else:
                logits = last_logits(self.forward, ids, mask)  # (B, V)
        loss = F.cross_entropy(logits.float(), answers, reduction="none")  # (B,)
        loss = loss.mean() if weights is None else (loss * weights.to(loss.device)).sum() / weights.sum()
        if packed and self.recall_weight:  # logits, or the inner layer's states read out at the recall positions
            recall = ids.recall_loss(z, None) if h is None else ids.recall_loss(h, partial(layer_readout, self.model))
            loss = loss if recall is None else loss + self.recall_weight * recall
        if packed and self.early_answer:  # the answer read at the question's last word and after it too
            early = ids.early_answer_loss(z, answers, self.answer_ids)
            loss = loss if early is None else loss + self.early_answer * early
        if aux and packed:
            loss = loss + self.lm_weight * ids.lm_loss(z)
        elif aux:
            tgt = ids[:, 1:].masked_fill(torch.arange(1, ids.shape[1], device=ids.device) > last[:, None], -100)
            lm = F.cross_entropy(z[:, :-1].float().reshape(-1, z.shape[-1]), tgt.reshape(-1), ignore_index=-100)
            loss = loss + self.lm_weight * lm
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        for o, sc in zip(self.opts, self.scheds):
            o.step()
            sc.step()
        self.step += 1
        self._hold()
        self.history["train"].append((self.step, loss.item()))
        return loss.item()

    @torch.no_grad()
    def _hold(self):
        """Put the held slices back to their values at this run's (or resumption's) first step, during
        the first hold_steps steps (restored after every step, they are those at initialisation)."""
        if self.step > self.hold_steps or not self.held:
            return
        for p, idx, v in self._kept:
            p.data[idx] = v


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
        b = task.batch(cache[epoch][within])  # (ids, mask, answers) or with the loss weights
        loss = tr.train_step(*b[:3], use_bf16, weights=b[3] if len(b) > 3 else None)
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
