"""Attention capture: the attention rows of chosen query positions, per layer and head.

For a batch of prompts and query positions q_{b,1..Q}, returns
    A[b, l, h, i, t] = softmax_t(q_{b,i} . k_t / sqrt(d) + mask)    shape (B, L, H, Q, T)
i.e. row q_{b,i} of layer l, head h's attention matrix, taken inside the forward pass, so the
full matrices of all layers are never held at once (output_attentions=True keeps all L of them).

Two ways to get the rows, the same numbers:
  * "rows" (default where it works): for the duration of the forward the model's attention
    implementation is switched to `mechprobe_rows`, registered with transformers'
    AttentionInterface. It computes each layer's output with scaled_dot_product_attention
    and, apart, only the Q wanted rows: softmax(q_rows k^T * scale + mask_rows). No (T, T)
    weight matrix is materialised at all.
  * "hooks": forward hooks on the eager attention modules slice the rows out of each layer's
    (B, H, T, T) weights as it runs (one layer's matrix at a time). Used for models whose
    attention does not go through the interface, or has logit soft-capping.

Batches are right-padded: real tokens keep their positions, and under the causal mask a real
query never sees a pad key, so a padded batch gives the same rows as one prompt at a time.
"""

from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from .models import attention_modules, last_logits, model_device
from .utils import MechprobeError

ROWS_IMPL = "mechprobe_rows"
_ACTIVE = []  # the recorder of the forward in progress (rows method)
_REGISTERED = []  # ROWS_IMPL once register_rows() has run
# Keyword arguments that the rows function may ignore: the mask already encodes them (sliding
# window), or they do not touch the attention weights. Any other argument that is not None
# (e.g. gpt-oss's attention sinks `s_aux`, Gemma's `softcap`) changes the weights in a way the
# rows function does not implement, so the model goes to the hook method instead.
IGNORED_KWARGS = {
    "position_ids",
    "use_cache",
    "sliding_window",
    "output_router_logits",
    "output_attentions",
    "cache_position",
    "past_key_values",
    "is_causal",
}


class RowsUnsupported(Exception):
    """Raised inside the forward when the attention uses an argument the rows function lacks."""


def _repeat_kv(x, n):
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def rows_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention output via SDPA; the recorder's query rows of the weights computed apart.

    query (B, H, T, D); key, value (B, Hkv, T, D); attention_mask additive (B, 1, T, T) or None.
    """
    extra = sorted(k for k, v in kwargs.items() if v is not None and k not in IGNORED_KWARGS)
    if extra:
        raise RowsUnsupported(f"{type(module).__name__} passes {', '.join(extra)} to its attention")
    n = query.shape[1] // key.shape[1]
    k, v = _repeat_kv(key, n), _repeat_kv(value, n)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask[:, :, :, : k.shape[-2]] if attention_mask is not None else None
    if mask is None and 1 < query.shape[2] < k.shape[-2]:  # queries after cached keys: SDPA's is_causal aligns wrongly
        T, S = query.shape[2], k.shape[-2]
        keep = torch.arange(S, device=query.device)[None, :] <= (S - T) + torch.arange(T, device=query.device)[:, None]
        mask = torch.zeros(T, S, dtype=query.dtype, device=query.device).masked_fill(~keep, float("-inf"))[None, None]
    out = F.scaled_dot_product_attention(
        query, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, is_causal=mask is None and query.shape[2] > 1
    )
    if _ACTIVE:
        rec = _ACTIVE[-1]
        layer = getattr(module, "layer_idx", None)
        if layer in rec.wanted:
            qp = rec.query_positions.to(query.device)  # (B, Q)
            B, H, T, D = query.shape
            idx = qp.clamp(min=0)[:, None, :, None]
            q_rows = torch.gather(query, 2, idx.expand(B, H, qp.shape[1], D))  # (B, H, Q, D)
            sc = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)) * scale  # (B, H, Q, T)
            if mask is not None:
                m = mask.expand(B, 1, T, k.shape[-2])
                sc = sc + torch.gather(m, 2, idx.expand(B, 1, qp.shape[1], k.shape[-2])).float()
            else:  # causal; the query rows follow any cached keys (offset)
                off = k.shape[-2] - T
                causal = torch.arange(k.shape[-2], device=sc.device)[None, None, None, :] > off + qp[:, None, :, None]
                sc = sc.masked_fill(causal, float("-inf"))
            rec.keep(layer, torch.softmax(sc, -1) * (qp >= 0)[:, None, :, None])
    return out.transpose(1, 2).contiguous(), None


def register_rows():
    """Register rows_attention (and the eager mask) under ROWS_IMPL with transformers, once. Done on first
    use, not at import: importing transformers' attention interface costs seconds, and a run served by
    the feature cache never needs it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if not _REGISTERED:
        AttentionInterface.register(ROWS_IMPL, rows_attention)
        AttentionMaskInterface.register(ROWS_IMPL, eager_mask)
        _REGISTERED.append(ROWS_IMPL)


def rows_supported(model):
    """The rows method needs layer indices on the attention modules and no logit soft-capping."""
    cfg = model.config
    if getattr(cfg, "attn_logit_softcapping", None) or getattr(cfg, "is_encoder_decoder", False):
        return False
    try:
        return all(getattr(m, "layer_idx", None) is not None for _, m in attention_modules(model))
    except MechprobeError:
        return False


