"""Shared prefixes (prefix.py): prompts run on a cache of their common first tokens give the same
attention rows, answer scores and knockout scores as full passes."""

import numpy as np
import pytest
import torch

from mechprobe import prefix
from mechprobe.capture import capture, pad_batch, pad_queries
from mechprobe.incontext import run_items
from mechprobe.knockout import knockout_scores

from .conftest import tiny_decoder, tiny_gpt2


def prompts(rng, n=7, P=40, V=40):
    """n prompts sharing their first P tokens, each with its own tail of 12-25 tokens, three
    statements in the tail (and one in the prefix) and the last four tokens as the question."""
    head = rng.integers(1, V, P).tolist()
    enc = []
    for _ in range(n):
        tail = rng.integers(1, V, int(rng.integers(12, 26))).tolist()
        ids = head + tail
        T = len(ids)
        enc.append(
            {
                "ids": ids,
                "spans": [(3, 9), (P, P + 3), (P + 3, P + 7), (P + 7, T - 4)],
                "query": list(range(T - 4, T)),
            }
        )
    return enc


def test_group_finds_the_shared_prefix_and_keeps_queries_after_it():
    seqs = [[1] * 40 + [2, 3], [1] * 40 + [4], [1] * 39 + [5, 6, 7], [9] * 50, [7, 7]]
    groups = prefix.group(seqs, [41, 40, 39, 49, 1])
    assert groups[0] == prefix.Group(39, [0, 1, 2])  # the common prefix is 39 tokens
    assert groups[-1] == prefix.Group(0, [3, 4])  # alone or too short: run whole, together
    capped = prefix.group(seqs[:2], [35, 40])
    assert capped[0].prefix == 35  # a query at 35 must run
    demo = list(range(100, 400))  # ten prompts after the same 300 tokens, one whose demonstrations differ at 200
    odd = demo[:200] + [5] * 120
    many = [demo + [i, i + 1, i + 2] for i in range(10)] + [odd]
    assert prefix.group(many, [len(s) - 2 for s in many]) == [prefix.Group(300, list(range(10))), prefix.Group(0, [10])]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_rows_and_scores_on_a_prefix_equal_full_passes(kind):
    model = tiny_decoder("llama", sharpen=3.0) if kind == "llama" else tiny_gpt2(vocab_size=64)
    enc = prompts(np.random.default_rng(0))
    words = [5, 6, 7]
    assert prefix.group([e["ids"] for e in enc], [e["query"][0] for e in enc])[0].prefix >= 40
    for per_head in (False, True):
        f0, s0 = run_items(model, enc, words, batch_size=3, per_head=per_head, share_prefix=False)
        f1, s1 = run_items(model, enc, words, batch_size=3, per_head=per_head, share_prefix=True)
        np.testing.assert_allclose(s1, s0, atol=1e-4, rtol=1e-4)
        for a, b in zip(f1, f0):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # the rows themselves, over every key of the prompt (prefix keys included)
    pkv = prefix.PrefixKV(model, enc[0]["ids"][:40])
    ids, mask = pad_batch([e["ids"] for e in enc], 0)
    full = capture(model, ids, mask, pad_queries([e["query"] for e in enc])).rows
    sids, smask = pad_batch([e["ids"][40:] for e in enc], 0)
    part = capture(model, sids, smask, pad_queries([[q - 40 for q in e["query"]] for e in enc]), prefix=pkv).rows
    for b, e in enumerate(enc):
        T = len(e["ids"])
        torch.testing.assert_close(part[b, ..., :T], full[b, ..., :T], atol=1e-5, rtol=1e-4)


def test_knockout_on_a_prefix_equals_full_passes(monkeypatch):
    model = tiny_decoder("llama", sharpen=3.0)
    enc = prompts(np.random.default_rng(1))
    ps = [{"ids": e["ids"], "spans": e["spans"], "queries": e["query"]} for e in enc]
    knocked = [[0, 2], [1], [0, 1, 2], [3], [2], [1, 3], [0]]  # statement 0 lies in the shared prefix
    got = knockout_scores(model, ps, knocked, [0, 1], scored=[5, 6, 7], batch_size=3)
    base = knockout_scores(model, ps, knocked, None, scored=[5, 6, 7], batch_size=3)
    monkeypatch.setattr(prefix, "supported", lambda m: False)
    ref = knockout_scores(model, ps, knocked, [0, 1], scored=[5, 6, 7], batch_size=3)
    ref_base = knockout_scores(model, ps, knocked, None, scored=[5, 6, 7], batch_size=3)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(base, ref_base, atol=1e-4, rtol=1e-4)
    assert (got - base).abs().max() > 1e-3  # the knockout did something


def test_sliding_window_models_run_whole():
    assert not prefix.supported(tiny_decoder("mistral"))
    assert prefix.supported(tiny_decoder("llama"))


def test_a_prefix_is_recomputed_under_other_hooks():
    """Masked heads change the prefix's keys and values: the kept prefix is not reused under them."""
    from mechprobe.masking import mask_heads

    model = tiny_decoder("llama", sharpen=3.0)
    enc = prompts(np.random.default_rng(2), n=4)
    _, plain = run_items(model, enc, [5, 6], batch_size=2)
    with mask_heads(model, [(0, 1), (1, 2)]):
        _, masked = run_items(model, enc, [5, 6], batch_size=2)
        _, masked_whole = run_items(model, enc, [5, 6], batch_size=2, share_prefix=False)
    _, again = run_items(model, enc, [5, 6], batch_size=2)
    np.testing.assert_allclose(masked, masked_whole, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(again, plain, atol=1e-5)
    assert np.abs(masked - plain).max() > 1e-3
