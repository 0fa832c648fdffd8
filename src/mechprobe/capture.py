"""Attention capture: the attention rows of chosen query positions, per layer and head.

For a batch of prompts and query positions q_{b,1..Q}, returns
    A[b, l, h, i, t] = softmax_t(q_{b,i} . k_t / sqrt(d) + mask)    shape (B, L, H, Q, T)
i.e. row q_{b,i} of layer l, head h's attention matrix. A forward hook on every self-attention
module slices those rows out of the (B, H, T, T) weights as each layer runs, so the full matrices
of all layers are never held at once (output_attentions=True keeps all L of them).

Batches are right-padded: real tokens keep their positions, and under the causal mask a real
query never sees a pad key, so a padded batch gives the same rows as one prompt at a time.
Requires eager attention (the only implementation that materialises the weights).
"""
import torch

from .models import attention_modules, model_device
from .utils import MechprobeError


class AttentionRecorder:
    """Context manager: while active, every forward of `model` records the query rows.

    rec.query_positions must be set to a LongTensor (B, Q) (-1 = no query) before each forward.
    """

    def __init__(self, model, layers=None, to_cpu=True):
        self.model = model
        mods = attention_modules(model)
        self.layers = list(range(len(mods))) if layers is None else list(layers)
        self.mods = [mods[i][1] for i in self.layers]
        self.to_cpu = to_cpu
        self.query_positions = None
        self.rows = {}
        self.handles = []

    def _hook(self, layer):
        def hook(module, args, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is None:
                impl = getattr(self.model.config, "_attn_implementation", "?")
                raise MechprobeError(f"{type(module).__name__} returned no attention weights (attention implementation {impl!r}); "
                                     "load the model with attn_implementation='eager'")
            qp = self.query_positions.to(w.device)  # (B, Q)
            B, H, T, _ = w.shape
            idx = qp.clamp(min=0)[:, None, :, None].expand(B, H, qp.shape[1], T)  # (B, H, Q, T)
            r = torch.gather(w, 2, idx) * (qp >= 0)[:, None, :, None]
            r = r.float()
            self.rows[layer] = r.cpu() if self.to_cpu else r
        return hook

    def __enter__(self):
        for l, m in zip(self.layers, self.mods):
            self.handles.append(m.register_forward_hook(self._hook(l)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def stacked(self):
        """(B, L, H, Q, T) for the last forward."""
        if len(self.rows) != len(self.layers):
            raise MechprobeError(f"captured {len(self.rows)} of {len(self.layers)} layers; did the forward run?")
        out = torch.stack([self.rows[l] for l in self.layers], 1)
        self.rows = {}
        return out


def pad_batch(seqs, pad_id):
    """Right-pad lists of token ids: (input_ids, attention_mask), both (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def pad_queries(queries):
    Q = max(len(q) for q in queries)
    out = torch.full((len(queries), Q), -1, dtype=torch.long)
    for i, q in enumerate(queries):
        out[i, :len(q)] = torch.as_tensor(q, dtype=torch.long)
    return out


@torch.no_grad()
def capture(model, input_ids, attention_mask, query_positions, layers=None, return_logits=False):
    """One batch: attention rows (B, L, H, Q, T) (and the logits at each prompt's last token, (B, V), when asked)."""
    qp = torch.as_tensor(query_positions, dtype=torch.long)
    if qp.dim() != 2 or qp.shape[0] != input_ids.shape[0]:
        raise MechprobeError(f"query_positions must have shape (B, Q) with B={input_ids.shape[0]}, got {tuple(qp.shape)}")
    lengths = attention_mask.sum(1)
    if (qp >= lengths[:, None]).any():
        raise MechprobeError("a query position lies beyond its prompt's length")
    dev = model_device(model)
    with AttentionRecorder(model, layers) as rec:
        rec.query_positions = qp
        out = model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev))
        rows = rec.stacked()
    if not return_logits:
        return rows
    last = out.logits[torch.arange(len(lengths), device=out.logits.device), lengths.to(out.logits.device) - 1]  # (B, V)
    return rows, last.float().cpu()


def capture_prompts(model, token_lists, queries, pad_id, batch_size=32, layers=None, progress=None, on_batch=None):
    """Capture over many prompts in batches of similar length.

    token_lists: list of id lists; queries: list of query-position lists.
    on_batch(indices, rows, last_logits) is called per batch with rows (b, L, H, Q, T_b), last_logits (b, V);
    returns nothing (the caller reduces rows as it goes, so memory stays bounded).
    """
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    it = range(0, len(order), batch_size)
    if progress is not None:
        from tqdm import tqdm

        it = tqdm(it, desc=progress, unit="batch", dynamic_ncols=True)
    for s in it:
        idx = order[s:s + batch_size]
        ids, mask = pad_batch([token_lists[i] for i in idx], pad_id)
        rows, logits = capture(model, ids, mask, pad_queries([queries[i] for i in idx]), layers, return_logits=True)
        on_batch(idx, rows, logits)
