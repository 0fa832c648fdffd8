"""Tiny local models for CPU runs and tests: a random LLaMA-architecture model with a
word-level tokenizer built from the texts it will read (saved with save_pretrained, so
`load_model(dir)` / `AutoTokenizer.from_pretrained(dir)` treat it like any real model)."""

import json
import re
from pathlib import Path

import torch

_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokenizer(texts, extra=("True", "False", "Unknown")):
    """Word-level tokenizer (words and punctuation marks) over the vocabulary of `texts`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in _WORD.findall(t)} | set(extra))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
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
    exact one (`init_wired_lookup(exact=True)`)."""
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
        init_wired_lookup(model, seed, exact=wired_lookup == 2)
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


def init_wired_lookup(model, seed=0, scale=WIRED_SCALE, pairs=WIRED_PAIRS, emb=0.02, exact=False):
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
    (in either order: "a . E is" elsewhere matches too). Before training the head puts 0.64 of a true
    depth-0 question's attribute's attention on the fact's "." (default data, test split; 0.50-0.71
    per group; uniform: 0.018).
    exact (WIRED_LOOKUP=2): each word is matched on its own half of the pairs,
        q_t . k_s = scale^2 (P1 x_t . P1 x_{s-1} + P2 x_{t-2} . P2 x_{s-3}) / sqrt(d_head)
    (P1, P2: P's two halves), so that a word matches only in its own place ("a . E is" no longer
    matches) and no cross term P x_a . P x_E weakens a fact's match; and every word's P1 x, P2 x and
    the rest of x get the same norms (their means over the vocabulary), so that every fact scores
    alike (RMSNorm then scales every token alike). `_equal_norms`, `_match_weights`. Before training,
    on each seed's own data (true depth-0 test questions, seeds 0 / 1 / 2): 0.97 / 0.97 / 0.91 of the
    attribute's attention on the fact's "." (without exact: 0.64 / 0.58 / 0.48, a reversed "a . E is" or
    an "is" after E the most frequent winners).
    Needs 4 heads of D/4 dimensions, attention biases and 3 position heads; training may move these
    weights like any others (`wired_slices`: the ones a trainer can hold)."""
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    D, d = model.config.hidden_size, a0.head_dim
    if D != 4 * d or a0.q_proj.out_features != D or a0.k_proj.out_features != D or a0.q_proj.bias is None:
        raise ValueError("a wired lookup needs 4 heads of hidden/4 dimensions (as many key heads), with biases")
    g = torch.Generator().manual_seed(seed + 7)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g))[0]  # (D, D) orthonormal columns
    B = [Q[:, i * d : (i + 1) * d] for i in range(4)]  # 4 blocks (D, d)
    with torch.no_grad():
        V = model.model.embed_tokens.weight.shape[0]
        x = torch.randn(V, d, generator=g) * emb * (D / d) ** 0.5  # (V, d): the default init's norm per token
        P = torch.linalg.qr(torch.randn(d, 2 * pairs, generator=g))[0].T  # (2 pairs, d) orthonormal rows
        if exact:
            x = _equal_norms(x, P, pairs)
        model.model.embed_tokens.weight.copy_(x @ B[0].T)
        for h in range(3):  # head h: values B0's coordinates, written into B_{h+1}
            a0.v_proj.weight[h * d : (h + 1) * d] = B[0].T
            a0.o_proj.weight[:, h * d : (h + 1) * d] = B[h + 1] * emb
        a1.q_proj.weight[:d], a1.k_proj.weight[:d] = _match_weights(P, B, scale, pairs, exact)
        a1.q_proj.bias[:d], a1.k_proj.bias[:d] = 0, 0


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


def _match_weights(P, B, scale, pairs, exact):
    """(Wq, Wk), each (d, D): the match head's query reads x_t (B0) and x_{t-2} (B2), its key x_{s-1}
    (B1) and x_{s-3} (B3), through P onto both coordinates of the slowest `pairs` rotary pairs (pair i:
    dimensions i and i + d/2); exact: the first words through P1 onto half of the pairs, the second
    words through P2 onto the other half."""
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
        Wq[dims], Wk[dims] = scale * Pj @ B[2 * j].T, scale * Pj @ B[2 * j + 1].T
    return Wq, Wk


def _coordinates(pairs, d):
    """Both coordinates of each rotary pair in `pairs` (HF's rotate_half pairs dimension i with i + d/2)."""
    return [i + o for o in (0, d // 2) for i in pairs]


def wired_slices(model):
    """[(parameter, index)]: the weights `init_wired_lookup` sets (layer 0's heads 0-2: q, k, v weights
    and biases, their output columns; layer 1's head 0: q, k weights and biases)."""
    a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    d = a0.head_dim
    out = [(p, (slice(0, 3 * d),)) for lin in (a0.q_proj, a0.k_proj, a0.v_proj) for p in (lin.weight, lin.bias)]
    out.append((a0.o_proj.weight, (slice(None), slice(0, 3 * d))))
    return out + [(p, (slice(0, d),)) for lin in (a1.q_proj, a1.k_proj) for p in (lin.weight, lin.bias)]


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
