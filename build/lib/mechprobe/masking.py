"""Head masking with hooks (transformers 5 has no working `head_mask`).

Masking head h of layer l zeroes that head's slice of the attention output before the
output projection:  o = W_O [z_1; ...; z_H]  with  z_h := 0  for every masked h.
Works for any model whose attention module has an output projection (GPT-2 c_proj,
LLaMA/Mistral/Qwen o_proj, ...), whose input is the concatenation of the heads' outputs.
"""

from contextlib import contextmanager

from .models import attention_modules, num_heads, output_projection
from .utils import MechprobeError


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
