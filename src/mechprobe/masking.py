"""Head masking with hooks (transformers 5 has no working `head_mask`).

Masking head h of layer l zeroes that head's slice of the attention output before the
output projection:  o = W_O [z_1; ...; z_H]  with  z_h := 0  for every masked h.
Works for any model whose attention module has an output projection (GPT-2 c_proj,
LLaMA/Mistral/Qwen o_proj, ...), whose input is the concatenation of the heads' outputs.
"""

from contextlib import contextmanager

import numpy as np
import torch

from .capture import capture
from .models import attention_modules, num_heads, output_projection
from .utils import MechprobeError, get_logger


@contextmanager
def mask_heads(model, heads):
    """Zero the outputs of `heads` = {layer: [head, ...]} (or an iterable of (layer, head)) while active."""
    if not isinstance(heads, dict):
        d = {}
        for l, h in heads:
            d.setdefault(int(l), []).append(int(h))
        heads = d
    mods = attention_modules(model)
    H = num_heads(model)
    handles = []
    try:
        for l, hs in heads.items():
            if not hs:
                continue
            if not 0 <= l < len(mods):
                raise MechprobeError(f"layer {l} does not exist (the model has {len(mods)} layers)")
            bad = [h for h in hs if not 0 <= h < H]
            if bad:
                raise MechprobeError(f"layer {l}: heads {bad} do not exist (the model has {H} heads per layer)")
            hs = sorted(set(hs))

            def pre_hook(module, args, hs=hs):
                x = args[0]
                D = x.shape[-1] // H
                x = x.clone()
                for h in hs:
                    x[..., h * D : (h + 1) * D] = 0
                return (x, *args[1:])

            handles.append(
                output_projection(mods[l][1], getattr(model.config, "model_type", None)).register_forward_pre_hook(
                    pre_hook
                )
            )
        yield
    finally:
        for h in handles:
            h.remove()


def pruning_curves(accuracy, entropies, shares, seeds):
    """Accuracy with a growing share of heads masked: at random (one draw per seed), and for each
    entropy order in `entropies` ({name: (L, H) array}) lowest-entropy first and highest first.
    accuracy(heads) -> the accuracy with those (layer, head) pairs masked (mask_heads).
    Every point records the heads it masked."""
    L, H = np.asarray(next(iter(entropies.values()))).shape
    flat = [(l, h) for l in range(L) for h in range(H)]
    res = {"random": [], **{o: {"low_entropy_first": [], "high_entropy_first": []} for o in entropies}}
    for frac in shares:
        n = int(round(frac * L * H))
        accs = [accuracy([flat[i] for i in np.random.default_rng(s).choice(L * H, n, replace=False)]) for s in seeds]
        res["random"].append(
            {"share": frac, "n_heads": n, "mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_seed": accs}
        )
        line = [f"share {frac:.2f}: random {res['random'][-1]['mean']:.3f} ± {res['random'][-1]['std']:.3f}"]
        for o, ent in entropies.items():
            order = np.argsort(np.asarray(ent).ravel(), kind="stable")
            for key, idx in (("low_entropy_first", order[:n]), ("high_entropy_first", order[::-1][:n])):
                heads = [flat[i] for i in idx]
                res[o][key].append({"share": frac, "n_heads": n, "heads": heads, "accuracy": accuracy(heads)})
            line.append(
                f"{o}: low-first {res[o]['low_entropy_first'][-1]['accuracy']:.3f}, high-first "
                f"{res[o]['high_entropy_first'][-1]['accuracy']:.3f}"
            )
        get_logger().info("; ".join(line))
    return res


@torch.no_grad()
def flow_attention(model, ids, masked):
    """Attention (L, T, T) averaged over lists and over the heads NOT in `masked`, with them masked."""
    N, T = ids.shape
    with mask_heads(model, masked):
        rows = capture(model, ids, torch.ones_like(ids), torch.arange(T).expand(N, T)).rows  # (N, L, H, T, T)
    L, H = rows.shape[1:3]
    keep = torch.ones(L, H, dtype=torch.bool)
    for l, h in masked:
        keep[l, h] = False
    m = rows.mean(0)  # (L, H, T, T)
    return torch.stack([m[l, keep[l]].mean(0) if keep[l].any() else torch.zeros(T, T) for l in range(L)])
