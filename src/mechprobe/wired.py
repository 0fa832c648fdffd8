"""The hand-wired lookup: a calibration of the instrument, never a subject of findings.

A small LLaMA whose depth-0 mechanism is known because it is built, not learnt: layer 0's heads
0-2 attend 1, 2, 3 tokens back (`init_position_heads`); layer 1's head 0 matches a question "E is
[not] a" to the fact "E is a ." among the statements; layer 1's MLP writes "not found" on one
direction when no fact matched (`init_wired_lookup`). Untrained, with a threshold fitted on dev on
that direction, it answers the depth-0 questions; the probe and the knockout read this model where
the answer is known to flow through one head from one statement (docs/reasoner.md, calibration).

    python -m mechprobe.wired --data-dir data/proofwriter/reasoner --out-dir runs/wired
    MODEL=runs/wired N_DEMOS=0 bash run_probing_proofwriter.sh
"""

import torch

POSITION_SCALE = 8.0  # |q| = |k| per rotary pair of a positional head: 0.99+ of its attention on its offset (mean)


def init_position_heads(model, k, rope_theta=10000.0, scale=POSITION_SCALE):
    """Layer 0's heads h = 0..k-1 attend to the token h+1 places back, whatever the tokens are.

    RoPE turns pair i of a head's query at position m by m*w_i (w_i = theta^(-2i/d)) and its key at n
    by n*w_i, so a query q and key k of constant parts (the projections' biases; the weights' random
    part is small at init) score q.R((n-m) w) k. With q_i = (s, 0) and k_i = s (cos(D w_i), sin(D w_i))
    for every pair, the score of the key d places back is s^2 sum_i cos((D - d) w_i) / sqrt(d_head):
    largest at d = D, and with s = 8 the softmax puts 0.99+ there on average (0.9+ at every position;
    measured on 300 random tokens, tests/test_reasoner.py, and on a ProofWriter prompt). Training may
    move them like any weight. Needs attention_bias=True."""
    att = model.model.layers[0].self_attn
    d = att.head_dim
    heads = att.q_proj.out_features // d
    if not 0 < k <= heads or att.q_proj.bias is None or att.k_proj.out_features != att.q_proj.out_features:
        raise ValueError(f"position heads: {k} of {heads} heads, with q/k biases and as many key as query heads")
    half = d // 2
    w = rope_theta ** (-torch.arange(half, dtype=torch.float32) * 2 / d)  # (d/2,) radians per token
    with torch.no_grad():
        for h in range(k):
            q = torch.zeros(d)
            q[:half] = scale  # HF's rotate_half pairs dimension i with i + d/2
            key = torch.cat([scale * torch.cos((h + 1) * w), scale * torch.sin((h + 1) * w)])
            att.q_proj.bias[h * d : (h + 1) * d] = q
            att.k_proj.bias[h * d : (h + 1) * d] = key


WIRED_SCALE = 6.0  # the match head's query/key scale: 0.64 of the question attribute's attention on its fact at init
WIRED_PAIRS = 8  # rotary pairs (the slowest) the match head uses, both coordinates of each


PLAIN_WORDS = ("is", ".", "not", "the", "The")  # words that never end an entity (no entity code)


