"""Attention knockout: nothing knocked changes nothing; a knocked key gets zero weight and the rest
of its row renormalises; the rows and hook methods agree; the study's conditions and margins."""

import numpy as np
import pytest
import torch

from mechprobe.capture import capture, pad_batch
from mechprobe.knockout import conditions, knockout, knockout_scores, knockout_study, layer_windows, margins
from mechprobe.utils import MechprobeError

from .conftest import tiny_decoder, tiny_gpt2, tiny_llama

MAKERS = {
    "gpt2": lambda: tiny_gpt2(),
    "llama_gqa": lambda: tiny_llama(),
    "llama_sharp": lambda: tiny_decoder("llama", sharpen=8.0),
}


def batch():
    """Two right-padded prompts; queries: the last two real tokens of each."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, 40, (n,), generator=g).tolist() for n in (9, 7)]
    ids, mask = pad_batch(seqs, 0)
    qp = torch.tensor([[7, 8], [5, 6]])
    qm = torch.zeros_like(ids, dtype=torch.bool)
    qm[0, [7, 8]] = True
    qm[1, [5, 6]] = True
    km = torch.zeros_like(qm)
    km[0, 2:4] = True  # a two-token statement
    km[1, [1, 4]] = True
    return ids, mask, qp, qm, km


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_knocking_out_nothing_gives_identical_logits(kind):
    model = MAKERS[kind]()
    ids, mask, qp, qm, km = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with knockout(model, qm, torch.zeros_like(km)):
            got = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ref, got)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("method", ["rows", "hooks"])
def test_knocked_key_gets_zero_weight_and_the_row_renormalises(kind, method):
    model = MAKERS[kind]()
    ids, mask, qp, qm, km = batch()
    base = capture(model, ids, mask, qp, method=method).rows  # (B, L, H, Q, T)
    with knockout(model, qm, km, layers=[0, 1]):
        ko, ko_logits = capture(model, ids, mask, qp, return_logits=True, method=method)
    kq = km[:, None, None, None, :].expand_as(ko)
    assert ko[kq].abs().max() == 0  # knocked keys: zero weight in every knocked layer
    assert base[kq].min() > 0  # they had weight before
    torch.testing.assert_close(ko.sum(-1), base.sum(-1))  # rows still sum to one (or zero for no query)
    # layer 0 sees the same hidden states: its row is the unknocked row renormalised over the rest
    b0 = base[:, 0]
    expect = b0.masked_fill(km[:, None, None, :], 0)
    expect = expect / expect.sum(-1, keepdim=True)
    torch.testing.assert_close(ko[:, 0], expect, atol=1e-5, rtol=1e-4)
    plain = capture(model, ids, mask, qp, return_logits=True, method=method).logits
    assert (plain - ko_logits).abs().max() > 1e-4  # and the answer moved


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_rows_and_hooks_methods_agree_under_knockout(kind):
    model = MAKERS[kind]()
    ids, mask, qp, qm, km = batch()
    with knockout(model, qm, km, layers=[1]):
        r = capture(model, ids, mask, qp, return_logits=True, method="rows")
        h = capture(model, ids, mask, qp, return_logits=True, method="hooks")
    torch.testing.assert_close(r.rows, h.rows, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(r.logits, h.logits, atol=1e-4, rtol=1e-4)
    # only the window is knocked: layer 0 is untouched
    base = capture(model, ids, mask, qp, method="rows").rows
    torch.testing.assert_close(r.rows[:, 0], base[:, 0])


def test_hooks_removed_and_bad_requests_refused():
    model = tiny_gpt2()
    ids, mask, qp, qm, km = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with knockout(model, qm, km):
            pass
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)
    everything = torch.ones_like(km)
    with pytest.raises(MechprobeError, match="block every key of query position 7 in prompt 0"):
        with knockout(model, qm, everything):
            pass
    with pytest.raises(MechprobeError, match=r"layers \[5\] do not exist \(the model has 2 layers\)"):
        with knockout(model, qm, km, layers=[5]):
            pass
    with pytest.raises(MechprobeError, match="set for 2 prompts of 9 tokens"):
        with knockout(model, qm, km), torch.no_grad():
            model(input_ids=ids[:, :5])


def test_margins_by_hand():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    assert margins(z, torch.tensor([1, 2])).tolist() == [1.0, -5.0]  # 3 - 2; 0 - 5


def test_conditions_draw_as_many_not_useful_statements():
    useful = [np.array([1, 0, 0, 1, 0]), np.array([1, 1, 1, 0])]
    predicted = [np.array([1, 0, 0, 0, 0]), np.array([0, 1, 1, 1])]
    c = conditions(useful, predicted, seeds=[0, 1])
    assert c["nothing"] == [[], []]
    assert c["gold useful"] == [[0, 3], [0, 1, 2]]
    assert c["probe-predicted useful"] == [[0], [1, 2, 3]]
    for s in (0, 1):
        draw = c[f"random not useful (seed {s})"]
        assert len(draw[0]) == 2 and set(draw[0]) <= {1, 2, 4}
        assert draw[1] == [3]  # fewer not-useful than useful: all of them
    assert layer_windows(4) == [[0, 1, 2, 3], [1, 2, 3], [2, 3], [3]]
    assert [w[0] for w in layer_windows(32)] == [0, 4, 8, 12, 16, 20, 24, 28]


def copy_model():
    """A one-layer attention-only LLaMA built by hand: the last token (15) attends to the one "small"
    token (1..6) of the prompt and copies it to the output; the "large" tokens (9..14) are distractors.
    RoPE is made negligible (rope_theta 1e12) so that the match does not depend on the distance."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        rope_theta=1e12,
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    small = torch.zeros(16)
    small[1:7] = 1
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(16) * 4)
        att = model.model.layers[0].self_attn
        q = torch.zeros(16, 16)
        q[:, 15] = small * 3  # token 15 queries every small token
        att.q_proj.weight.copy_(q)
        att.k_proj.weight.copy_(torch.eye(16) * 3)
        att.v_proj.weight.copy_(torch.eye(16))
        att.o_proj.weight.copy_(torch.eye(16) * 50)
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(torch.eye(16))
    return model


