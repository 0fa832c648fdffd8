"""Tiny local models for CPU runs and tests: a random LLaMA-architecture model with a
word-level tokenizer built from the texts it will read (saved with save_pretrained, so
`load_model(dir)` / `AutoTokenizer.from_pretrained(dir)` treat it like any real model)."""

import json
import re
from pathlib import Path

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokenizer(texts, extra=("True", "False", "Unknown"), bos=False):
    """Word-level tokenizer (words and punctuation marks) over the vocabulary of `texts`; with bos, an
    encoding with special tokens starts with "<s>", as a LLaMA tokenizer's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in _WORD.findall(t)} | set(extra))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def llama_from_config(
    tok,
    layers,
    hidden,
    heads,
    kv_heads,
    intermediate,
    seed=0,
    max_positions=4096,
    tie=False,
    rope_theta=10000.0,
    position_heads=0,
    wired_lookup=False,
):
    """A randomly initialised LlamaForCausalLM (eager attention) for the word tokenizer `tok`; with tie,
    the unembedding is the input embedding (W_U = W_E^T). rope_theta: RoPE's base, pair i of a head's
    dimensions turns by theta^(-2i/d_head) radians per token (larger: more pairs that barely turn over
    a prompt, where a query matches a key by content wherever it is). position_heads = K > 0: the
    attention projections get biases and layer 0's heads 0..K-1 start as positional heads (see
    `init_position_heads`); wired_lookup 1: then a lookup head is wired in (`init_wired_lookup`); 2: the
    exact one (`init_wired_lookup(exact=True)`); 3: the exact one that also says whether it found the
    fact (`init_wired_lookup(exact=True, found=True)`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tie,
        attention_bias=position_heads > 0,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager")
    if position_heads:
        init_position_heads(model, position_heads, rope_theta)
    if wired_lookup:
        plain = [tok.convert_tokens_to_ids(w) for w in PLAIN_WORDS if w in tok.get_vocab()]
        init_wired_lookup(model, seed, exact=wired_lookup >= 2, found=wired_lookup == 3, plain=plain)
    return model


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


PLAIN_WORDS = ("is", ".", "not", "the", "The")  # WIRED_LOOKUP=3: words that never end an entity (no entity code)


def init_wired_lookup(
    model, seed=0, scale=WIRED_SCALE, pairs=WIRED_PAIRS, emb=0.02, exact=False, found=False, plain=()
):
    """A lookup wired in at init: at the attribute a of a question "E is a", layer 1's head 0 attends
    to the "." closing the fact "E is a ." when the statements hold it.

    The residual stream (width D) is cut into four orthonormal blocks B0..B3 of D/4 = d_head each
    (a seeded random rotation). Token embeddings live in B0 (random, the default init's norm);
    layer 0's heads h = 0, 1, 2 (position heads, `init_position_heads`, offsets 1, 2, 3) copy B0 into
    B_{h+1}, so that after layer 0 a token t carries x_t in B0, x_{t-1} in B1, x_{t-2} in B2 and
    x_{t-3} in B3. Layer 1's head 0 then scores query t against key s with
        q_t . k_s = scale^2 (P x_t + P x_{t-2}) . (P x_{s-1} + P x_{s-3}) / sqrt(d_head)
    (P: a random projection of B0's coordinates onto 2 x `pairs` orthonormal directions, written on the
    slowest rotary pairs, where RoPE barely turns over a prompt): at the question's attribute
    (x_t = a, x_{t-2} = E) the key of the fact's "." (x_{s-1} = a, x_{s-3} = E) matches both words
    (in either order: "a . E is" elsewhere matches too). Before training: 0.64 of a true depth-0
    question's attribute's attention on the fact's "." (default data, test split; uniform: 0.018).
    exact (WIRED_LOOKUP=2): each word is matched on its own half of the pairs,
        q_t . k_s = scale^2 (P1 x_t . P1 x_{s-1} + P2 x_{t-2} . P2 x_{s-3}) / sqrt(d_head)
    (P1, P2: P's two halves), so that a word matches only in its own place ("a . E is" no longer
    matches) and no cross term P x_a . P x_E weakens a fact's match; and every word's P1 x, P2 x and
    the rest of x get the same norms (their means over the vocabulary), so that every fact scores
    alike (RMSNorm then scales every token alike). `_equal_norms`, `_match_weights`. Before training,
    on each seed's own data (true depth-0 test questions, seeds 0 / 1 / 2): 0.97 / 0.97 / 0.91 of the
    attribute's attention on the fact's "." (without exact: 0.64 / 0.58 / 0.48, a reversed "a . E is" or
    an "is" after E the most frequent winners).
    found (WIRED_LOOKUP=3, with exact): the lookup also says whether it found the fact, and matches "E
    is not a" as "E is a" (`_wire_found`; `plain`: ids of PLAIN_WORDS).
    Needs 4 heads of D/4 dimensions, attention biases and 3 position heads; training may move these
    weights like any others (`wired_slices`: the ones a trainer can hold)."""
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    D, d = model.config.hidden_size, a0.head_dim
    if D != 4 * d or a0.q_proj.out_features != D or a0.k_proj.out_features != D or a0.q_proj.bias is None:
        raise ValueError("a wired lookup needs 4 heads of hidden/4 dimensions (as many key heads), with biases")
    if found and d <= 2 * pairs:
        raise ValueError(f"a found detector needs head dimensions beyond the {2 * pairs} code ones: got {d}")
    g = torch.Generator().manual_seed(seed + 7)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g))[0]  # (D, D) orthonormal columns
    B = [Q[:, i * d : (i + 1) * d] for i in range(4)]  # 4 blocks (D, d)
    with torch.no_grad():
        V = model.model.embed_tokens.weight.shape[0]
        x, P = _codes(V, d, D, pairs, emb, g, exact, plain if found else ())
        model.model.embed_tokens.weight.copy_(x @ B[0].T)
        for h in range(3):  # head h: values B0's coordinates, written into B_{h+1}
            a0.v_proj.weight[h * d : (h + 1) * d] = B[0].T
            a0.o_proj.weight[:, h * d : (h + 1) * d] = B[h + 1] * emb
        a1.q_proj.weight[:d], a1.k_proj.weight[:d] = _match_weights(P, B, scale, pairs, exact, found)
        a1.q_proj.bias[:d], a1.k_proj.bias[:d] = 0, 0
        if found:
            _wire_found(model, B, P, x.norm(dim=1).mean(), emb, g)


