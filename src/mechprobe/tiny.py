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
    tok, layers, hidden, heads, kv_heads, intermediate, seed=0, max_positions=4096, rope_theta=10000.0, bias=False
):
    """A randomly initialised LlamaForCausalLM (eager attention) for the word tokenizer `tok`. rope_theta:
    RoPE's base, pair i of a head's dimensions turns by theta^(-2i/d_head) radians per token (larger:
    more pairs that barely turn over a prompt, where a query matches a key by content wherever it is);
    bias: the attention projections get biases."""
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
        tie_word_embeddings=False,
        attention_bias=bias,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
    )
    return LlamaForCausalLM._from_config(cfg, attn_implementation="eager")


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
