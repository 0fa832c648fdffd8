"""Prompts that share a prefix (the questions on one theory) packed into one row.

A theory's questions share its statements: "<statements> <question i> True or False ?". Run apart,
the statements are computed once per question. Packed, a row holds the shared prefix p (length P)
once, then each question's own tokens s_i one after the other:

    row = [p_0 .. p_{P-1}, s_1, s_2, ..., s_n]      position ids: p at 0..P-1, each s_i at P..P+|s_i|-1

and an additive attention mask (R, 1, T, T) lets a token of s_i see p (causally) and the earlier
tokens of s_i only. Each query then sees exactly the keys, and the rotary positions, it would see in
its own prompt: logits equal the unpacked ones (tests/test_packing.py checks this against
`models.last_logits` and a padded batch), at a fraction of the tokens (a theory of ~74 statement
tokens with 8 questions of ~9: 146 tokens instead of 664).

A row may end with a recall segment r (e.g. the theory's facts restated in another order) that sees
the row's first V tokens (the statements) and itself, at positions V..V+|r|-1: its next-token pairs
(recall_src, recall_tgt) train retrieving what the statements bind together ("Bob is" -> Bob's
attributes), an auxiliary loss that no prompt's answer or logits depend on.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class PackedPrompts:
    """ids, positions (R, T); mask (R, 1, T, T) additive (0 or the float minimum); last (N,): flat
    index (row * T + column) of each prompt's last token, in the prompts' order; lm_src (M,) and
    lm_tgt (M,): flat index of each position that predicts a next token of its prompt, and that token
    (the same M = sum_i (len_i - 1) pairs as the prompts run apart); recall_src / recall_tgt: the
    same for the recall segments."""

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    last: torch.Tensor
    lm_src: torch.Tensor
    lm_tgt: torch.Tensor
    recall_src: torch.Tensor = None
    recall_tgt: torch.Tensor = None

    def to(self, dev):
        fields = (getattr(self, f) for f in self.__dataclass_fields__)
        return PackedPrompts(*(None if x is None else x.to(dev) for x in fields))

    def logits(self, model):
        """Logits (R * T, V) of every packed position."""
        return self.outputs(model)[0]

    def outputs(self, model, layer=None):
        """Logits (R * T, V) of every packed position, and with layer=k the residual stream after the
        model's first k layers, (R * T, D) (hidden_states[k]; else None)."""
        out = model(
            input_ids=self.ids,
            attention_mask=self.mask,
            position_ids=self.positions,
            output_hidden_states=layer is not None,
        )
        h = None if layer is None else out.hidden_states[layer]  # (R, T, D)
        return out.logits.reshape(-1, out.logits.shape[-1]), None if h is None else h.reshape(-1, h.shape[-1])

    def lm_loss(self, z):
        """Mean next-token cross-entropy over the prompts' own tokens, as for the prompts run apart."""
        return F.cross_entropy(z[self.lm_src].float(), self.lm_tgt)

    def recall_loss(self, z, readout=None):
        """Mean next-token cross-entropy over the recall segments' tokens (None without any). z: the
        logits (R * T, V), or with `readout` (a map to logits) the hidden states (R * T, D), read out
        at the recall positions only."""
        if self.recall_src is None:
            return None
        x = z[self.recall_src]
        return F.cross_entropy((x if readout is None else readout(x)).float(), self.recall_tgt)