def init_wired_lookup(model, seed=0, plain=(), scale=WIRED_SCALE, pairs=WIRED_PAIRS, emb=0.02):
    """A lookup wired in: at the attribute a of a question "E is [not] a", layer 1's head 0 attends to
    the "." closing the fact "E is a ." when the statements hold it, and layer 1's MLP says whether it
    found it.

    The residual stream (width D) is cut into four orthonormal blocks B0..B3 of D/4 = d_head each
    (a seeded random rotation). Token embeddings live in B0; layer 0's heads h = 0, 1, 2 (position
    heads, `init_position_heads`, offsets 1, 2, 3) copy B0 into B_{h+1}, so that after layer 0 a
    token t carries x_t in B0, x_{t-1} in B1, x_{t-2} in B2 and x_{t-3} in B3. Layer 1's head 0 then
    matches each word in its own place, on the slowest rotary pairs (where RoPE barely turns over a
    prompt):
        q_t . k_s = scale^2 (P1 x_t . P1 x_{s-1} + P2 (x_{t-2} + x_{t-3}) . P2 x_{s-3}) / sqrt(d_head)
    (P1, P2: orthonormal projections of B0's coordinates, `pairs` each; every word's P1 x, P2 x and
    the rest of x of equal norms, so every fact scores alike; the words `plain` (ids of PLAIN_WORDS)
    get no P2 code, so "E is not a" is matched as "E is a"). `_wire_found` adds the verdict. On the
    reasoner's data (seeds 0 / 1 / 2, true depth-0 test questions): 0.996-1.00 of the attribute's
    attention on the fact's "."; the verdict separates them from the unprovable questions whose
    words both occur with AUC 0.999-1.000. Needs 4 heads of D/4 dimensions (as many key heads),
    attention biases, 3 position heads and d_head > 2 x pairs."""
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    D, d = model.config.hidden_size, a0.head_dim
    if D != 4 * d or a0.q_proj.out_features != D or a0.k_proj.out_features != D or a0.q_proj.bias is None:
        raise ValueError("a wired lookup needs 4 heads of hidden/4 dimensions (as many key heads), with biases")
    if d <= 2 * pairs:
        raise ValueError(f"a wired lookup needs head dimensions beyond the {2 * pairs} code ones: got {d}")
    g = torch.Generator().manual_seed(seed + 7)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g))[0]  # (D, D) orthonormal columns
    B = [Q[:, i * d : (i + 1) * d] for i in range(4)]  # 4 blocks (D, d)
    with torch.no_grad():
        V = model.model.embed_tokens.weight.shape[0]
        x, P = _codes(V, d, D, pairs, emb, g, plain)
        model.model.embed_tokens.weight.copy_(x @ B[0].T)
        for h in range(3):  # head h: values B0's coordinates, written into B_{h+1}
            a0.v_proj.weight[h * d : (h + 1) * d] = B[0].T
            a0.o_proj.weight[:, h * d : (h + 1) * d] = B[h + 1] * emb
        a1.q_proj.weight[:d], a1.k_proj.weight[:d] = _match_weights(P, B, scale, pairs)
        a1.q_proj.bias[:d], a1.k_proj.bias[:d] = 0, 0
        _wire_found(model, B, P, x.norm(dim=1).mean(), emb, g)


def _codes(V, d, D, pairs, emb, g, plain):
    """(x (V, d), P (2 pairs, d)): the words' codes (the default init's norm per word, `_equal_norms`)
    and the match head's projection (orthonormal rows); the words `plain` get no P2 code (the words
    before an entity, "the" or a statement's ".", and after it, "is")."""
    x = torch.randn(V, d, generator=g) * emb * (D / d) ** 0.5
    P = torch.linalg.qr(torch.randn(d, 2 * pairs, generator=g))[0].T
    x = _equal_norms(x, P, pairs)
    x[list(plain)] -= x[list(plain)] @ P[pairs:].T @ P[pairs:]
    return x, P


def _equal_norms(x, P, pairs):
    """x (V, d) with the same norm of P1 x, of P2 x (P's halves, orthonormal rows) and of the rest of x
    for every row: each part scaled to its mean norm, its direction kept."""
    for Pj in (P[:pairs], P[pairs:]):
        px = x @ Pj.T  # (V, pairs)
        r = px.norm(dim=1, keepdim=True)
        x = x + (px * (r.mean() / r - 1)) @ Pj
    rest = x - x @ P.T @ P  # (V, d): the part outside P's directions
    r = rest.norm(dim=1, keepdim=True)
    return x + rest * (r.mean() / r - 1)


