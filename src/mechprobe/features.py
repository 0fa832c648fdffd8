"""Statement token spans and the per-statement attention features of the probe.

A statement s is a character span [a_s, b_s) of the prompt; its tokens are those whose
offset-mapping span overlaps it (and is not zero-width). From the captured rows
A[l, h, i, t] (layer, head, query i, key token t) the feature of s is

    f_s[l] = (1/|tok(s)|) * sum_{t in tok(s)}  pool_i ( (1/H) * sum_h A[l, h, i, t] )

with pool_i over the query positions = last | mean | max. Per-head features skip the head
mean and give f_s[l, h]. With normalize='max' (the GPT-2 experiments), every example's
(statements x layers) matrix is divided by its maximum.
"""

from typing import Optional, Sequence, Tuple

import torch

from .utils import MechprobeError

QUERY_POOLS = ("last", "mean", "max")


def token_spans(offsets, char_spans, text=None, where="prompt"):
    """Map character spans to token index ranges [start, end) with the tokenizer's offset mapping.

    offsets: list of (start, end) character offsets per token (special tokens are (0, 0)).
    A span covers the tokens that overlap it (s < b and e > a); with the non-empty tokens in
    character order (any tokenizer's), those are found by two binary searches.
    """
    import bisect

    real = [t for t, (s, e) in enumerate(offsets) if e > s]  # token indices of non-empty tokens
    starts, ends = [offsets[t][0] for t in real], [offsets[t][1] for t in real]
    ordered = all(x <= y for x, y in zip(ends, starts[1:]))
    spans = []
    for j, (a, b) in enumerate(char_spans):
        if ordered:
            lo, hi = bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)  # real[lo:hi] overlap [a, b)
            toks = real[lo:hi]
        else:
            toks = [t for t, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        if not toks:
            snippet = f" {text[a:b]!r}" if text is not None else ""
            raise MechprobeError(f"{where}: statement {j} (characters {a}-{b}{snippet}) maps to no token")
        if toks[-1] - toks[0] != len(toks) - 1:
            raise MechprobeError(f"{where}: statement {j} (characters {a}-{b}) maps to non-contiguous tokens {toks}")
        spans.append((toks[0], toks[-1] + 1))
    return spans


def pool_queries(rows, query_pool, n_queries=None):
    """rows (L, H, Q, T) -> (L, H, T), pooling over the first n_queries query rows."""
    if n_queries is not None:
        rows = rows[:, :, :n_queries]
    if query_pool == "last":
        return rows[:, :, -1]
    if query_pool == "mean":
        return rows.mean(2)
    if query_pool == "max":
        return rows.max(2).values
    raise MechprobeError(f"query pool {query_pool!r}: expected one of {', '.join(QUERY_POOLS)}")


def statement_features(
    rows: torch.Tensor,
    spans: Sequence[Tuple[int, int]],
    query_pool: str = "last",
    per_head: bool = False,
    normalize: str = "none",
    n_queries: Optional[int] = None,
) -> torch.Tensor:
    """Features of one example: (S, L, 1) head-averaged, or (S, L, H) per head.

    rows: (L, H, Q, T) captured attention of one example; spans: list of (start, end) token ranges.
    """
    a = pool_queries(rows, query_pool, n_queries)  # (L, H, T)
    if not per_head:
        a = a.mean(1, keepdim=True)  # (L, 1, T)
    f = torch.stack([a[:, :, s:e].mean(-1) for s, e in spans])  # (S, L, H')
    if normalize == "max":
        m = f.max()
        f = f / m if m > 0 else f
    elif normalize != "none":
        raise MechprobeError(f"normalize {normalize!r}: expected none or max")
    return f


def normalized_entropy(p, dim=-1, eps=1e-12):
    """-(sum p log p) / log(n) along `dim` (n = size of that dim): 1 uniform, 0 one-hot."""
    import math

    n = p.shape[dim]
    return -(p * (p + eps).log()).sum(dim) / math.log(n)


def statement_entropy(feats):
    """Per-head features [(S, L, H)] -> (L, H): the mean over examples of the normalised entropy of
    each head's attention mass over the statements, p_s = f_s / sum_s f_s (examples with S >= 2)."""
    out = []
    for f in feats:
        f = torch.as_tensor(f, dtype=torch.float64)
        if f.shape[0] < 2:
            continue
        p = f / f.sum(0, keepdim=True).clamp_min(1e-12)  # (S, L, H)
        out.append(normalized_entropy(p, dim=0))
    return torch.stack(out).mean(0).numpy() if out else None
