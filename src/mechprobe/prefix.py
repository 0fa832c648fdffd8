"""Shared prompt prefixes: the keys and values of tokens that many prompts start with, computed once.

Every prompt of an in-context run starts with the same demonstrations (incontext.pick_demos draws
one set), so most of its tokens are a prefix p_1..p_P shared by all prompts. Under the causal mask
the prefix's keys and values do not depend on what follows it, so

    forward(p_1..p_P, s_1..s_n) = forward(s_1..s_n | cache of p_1..p_P)

for every position of the suffix s (the same logits, the same attention rows over all P + n keys),
and only the suffix is run per prompt. The queries of the probe, the knockout's blocked queries and
the scored last token must therefore lie in the suffix (group() makes sure of it); the keys (the
statements) may lie anywhere.
"""

import inspect
from typing import NamedTuple

import torch

MIN_PREFIX = 32  # shorter shared prefixes are not worth a cache


class Group(NamedTuple):
    """Prompts (their indices) that share their first `prefix` tokens (0: no shared prefix)."""

    prefix: int
    members: list


def _lcp(a, b, limit):
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _split(seqs, first_needed, members, min_prefix):
    """Groups of `members` (prompts that share their first min_prefix tokens): the prefix P that the
    most tokens' worth of prompts share (P times the prompts sharing it, with a reference prompt from
    the middle of their sorted order, so that a few odd prompts do not cut everyone's prefix), then
    the others in the same way. Returns ([Group], prompts left to run whole)."""
    if len(members) < 2:
        return [], list(members)
    order = sorted(members, key=lambda i: seqs[i])
    ref = seqs[order[len(order) // 2]]
    cap = {i: min(first_needed[i], len(seqs[i]) - 1) for i in members}
    lcp = {i: _lcp(seqs[i], ref, min(cap[i], len(ref))) for i in members}
    best = max(set(lcp.values()), key=lambda P: (P * sum(v >= P for v in lcp.values()), P))
    inside = [i for i in members if lcp[i] >= best]
    if best < min_prefix or len(inside) < 2:
        return [], list(members)
    groups, whole = _split(seqs, first_needed, [i for i in members if lcp[i] < best], min_prefix)
    return [Group(best, sorted(inside))] + groups, whole


def group(seqs, first_needed, min_prefix=MIN_PREFIX):
    """Split prompts into groups that share a prefix: [Group(P, indices)].

    seqs: token id lists; first_needed[i]: the first position of prompt i that must be run (its
    first query; at most its last token). Prompts are bucketed by their first min_prefix tokens;
    in a bucket, the prompts that share the longest prefix with most of the others form a group
    with P = that prefix (cut before every member's needed positions), and so on for the rest
    (_split). The prompts left with P < min_prefix (or alone) form one group with P = 0 (run whole,
    batched together)."""
    buckets = {}
    for i, s in enumerate(seqs):
        buckets.setdefault(tuple(s[:min_prefix]) if len(s) > min_prefix else ("short", i), []).append(i)
    out, whole = [], []
    for members in buckets.values():
        g, w = _split(seqs, first_needed, members, min_prefix)
        out += g
        whole += w
    return out + ([Group(0, sorted(whole))] if whole else [])


def _cache_kwarg(model):
    """The forward's name for a KV cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class PrefixKV:
    """The keys and values of one token prefix (1, P) under `model`, computed once; batch(B, mask)
    gives the forward keyword arguments that run B suffixes on it."""

    def __init__(self, model, prefix_ids):
        from transformers.cache_utils import DynamicCache

        self.model, self.ids, self.length = model, list(prefix_ids), len(prefix_ids)
        dev = next(model.parameters()).device
        self.name = _cache_kwarg(model)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([self.ids], device=dev), use_cache=True, logits_to_keep=1)
        c = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if not isinstance(c, DynamicCache):
            raise TypeError(f"{type(model).__name__} returned no DynamicCache")
        self.kv = [(layer.keys, layer.values) for layer in c.layers]

    def batch(self, B, suffix_mask):
        """{cache name: a fresh cache with the prefix repeated B times, "attention_mask": (B, P + n)}."""
        from transformers.cache_utils import DynamicCache

        c = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self.kv):
            c.update(k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous(), i)
        ones = torch.ones(B, self.length, dtype=suffix_mask.dtype, device=suffix_mask.device)
        return {self.name: c, "attention_mask": torch.cat([ones, suffix_mask], 1)}


def _hooks(model):
    """The ids of every hook on the model's modules (unique per registration): a prefix computed
    under other hooks (e.g. masked heads) is another prefix."""
    return tuple(sorted(k for m in model.modules() for d in (m._forward_pre_hooks, m._forward_hooks) for k in d))


def prefix_kv(model, prefix_ids):
    """The PrefixKV of these tokens, kept on the model (the last one asked for, under the same hooks):
    the knockout's many passes over the same prompts compute the prefix once."""
    key = (tuple(prefix_ids), _hooks(model))
    memo = getattr(model, "_mechprobe_prefix", None)
    if memo is None or memo[0] != key:
        memo = (key, PrefixKV(model, prefix_ids))
        model._mechprobe_prefix = memo
    return memo[1]


def supported(model):
    """Whether the model runs suffixes on a prefix cache here: a decoder without sliding-window layers
    (their cache keeps only the window's keys, so the rows would lose the rest)."""
    try:
        from transformers.cache_utils import DynamicCache  # noqa: F401
    except ImportError:
        return False
    cfg = model.config
    sliding = getattr(cfg, "sliding_window", None) or any(
        "sliding" in str(t) for t in getattr(cfg, "layer_types", None) or []
    )
    return not sliding and not getattr(cfg, "is_encoder_decoder", False)


def model_groups(model, seqs, first_needed, share=True):
    """group() where the model can run on a prefix cache (supported) and sharing is asked for, else one
    group of every prompt run whole."""
    if not (share and supported(model)):
        return [Group(0, list(range(len(seqs))))]
    return group(seqs, first_needed)
