import math

import pytest
import torch

from mechprobe import ksmallest as ks
from mechprobe.features import normalized_entropy, statement_entropy
from mechprobe.ksmallest import head_entropy, placed_lists, rank_order
from mechprobe.masking import mask_heads
from mechprobe.utils import MechprobeError

from .conftest import tiny_gpt2, tiny_llama


def test_entropy_hand_computed():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [1.0, 0, 0, 0]])
    e = normalized_entropy(p)
    torch.testing.assert_close(e, torch.tensor([math.log(2) / math.log(4), 1.0, 0.0]), atol=1e-6, rtol=0)


def test_statement_entropy_hand_computed():
    import numpy as np

    f1 = np.zeros((2, 1, 2))  # two statements, one layer, two heads
    f1[:, 0, 0] = [0.3, 0.3]  # head 0: equal mass on both -> 1
    f1[:, 0, 1] = [0.6, 0.0]  # head 1: all on one -> 0
    f2 = np.zeros((4, 1, 2))
    f2[:, 0, 0] = [0.1, 0.1, 0.1, 0.1]  # uniform -> 1
    f2[:, 0, 1] = [0.2, 0.2, 0.0, 0.0]  # two of four -> log 2 / log 4 = 0.5
    one = np.ones((1, 1, 2))  # a single statement: left out
    e = statement_entropy([f1, f2, one])
    np.testing.assert_allclose(e, [[1.0, 0.25]], atol=1e-9)


def test_rank_vs_position_entropy():
    # two lists; the head always looks at the smallest number, which sits at different positions
    recs = [ks.make_record([5, 1, 9, 7], 1), ks.make_record([2, 8, 6, 9], 1)]
    rows = torch.zeros(2, 1, 1, 4)
    rows[0, 0, 0, 1] = 1.0
    rows[1, 0, 0, 0] = 1.0
    torch.testing.assert_close(rank_order(rows, recs)[:, 0, 0, 0], torch.ones(2))
    e = head_entropy(rows, recs)
    assert e["rank"][0, 0] == pytest.approx(0.0, abs=1e-6)
    assert e["position"][0, 0] == pytest.approx(0.5, abs=1e-6)  # mean is (.5, .5, 0, 0): log2/log4
    assert e["per_list"][0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_head_masking(make):
    model = make()
    ids = torch.randint(3, 30, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with mask_heads(model, {}):
            same = model(input_ids=ids).logits
        torch.testing.assert_close(same, base, atol=0, rtol=0)
        H = model.config.num_attention_heads
        with mask_heads(model, {0: list(range(H))}):
            changed = model(input_ids=ids).logits
        assert (changed - base).abs().max() > 1e-4
        assert all(not m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_masking_one_head_changes_only_its_slice():
    """Masking head 1 of a layer zeroes exactly its slice of the output-projection input, and the
    projection's output is then W_O applied to the concatenation with that slice zeroed."""
    model = tiny_gpt2(n_layer=1, n_head=2, n_embd=16)
    ids = torch.randint(3, 30, (1, 6), generator=torch.Generator().manual_seed(2))
    seen = {}
    proj = model.transformer.h[0].attn.c_proj
    proj.register_forward_hook(lambda m, a, o: seen.update(x=a[0].clone(), y=o.clone()))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        x0 = seen["x"]
        with mask_heads(model, [(0, 1)]):
            masked = model(input_ids=ids).logits
        x1, y1 = seen["x"], seen["y"]
        z = x0.clone()
        z[..., 8:] = 0
        expected = proj(z)
    torch.testing.assert_close(x1[..., :8], x0[..., :8], atol=0, rtol=0)  # head 0 untouched
    assert x1[..., 8:].abs().sum() == 0  # head 1 zeroed
    torch.testing.assert_close(y1, expected)
    assert (masked - base).abs().max() > 1e-5


def test_masking_bad_head_errors():
    model = tiny_gpt2()
    with pytest.raises(MechprobeError, match="heads \\[5\\] do not exist"):
        with mask_heads(model, {0: [5]}):
            pass


def test_placed_lists():
    recs = placed_lists(list(range(100)), 16, 1, [3, 10], 5, seed=0)
    for r in recs:
        assert r["step"][3] == 0 and r["step"][10] == 1
    with pytest.raises(MechprobeError, match="expected 2 distinct positions"):
        placed_lists(list(range(100)), 16, 1, [3], 5, 0)


def test_masking_one_head_on_a_gqa_model():
    """LLaMA with 4 query heads sharing 2 key/value heads: masking query head 2 zeroes exactly its
    slice (head_dim 8) of o_proj's input; the others are untouched."""
    model = tiny_llama(layers=1, heads=4, kv_heads=2, hidden=32)
    ids = torch.randint(3, 30, (1, 6), generator=torch.Generator().manual_seed(3))
    seen = {}
    model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.update(x=a[0].clone()))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        x0 = seen["x"]
        with mask_heads(model, [(0, 2)]):
            masked = model(input_ids=ids).logits
    x1 = seen["x"]
    assert x1[..., 16:24].abs().sum() == 0
    torch.testing.assert_close(x1[..., :16], x0[..., :16], atol=0, rtol=0)
    torch.testing.assert_close(x1[..., 24:], x0[..., 24:], atol=0, rtol=0)
    assert (masked - base).abs().max() > 1e-5