def common_prefix(seqs):
    """Length of the longest common prefix of token lists, kept below the shortest one's length (so
    that every prompt keeps at least its last token of its own)."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _layout(seqs, keys):
    """Rows of prompts with the same key: [(prefix length, [prompt indices])] in first-seen order."""
    rows = {}
    for i, k in enumerate(keys):
        rows.setdefault(k, []).append(i)
    return [(common_prefix([seqs[i] for i in idx]), idx) for idx in rows.values()]


def pack(seqs, keys, pad_id, lm_from=None, recall=None, lm_to=None):
    """Pack token lists `seqs` (prompts with the same key share a prefix; one row per key).
    lm_from / lm_to: per prompt, the first token its next-token loss predicts (default 1: every token
    but the first; e.g. the question's first token, for a loss on the question alone) / the end
    (exclusive) of those tokens (default: the prompt's length; e.g. the question's first token, for
    a loss on the statements alone).
    recall: {key: (tokens, V)}: a recall segment at the end of that key's row, seeing its first V
    tokens (V <= the row's shared prefix) and itself (a segment of fewer than 2 tokens predicts
    nothing and is left out)."""
    layout = _layout(seqs, keys)
    tails = _recall_tails(layout, keys, recall or {})
    lengths = [P + sum(len(seqs[i]) - P for i in idx) + len(r) for (P, idx), (r, _) in zip(layout, tails)]
    R, T = len(layout), max(lengths)
    ids = np.full((R, T), pad_id, dtype=np.int64)
    pos = np.zeros((R, T), dtype=np.int64)
    allow = np.zeros((R, T, T), dtype=bool)
    where, src, tgt, rsrc, rtgt = [None] * len(seqs), [], [], [], []
    for r, (P, idx) in enumerate(layout):
        ids[r, :P], pos[r, :P] = seqs[idx[0]][:P], np.arange(P)
        allow[r, :P, :P] = np.tril(np.ones((P, P), dtype=bool))
        c = P
        for i in idx:
            own = seqs[i][P:]
            n = len(own)
            ids[r, c : c + n], pos[r, c : c + n] = own, np.arange(P, P + n)
            allow[r, c : c + n, :P] = True
            allow[r, c : c + n, c : c + n] = np.tril(np.ones((n, n), dtype=bool))
            where[i] = r * T + np.concatenate([np.arange(P), np.arange(c, c + n)])  # the prompt's tokens, in order
            f = 1 if lm_from is None else max(1, int(lm_from[i]))
            t = len(seqs[i]) if lm_to is None else int(lm_to[i])
            src.append(where[i][f - 1 : t - 1])
            tgt.append(np.asarray(seqs[i][f:t], dtype=np.int64))
            c += n
        _recall_segment(ids, pos, allow, r, c, *tails[r], rsrc, rtgt)
    for r, n in enumerate(lengths):  # padding sees itself only (no empty softmax row)
        allow[r, np.arange(n, T), np.arange(n, T)] = True
    mask = torch.zeros((R, 1, T, T), dtype=torch.float32)
    mask.masked_fill_(~torch.from_numpy(allow)[:, None], torch.finfo(torch.float32).min)
    last = np.array([w[-1] for w in where], dtype=np.int64)
    cat = [torch.from_numpy(np.concatenate(x)) if x else None for x in (src, tgt, rsrc, rtgt)]
    return PackedPrompts(torch.from_numpy(ids), torch.from_numpy(pos), mask, torch.from_numpy(last), *cat)


def _recall_tails(layout, keys, recall):
    """Each row's (recall tokens, V), ((), 0) for none; a segment must see 1..P tokens (P: the row's
    shared prefix)."""
    tails = []
    for P, idx in layout:
        r, V = recall.get(keys[idx[0]], ((), 0))
        r, V = (r, V) if len(r) >= 2 else ((), 0)
        if len(r) and not 0 < V <= P:
            raise ValueError(f"recall segment of {keys[idx[0]]!r} sees {V} tokens: expected 1..{P} (the shared prefix)")
        tails.append((r, V))
    return tails


def _recall_segment(ids, pos, allow, r, c, seg, V, src, tgt):
    """Write recall tokens `seg` into row r from column c: they see the row's first V tokens and
    themselves (causally), at positions V..; their next-token pairs go to src / tgt."""
    n = len(seg)
    if n == 0:
        return
    T = ids.shape[1]
    ids[r, c : c + n], pos[r, c : c + n] = seg, np.arange(V, V + n)
    allow[r, c : c + n, :V] = True
    allow[r, c : c + n, c : c + n] = np.tril(np.ones((n, n), dtype=bool))
    src.append(r * T + np.arange(c, c + n - 1))
    tgt.append(np.asarray(seg[1:], dtype=np.int64))