def _match_weights(P, B, scale, pairs):
    """(Wq, Wk), each (d, D): the match head's query reads x_t (B0) through P1 onto half of the slowest
    `pairs` rotary pairs (pair i: dimensions i and i + d/2) and x_{t-2} + x_{t-3} (B2 + B3) through P2
    onto the other half; its key x_{s-1} (B1) and x_{s-3} (B3) likewise."""
    d, D = B[0].shape[1], B[0].shape[0]
    slow = range(d // 2 - pairs, d // 2)
    Wq, Wk = torch.zeros(d, D), torch.zeros(d, D)
    for j, part in enumerate((slow[: pairs // 2], slow[pairs // 2 :])):
        dims, Pj = _coordinates(part, d), P[j * pairs : (j + 1) * pairs]
        Bq = B[2] + B[3] if j else B[0]
        Wq[dims], Wk[dims] = scale * Pj @ Bq.T, scale * Pj @ B[2 * j + 1].T
    return Wq, Wk


FOUND_UNITS = 32  # layer 1's MLP units 0..31: the found detector (a +/- pair per code dimension)
FOUND_GAIN = 0.3  # its output column: FOUND_GAIN * a word code's norm on e (training grew 0.1 to 0.17-0.3 when free)


def _wire_found(model, B, P, norm, emb, g):
    """The match head's verdict: found or not. Its value is the attended key's words'
    codes (P1 x_{s-1}, P2 x_{s-3}), written with a minus sign where the query's own codes lie (P1 in
    B0, P2 in B2), so that after the head the residual's code directions hold
        delta = (P1 x_t - P1 x_{s*-1}, P2 (x_{t-2} + x_{t-3}) - P2 x_{s*-3})   (s*: the attended "."),
    0 where the fact was found. Layer 1's MLP units come in pairs (+w, -w) on both the gate and the up
    projection, so a pair gives silu(z) z + silu(-z)(-z) = z^2 (z = w . RMSNorm(h)): over the 16 code
    directions w the units sum to |delta|^2 / rms^2, written on one direction e (B3, outside P's
    codes): "not found". The random weights that would write into the code directions (layer 0's head
    3, layer 0's MLP, layer 1's heads 1-3) or onto e (layer 1's other units) are projected off them.
    The query's entity is read 2 or 3 tokens back (P2 (x_{t-2} + x_{t-3})), the words `plain` having no
    P2 code, so that "E is not a" is matched as "E is a" is. Before training, on each seed's own data
    (seeds 0 / 1 / 2, true depth-0 test questions against the unprovable ones whose words both occur,
    the MLP's output on e at the question's attribute): AUC 1.000 / 1.000 / 0.999 ("E is a"), 1.000
    ("E is not a"); the attention on the fact's "." 1.00 / 0.997 / 0.996."""
    (a0, m0), (a1, m1) = ((model.model.layers[i].self_attn, model.model.layers[i].mlp) for i in (0, 1))
    d, pairs, D = a0.head_dim, P.shape[0] // 2, B[0].shape[0]
    P1, P2 = P[:pairs], P[pairs:]
    kappa = emb * D**0.5 / norm  # B1..B3 hold kappa x (layer 0's heads write RMSNorm(x) * emb)
    rms = (norm**2 * (1 + 3 * kappa**2) / D) ** 0.5  # the residual's rms at layer 1: value = kappa x / rms
    a1.v_proj.weight[:d], a1.v_proj.bias[:d], a1.o_proj.weight[:, :d] = 0, 0, 0
    a1.v_proj.weight[:pairs], a1.v_proj.weight[pairs : 2 * pairs] = P1 @ B[1].T, P2 @ B[3].T
    a1.o_proj.weight[:, :pairs] = -rms / kappa * B[0] @ P1.T
    a1.o_proj.weight[:, pairs : 2 * pairs] = -rms / kappa * B[2] @ P2.T
    W = torch.cat([B[0] @ P1.T, (B[2] + B[3]) @ P2.T], 1).T  # (16, D): the code directions
    units = torch.stack([W, -W], 1).reshape(-1, D)  # (32, D): +w, -w
    m1.gate_proj.weight[:FOUND_UNITS], m1.up_proj.weight[:FOUND_UNITS] = units, units
    free = torch.linalg.qr(torch.cat([P.T, torch.randn(d, 1, generator=g)], 1))[0][:, -1]  # (d,): orthogonal to P
    e = B[3] @ free  # (D,)
    m1.down_proj.weight[:, :FOUND_UNITS] = FOUND_GAIN * norm * e[:, None]
    S = torch.linalg.qr(torch.cat([B[0] @ P1.T, B[1] @ P1.T, B[2] @ P2.T, B[3] @ P2.T], 1))[0]  # (D, 32)
    off, off_e = torch.eye(D) - S @ S.T, torch.eye(D) - torch.outer(e, e)
    a0.o_proj.weight[:, 3 * d :] = off @ a0.o_proj.weight[:, 3 * d :]
    m0.down_proj.weight.copy_(off @ m0.down_proj.weight)
    a1.o_proj.weight[:, d:] = off @ a1.o_proj.weight[:, d:]
    m1.down_proj.weight[:, FOUND_UNITS:] = off_e @ m1.down_proj.weight[:, FOUND_UNITS:]


def _coordinates(pairs, d):
    """Both coordinates of each rotary pair in `pairs` (HF's rotate_half pairs dimension i with i + d/2)."""
    return [i + o for o in (0, d // 2) for i in pairs]


def build(tok, seed=0, layers=4, hidden=128, heads=4, rope_theta=1e6):
    """The untrained wired model for the word tokenizer `tok` (the reasoner's architecture, with
    attention biases): random weights, then the position heads and the lookup written in."""
    from .tiny import llama_from_config

    model = llama_from_config(tok, layers, hidden, heads, heads, 4 * hidden, seed, 1024, rope_theta, bias=True)
    init_position_heads(model, 3, rope_theta)
    vocab = tok.get_vocab()
    init_wired_lookup(model, seed, plain=[vocab[w] for w in PLAIN_WORDS if w in vocab])
    return model.eval()


def encode(tok, items):
    """Per depth-0 question of `items` (reasoner.read_questions): token ids, the question's attribute
    position, the token span [start, end) of each statement, the index of the fact it asks about (None
    when the statements do not state it) and whether it is unprovable (CWA failure, NAF)."""
    import re

    from .incontext import PromptBuilder
    from .reasoner import question_last_words

    out = []
    for it in items:
        if it["depth"] != 0:
            continue
        text, spans, qspan = PromptBuilder().build(it, [])
        e = tok(text, return_offsets_mapping=True)
        off = e["offset_mapping"]
        toks = [[t for t, (a, b) in enumerate(off) if b > a and s0 <= a < s1] for s0, s1 in spans]
        fact = re.sub(r" not ", " ", " " + it["question"].strip()).strip()
        gold = next((i for i, s in enumerate(it["statements"][: it["facts"]]) if s.strip() == fact), None)
        out.append(
            {
                "ids": e["input_ids"],
                "attribute": int(question_last_words([off], [qspan], [text])[0]),
                "spans": [(t[0], t[-1] + 1) for t in toks],
                "gold": gold,
                "unprovable": it["strategy"] in ("random", "inv-random"),
                "negated": " not " in f" {it['question']} ",
            }
        )
    return out


@torch.no_grad()
def not_found(model, prompts, knocked=None, layers=None, batch_size=64):
    """(N,) the "not found" signal at each question's attribute: the summed output of layer 1's found
    units (their down-projection columns all write FOUND_GAIN * |x| * e, so this is the MLP's write
    on e up to that factor). knocked: per prompt a statement index or None; its tokens are then
    blocked from the attribute's attention in `layers` (None: all; knockout.knockout)."""
    from contextlib import nullcontext

    from .capture import pad_batch
    from .knockout import knockout

    mlp = model.model.layers[1].mlp
    out = []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s : s + batch_size]
        ids, mask = pad_batch([p["ids"] for p in batch], model.config.pad_token_id or 0)
        at = torch.tensor([p["attribute"] for p in batch])
        got = {}
        hook = mlp.down_proj.register_forward_hook(lambda m, i, o: got.update(a=i[0][..., :FOUND_UNITS].sum(-1)))
        q = torch.zeros_like(ids, dtype=torch.bool)
        q[torch.arange(len(batch)), at] = True
        k = torch.zeros_like(q)
        for b, p in enumerate(batch):
            if knocked is not None and knocked[s + b] is not None:
                k[b, slice(*p["spans"][knocked[s + b]])] = True
        try:
            with knockout(model, q, k, layers) if k.any() else nullcontext():
                model(input_ids=ids, attention_mask=mask)
        finally:
            hook.remove()
        out.append(got["a"][torch.arange(len(batch)), at])
    return torch.cat(out).float().numpy()


def fit_threshold(signal, unprovable):
    """The threshold t on the "not found" signal that answers the most questions right, "not found"
    when signal > t (midpoints between sorted values)."""
    import numpy as np

    v = np.sort(np.unique(signal))
    cands = np.concatenate([[v[0] - 1], (v[1:] + v[:-1]) / 2, [v[-1] + 1]])
    acc = [np.mean((signal > t) == unprovable) for t in cands]
    return float(cands[int(np.argmax(acc))])


@torch.no_grad()
def gold_attention(model, prompts):
    """(N,) the attention of layer 1's head 0 at each question's attribute on the last token (".") of the
    fact it asks about (prompts with a stated fact only)."""
    import numpy as np

    shares = []
    for p in prompts:
        att = model(input_ids=torch.tensor([p["ids"]]), output_attentions=True).attentions[1][0, 0]  # (T, T)
        shares.append(float(att[p["attribute"], p["spans"][p["gold"]][1] - 1]))
    return np.array(shares)


def calibrate(model, tok, dev, test, seed=0):
    """What the wired model does on depth-0 questions (reasoner.read_questions items of dev and test):
    the "not found" threshold fitted on dev; on test, the verdict's accuracy (its answer: found XOR
    "not"), per kind; layer 1's head 0's attention on the asked fact; and the knockout: the share of the
    stated-fact questions whose verdict turns to "not found" when the attribute cannot attend to that
    fact, against one other fact of the theory drawn at random (seeded), in all layers and in layers >= 2
    (after the lookup)."""
    import numpy as np

    dp, tp = encode(tok, dev), encode(tok, test)
    t = fit_threshold(not_found(model, dp), np.array([p["unprovable"] for p in dp]))
    sig = not_found(model, tp)
    unp = np.array([p["unprovable"] for p in tp])
    ok = (sig > t) == unp
    stated = [i for i, p in enumerate(tp) if p["gold"] is not None and not p["unprovable"]]
    rng = np.random.default_rng(seed)
    other = {i: int(rng.choice([j for j in range(len(tp[i]["spans"])) if j != tp[i]["gold"]])) for i in stated}
    sub = [tp[i] for i in stated]
    base = sig[stated] > t
    flips = {}
    for name, layers in (("all layers", None), ("layers >= 2", list(range(2, model.config.num_hidden_layers)))):
        for cond, knocked in (
            ("asked fact", [p["gold"] for p in sub]),
            ("random other fact", [other[i] for i in stated]),
        ):
            after = not_found(model, sub, knocked, layers) > t
            flips[f"{cond}, {name}"] = round(float(np.mean(after != base)), 4)
    kinds = {"stated fact": ~unp, "unprovable": unp}
    return {
        "threshold": t,
        "n": len(tp),
        "verdict_accuracy": round(float(ok.mean()), 4),
        "by_kind": {k: round(float(ok[m].mean()), 4) for k, m in kinds.items() if m.any()},
        "gold_attention": round(float(gold_attention(model, sub).mean()), 4),
        "knockout_changed": flips,
    }