def copy_prompts(rng, n):
    """n prompts for copy_model: six one-token statements, one of them the "small" token (the useful
    statement, whose value is the gold answer), then the query token 15."""
    prompts, gold, useful = [], [], []
    for _ in range(n):
        toks = rng.choice(np.arange(9, 15), size=6, replace=False)
        at = int(rng.integers(6))
        toks[at] = rng.integers(1, 7)
        prompts.append({"ids": toks.tolist() + [15], "spans": [(i, i + 1) for i in range(6)], "queries": [6]})
        gold.append(int(toks[at]))
        useful.append(np.eye(6, dtype=int)[at])
    return prompts, gold, useful


def test_study_nothing_is_the_baseline_and_knocking_the_copied_token_hurts():
    model = copy_model()
    prompts, gold, useful = copy_prompts(np.random.default_rng(0), 12)
    conds = conditions(useful, useful, seeds=[0, 1])
    res = knockout_study(model, prompts, gold, conds, layer_windows(1))
    c = res["conditions"]
    assert res["base"]["accuracy"] == 1.0
    assert c["nothing"]["changed"] == [0.0] and c["nothing"]["margin_drop"] == [0.0]
    assert c["nothing"]["accuracy"] == [1.0]
    assert c["gold useful"]["accuracy"] == [0.0] and c["gold useful"]["changed"] == [1.0]
    assert c["gold useful"]["margin_drop"][0] > 3
    assert res["random not useful"]["changed"]["mean"] == [0.0]
    assert abs(res["random not useful"]["margin_drop"]["mean"][0]) < c["gold useful"]["margin_drop"][0] / 10
    z = knockout_scores(model, prompts, conds["gold useful"], [0], scored=list(range(1, 7)))
    assert z.shape == (12, 6)


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa"])
def test_sdpa_without_padding_knocks_out_the_same(kind):
    """SDPA may get no mask at all (causal shortcut): the knockout builds the causal mask itself."""
    model = MAKERS[kind]()
    ids, mask, qp, qm, km = batch()
    ids, mask, qm, km = ids[:1], mask[:1], qm[:1], km[:1]  # the unpadded prompt
    with torch.no_grad(), knockout(model, qm, km):
        eager = model(input_ids=ids).logits
    model.set_attn_implementation("sdpa")
    with torch.no_grad(), knockout(model, qm, km):
        sdpa = model(input_ids=ids).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-4)