class Capture(NamedTuple):
    """What capture() returns: rows (B, L, H, Q, T); logits (B, V) at each prompt's last token, or None."""

    rows: torch.Tensor
    logits: Optional[torch.Tensor]


class Recorder:
    """Base of the two recorders: while active (a context manager), every forward of `model`
    records the rows of the query positions, layer by layer, into self.rows.

    rec.query_positions must be set to a LongTensor (B, Q) (-1 = no query) before each forward.
    """

    def __init__(self, model, layers=None, to_cpu=True):
        self.model = model
        self.mods_all = attention_modules(model)
        self.layers = list(range(len(self.mods_all))) if layers is None else list(layers)
        self.wanted = set(self.layers)
        self.to_cpu = to_cpu
        self.query_positions = None
        self.rows = {}

    def keep(self, layer, r):
        self.rows[layer] = r.cpu() if self.to_cpu else r

    def stacked(self):
        """(B, L, H, Q, T) for the last forward."""
        if len(self.rows) != len(self.layers):
            raise MechprobeError(f"captured {len(self.rows)} of {len(self.layers)} layers; did the forward run?")
        out = torch.stack([self.rows[l] for l in self.layers], 1)
        self.rows = {}
        return out


class AttentionRecorder(Recorder):
    """The hook method: forward hooks on the eager attention modules slice the rows out of each
    layer's (B, H, T, T) weights."""

    def __init__(self, model, layers=None, to_cpu=True):
        super().__init__(model, layers, to_cpu)
        self.mods = [self.mods_all[i][1] for i in self.layers]
        self.handles = []

    def _hook(self, layer):
        def hook(module, args, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                impl = getattr(self.model.config, "_attn_implementation", "?")
                raise MechprobeError(
                    f"{type(module).__name__} returned no attention weights (attention implementation {impl!r}); "
                    "load the model with attn_implementation='eager'"
                )
            qp = self.query_positions.to(w.device)  # (B, Q)
            B, H, T, _ = w.shape
            idx = qp.clamp(min=0)[:, None, :, None].expand(B, H, qp.shape[1], T)  # (B, H, Q, T)
            r = torch.gather(w, 2, idx) * (qp >= 0)[:, None, :, None]
            self.keep(layer, r.float())

        return hook

    def __enter__(self):
        for l, m in zip(self.layers, self.mods):
            self.handles.append(m.register_forward_hook(self._hook(l)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def pad_batch(seqs, pad_id):
    """Right-pad lists of token ids: (input_ids, attention_mask), both (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_queries(queries):
    Q = max(len(q) for q in queries)
    out = torch.full((len(queries), Q), -1, dtype=torch.long)
    for i, q in enumerate(queries):
        out[i, : len(q)] = torch.as_tensor(q, dtype=torch.long)
    return out


class RowsRecorder(Recorder):
    """The rows method: switches the attention implementation to ROWS_IMPL and back."""

    def __enter__(self):
        register_rows()
        self.old = self.model.config._attn_implementation
        self.model.set_attn_implementation(ROWS_IMPL)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        self.model.set_attn_implementation(self.old)


@torch.no_grad()
def capture(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    query_positions: Any,
    layers: Optional[Sequence[int]] = None,
    return_logits: bool = False,
    method: str = "auto",
    prefix: Any = None,
) -> Capture:
    """One batch: Capture(rows (B, L, H, Q, T), logits (B, V) at each prompt's last token when
    return_logits, else None).

    method: "rows", "hooks", or "auto" (rows where supported, else hooks).
    prefix: a prefix.PrefixKV of P tokens that every prompt starts with; input_ids, attention_mask and
    query_positions are then the suffixes' (positions counted from the suffix's start), and the rows
    cover all P + T keys (T: the suffixes' padded length), as a full pass would give them.
    """
    qp = torch.as_tensor(query_positions, dtype=torch.long)
    if qp.dim() != 2 or qp.shape[0] != input_ids.shape[0]:
        raise MechprobeError(
            f"query_positions must have shape (B, Q) with B={input_ids.shape[0]}, got {tuple(qp.shape)}"
        )
    lengths = attention_mask.sum(1)
    if (qp >= lengths[:, None]).any():
        raise MechprobeError("a query position lies beyond its prompt's length")
    dev = model_device(model)
    if method not in ("auto", "rows", "hooks"):
        raise MechprobeError(f"capture method {method!r}: expected auto, rows or hooks")
    use_rows = method == "rows" or (method == "auto" and rows_supported(model))
    try:
        with (RowsRecorder if use_rows else AttentionRecorder)(model, layers) as rec:
            rec.query_positions = qp
            logits = last_logits(model, input_ids.to(dev), attention_mask.to(dev), prefix)  # (B, V)
            if use_rows and len(rec.rows) != len(rec.layers) and method == "auto":
                use_rows = None  # this model's attention does not use the interface: fall back below
            else:
                rows = rec.stacked()
    except RowsUnsupported as e:
        if method == "rows":
            raise MechprobeError(
                f"capture method 'rows' cannot reproduce this attention ({e}); use method 'hooks' or 'auto'"
            ) from None
        use_rows = None
    if use_rows is None:
        return capture(model, input_ids, attention_mask, query_positions, layers, return_logits, "hooks", prefix)
    return Capture(rows, logits.float().cpu() if return_logits else None)