def _codes(V, d, D, pairs, emb, g, exact, plain):
    """(x (V, d), P (2 pairs, d)): the words' codes (the default init's norm per word) and the match
    head's projection (orthonormal rows); exact: `_equal_norms`; the words `plain` get no P2 code
    (WIRED_LOOKUP=3: the words before an entity, "the" or a statement's ".", and after it, "is")."""
    x = torch.randn(V, d, generator=g) * emb * (D / d) ** 0.5
    P = torch.linalg.qr(torch.randn(d, 2 * pairs, generator=g))[0].T
    if exact:
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


def _match_weights(P, B, scale, pairs, exact, either=False):
    """(Wq, Wk), each (d, D): the match head's query reads x_t (B0) and x_{t-2} (B2), its key x_{s-1}
    (B1) and x_{s-3} (B3), through P onto both coordinates of the slowest `pairs` rotary pairs (pair i:
    dimensions i and i + d/2); exact: the first words through P1 onto half of the pairs, the second
    words through P2 onto the other half; either: the query's second word is x_{t-2} + x_{t-3}."""
    d, D = B[0].shape[1], B[0].shape[0]
    slow = range(d // 2 - pairs, d // 2)
    Wq, Wk = torch.zeros(d, D), torch.zeros(d, D)
    if not exact:
        dims = _coordinates(slow, d)
        Wq[dims] = scale * (P @ B[0].T + P @ B[2].T)
        Wk[dims] = scale * (P @ B[1].T + P @ B[3].T)
        return Wq, Wk
    for j, part in enumerate((slow[: pairs // 2], slow[pairs // 2 :])):
        dims, Pj = _coordinates(part, d), P[j * pairs : (j + 1) * pairs]
        Bq = B[2] + B[3] if j and either else B[2 * j]
        Wq[dims], Wk[dims] = scale * Pj @ Bq.T, scale * Pj @ B[2 * j + 1].T
    return Wq, Wk


FOUND_UNITS = 32  # layer 1's MLP units 0..31: the found detector of WIRED_LOOKUP=3 (a +/- pair per code dimension)
FOUND_GAIN = 0.3  # its output column: FOUND_GAIN * a word code's norm on e (training grew 0.1 to 0.17-0.3 when free)


def _wire_found(model, B, P, norm, emb, g):
    """The match head's verdict: found or not (WIRED_LOOKUP=3). Its value is the attended key's words'
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


def wired_slices(model, found=False):
    """[(parameter, index)]: the weights `init_wired_lookup` sets (layer 0's heads 0-2: q, k, v weights
    and biases, their output columns; layer 1's head 0: q, k weights and biases; with found, also its
    v weights and biases, its output columns, layer 1's MLP units 0..FOUND_UNITS-1, the word embeddings
    (the codes) and the RMSNorm gains that scale them on the way: layer 0's, layer 1's two)."""
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    d = a0.head_dim
    out = [(p, (slice(0, 3 * d),)) for lin in (a0.q_proj, a0.k_proj, a0.v_proj) for p in (lin.weight, lin.bias)]
    out.append((a0.o_proj.weight, (slice(None), slice(0, 3 * d))))
    lins = (a1.q_proj, a1.k_proj, a1.v_proj) if found else (a1.q_proj, a1.k_proj)
    out += [(p, (slice(0, d),)) for lin in lins for p in (lin.weight, lin.bias)]
    if found:
        m1, units = model.model.layers[1].mlp, slice(0, FOUND_UNITS)
        out += [(a1.o_proj.weight, (slice(None), slice(0, d))), (m1.down_proj.weight, (slice(None), units))]
        out += [(m1.gate_proj.weight, (units,)), (m1.up_proj.weight, (units,))]
        L0, L1 = model.model.layers[:2]
        norms = (L0.input_layernorm, L1.input_layernorm, L1.post_attention_layernorm)
        out += [(p, (slice(None),)) for p in (model.model.embed_tokens.weight, *(n.weight for n in norms))]
    return out


def tiny_llama_dir(out, texts, layers=4, heads=4, kv_heads=2, hidden=64, seed=0, max_positions=4096):
    """Write a tiny random LLaMA and its word tokenizer to `<out>-<key>`; returns that folder.

    The key hashes the vocabulary and the settings, so a folder built from other data (whose
    tokenizer would map this data's words to <unk>) is never reused."""
    import hashlib

    tok = word_tokenizer(texts)
    key = hashlib.sha256(
        json.dumps([sorted(tok.get_vocab()), layers, heads, kv_heads, hidden, seed, max_positions]).encode()
    ).hexdigest()[:10]
    out = Path(f"{out}-{key}")
    if (out / "config.json").exists():
        return out
    model = llama_from_config(tok, layers, hidden, heads, kv_heads, 2 * hidden, seed, max_positions)
    tmp = out.with_name("." + out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out