def test_a_prompt_whose_every_key_would_be_knocked_is_left_out():
    model = copy_model()
    prompts = [
        {"ids": [9, 3, 10, 15], "spans": [(0, 1), (1, 2), (2, 3), (3, 4)], "queries": [3]},
        {"ids": [9, 3, 10, 15], "spans": [(0, 1), (1, 2), (2, 3), (3, 4)], "queries": [3]},
    ]
    conds = {"nothing": [[], []], "everything": [[0, 1, 2, 3], [1]]}
    res = knockout_study(model, prompts, [3, 3], conds, layer_windows(1))
    every = res["conditions"]["everything"]
    assert every["skipped_prompts"] == [1]  # the first prompt: its query would see no key
    assert every["accuracy"] == [0.0] and every["changed"] == [1.0]  # the second alone: the small 3 knocked
    z = knockout_scores(model, prompts, conds["everything"], [0])
    assert torch.isnan(z[0]).all() and not torch.isnan(z[1]).any()


def test_free_text_answer_logprob_by_hand():
    """scored="answer": the mean log-probability of the answer tokens, by hand, with and without knockout."""
    model = tiny_llama()
    prompts = [
        {"ids": [5, 6, 7, 8, 9, 10, 11], "spans": [(0, 2), (2, 4)], "queries": [4, 5, 6], "target": (5, 7)},
        {"ids": [12, 13, 14, 15, 16], "spans": [(0, 1), (1, 3)], "queries": [3, 4], "target": (4, 5)},
    ]
    z = knockout_scores(model, prompts, [[], []], None, scored="answer")
    with torch.no_grad():
        for i, p in enumerate(prompts):
            lp = model(input_ids=torch.tensor([p["ids"]])).logits[0].log_softmax(-1)
            a, b = p["target"]
            expect = torch.stack([lp[t - 1, p["ids"][t]] for t in range(a, b)]).mean()
            assert z[i, 0].item() == pytest.approx(expect.item(), abs=1e-5)
    conds = {"nothing": [[], []], "first": [[0], [0]]}
    res = knockout_study(model, prompts, None, conds, layer_windows(2), scored="answer")
    assert res["metrics"] == ["logprob_drop"] and res["conditions"]["nothing"]["logprob_drop"] == [0.0, 0.0]
    zk = knockout_scores(model, prompts, conds["first"], [0, 1], scored="answer")
    assert res["conditions"]["first"]["logprob_drop"][0] == pytest.approx(float((z - zk).mean()), abs=1e-6)


def test_cached_passes_rerun_only_the_prompts_whose_knocked_statements_changed(tmp_path, monkeypatch):
    """The knockout store keeps one row per prompt and knocked set: a second study whose predicted
    condition differs in two prompts runs exactly those, and every row equals an uncached pass."""
    from mechprobe.cache import FeatureCache, model_fingerprint

    model = copy_model()
    prompts, gold, useful = copy_prompts(np.random.default_rng(3), 10)
    cache = FeatureCache(tmp_path)
    scored = list(range(1, 7))
    first = knockout_study(model, prompts, gold, conditions(useful, useful, [0]), [[0]], scored=scored, cache=cache)
    assert len(list(tmp_path.glob("ko-*.safetensors"))) == 2  # one store per layer set: unablated, window 0
    pred = [u.copy() for u in useful]
    pred[2], pred[7] = np.roll(pred[2], 1), np.roll(pred[7], 1)  # the probe now predicts another statement
    calls = []
    forward = type(model).forward

    def counted(self, *a, **k):
        calls.append(len(k["input_ids"] if "input_ids" in k else a[0]))
        return forward(self, *a, **k)

    monkeypatch.setattr(type(model), "forward", counted)
    second = knockout_study(model, prompts, gold, conditions(useful, pred, [0]), [[0]], scored=scored, cache=cache)
    assert calls == [2]  # one forward over the two changed prompts
    assert second["conditions"]["gold useful"] == first["conditions"]["gold useful"]
    monkeypatch.undo()
    again = knockout_scores(model, prompts, [np.flatnonzero(p).tolist() for p in pred], [0], scored=scored)  # uncached
    knocked = [np.flatnonzero(p).tolist() for p in pred]
    stats = {}
    cached = knockout_scores(
        model, prompts, knocked, [0], scored, cache=cache, model_id=model_fingerprint(model), stats=stats
    )
    assert stats == {"run": 0, "asked": 10}
    torch.testing.assert_close(cached, again)
