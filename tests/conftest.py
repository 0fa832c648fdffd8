import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts):
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is optional)")
    return p


def tiny_gpt2(vocab_size=40, n_layer=2, n_head=2, n_embd=16, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()


def tiny_llama(vocab_size=64, layers=2, heads=4, kv_heads=2, hidden=32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()


@pytest.fixture
def gpt2_tiny():
    return tiny_gpt2()


@pytest.fixture
def llama_tiny():
    return tiny_llama()


def tiny_decoder(kind, seed=0, sharpen=1.0):
    """Tiny eager decoders of the architectures the capture covers: llama (GQA), mistral (sliding
    window of 4, shorter than the test prompts), qwen2, gpt_oss (attention sinks, set non-zero).
    sharpen scales the query and key weights (logits by sharpen^2) so that attention is far from uniform."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    cfg, cls = {
        "llama": (tf.LlamaConfig(**common), tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(**common, sliding_window=4), tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config(**common), tf.Qwen2ForCausalLM),
        "gpt_oss": (
            tf.GptOssConfig(
                **{**common, "intermediate_size": 32},
                head_dim=8,
                num_local_experts=4,
                num_experts_per_tok=2,
                sliding_window=4,
            ),
            tf.GptOssForCausalLM,
        ),
    }[kind]
    model = cls._from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(sharpen)
            if name.endswith("sinks"):
                p.copy_(torch.randn_like(p) * 2)
    return model
