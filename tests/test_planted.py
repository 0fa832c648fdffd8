"""Planted signals through the whole path (capture -> features -> probe): scores that must come out."""

import numpy as np
import pytest
import torch

from mechprobe import finetune_gpt2, probing_gpt2
from mechprobe import ksmallest as ks
from mechprobe.models import random_control
from mechprobe.probing import ProbeData, curve_f1, run_probe

from .conftest import tiny_gpt2

N_TOK = 40
MARKED = set(range(4, 12))  # "useful" token ids: the planted model attends to them


def planted_gpt2(n_head=1):
    """One layer, one head, whose last token attends (almost) only to the MARKED tokens.

    Token embeddings are +v for marked tokens and -v for the others, v = e1 - e2 (mean zero, so
    layer norm keeps its direction; no position embeddings); every query is 10 e0 (bias) and the
    key is 10 * x[1], so a marked key scores about 2 * 2.8 * 10 * 10 / 4 = 140 above the others."""
    m = tiny_gpt2(vocab_size=N_TOK, n_layer=1, n_head=n_head, n_embd=16)
    E = 16
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        v = torch.zeros(E)
        v[1], v[2] = 1.0, -1.0
        for t in range(N_TOK):
            m.transformer.wte.weight[t] = v if t in MARKED else -v
        blk = m.transformer.h[0]
        blk.ln_1.weight.fill_(1.0)
        blk.attn.c_attn.bias[0] = 10.0  # query = 10 e0
        blk.attn.c_attn.weight[1, E + 0] = 10.0  # key[0] = 10 x[1]
        m.transformer.ln_f.weight.fill_(1.0)
    return m


def planted_lists(n=300, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = torch.as_tensor(rng.integers(0, N_TOK, (n, length)))
    useful = [[int(t) in MARKED for t in row] for row in ids]
    return ids, useful


def test_planted_attention_gives_perfect_p1_and_chance_where_it_carries_nothing():
    model = planted_gpt2()
    ids, useful = planted_lists()
    rows, _ = ks.last_token_attention(model, ids)
    useful_t = torch.tensor(useful, dtype=torch.float)
    share = (rows[:, 0, 0] * useful_t).sum(-1) / useful_t.sum(-1).clamp(min=1)
    assert (share[useful_t.sum(-1) > 0] > 0.05).all()  # the attention went where planted
    feats = ks.features_from_rows(rows, normalize="none")
    steps = [[0 if u else -1 for u in row] for row in useful]
    data = ProbeData(feats, useful, steps)
    assert curve_f1(data.X, data.useful, data.group)["all"] == 1.0
    # three classes: 0 unmarked (the attention tells it apart: F1 1), 1 / 2 marked in the first /
    # second half of the list (the planted attention has no position: the kNN guesses, so each
    # class scores about its share q_c of the marked tokens). Expected macro F1 = (1 + q_1 + q_2) / 3.
    # (A jitter of 1e-4 breaks the exact ties of the planted values.)
    rng = np.random.default_rng(1)
    T = ids.shape[1]
    pos = np.concatenate([np.arange(T)] * len(ids))
    y3 = np.where(data.useful == 0, 0, np.where(pos < T // 2, 1, 2))
    q = [np.mean(y3[y3 > 0] == c) for c in (1, 2)]
    expected = (1 + q[0] + q[1]) / 3
    got = curve_f1(data.X + 1e-4 * rng.standard_normal(data.X.shape), y3, data.group)["all"]
    assert abs(got - expected) < 0.04 and expected < 0.7
    # against random-init controls of the same architecture: S_P1 close to 1
    ctl = []
    for s in (0, 1):
        r, _ = ks.last_token_attention(random_control(model, seed=s), ids)
        ctl.append(ProbeData(ks.features_from_rows(r, normalize="none"), useful, steps))
    res = run_probe(data, ctl, [0, 1])
    assert res["s_p1"]["mean"] > 0.9


def test_model_against_itself_scores_zero_and_against_another_random_init_near_zero():
    model = tiny_gpt2(vocab_size=N_TOK, n_layer=2, n_head=2, n_embd=16, seed=3)
    ids, useful = planted_lists(n=400, seed=2)
    steps = [[0 if u else -1 for u in row] for row in useful]

    def data_of(m):
        r, _ = ks.last_token_attention(m, ids)
        return ProbeData(ks.features_from_rows(r), useful, steps)

    d = data_of(model)
    same = run_probe(d, [data_of(model), data_of(model)], [0, 1])
    assert same["s_p1"]["per_seed"] == [0.0, 0.0]
    other = run_probe(d, [data_of(random_control(model, seed=s)) for s in (5, 6)], [0, 1])
    assert abs(other["s_p1"]["mean"]) < 0.05


def test_trained_default_gpt2_small_finds_the_tree(tmp_path):
    """The default architecture, smaller and briefly trained (300 steps, about 5 s): S_P1 > 0.3."""
    finetune_gpt2.main(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "--out-dir",
            str(tmp_path / "run"),
            "--n-layer",
            "2",
            "--n-head",
            "2",
            "--n-embd",
            "32",
            "--vocab-size",
            "32",
            "--length",
            "8",
            "--sizes",
            "4000",
            "200",
            "200",
            "--batch-size",
            "64",
            "--warmup",
            "20",
            "--lr",
            "3e-3",
            "--max-steps",
            "300",
            "--eval-every",
            "100",
            "--target-acc",
            "0",
            "--threads",
            "2",
        ]
    )
    res = probing_gpt2.main(
        [
            "--models",
            str(tmp_path / "run" / "best"),
            "--data-dirs",
            str(tmp_path / "data"),
            "--out-dir",
            str(tmp_path / "p"),
            "--n-examples",
            "200",
            "--seeds",
            "0",
            "1",
        ]
    )[0]
    assert res["accuracy"] > 0.6
    assert res["s_p1"]["mean"] > 0.3 and res["s_p2"]["mean"] > 0.3
    for i in range(2):  # every seed's score is the formula applied to that seed's F1s
        fm, fc = res["f1_p1"]["per_seed"][i], res["control_f1_p1"]["per_seed"][i]
        assert res["s_p1"]["per_seed"][i] == pytest.approx((fm - fc) / (1 - fc))


def test_head_map_finds_the_planted_head():
    """Two heads: head 0 is the planted one (query 10 e0 in its dimensions), head 1 has a zero query and
    attends uniformly. The per-head map gives head 0 S_P1 near 1 and head 1 about 0, and ranks head 0 first."""
    from mechprobe.probing import head_map

    model = planted_gpt2(n_head=2)
    ids, useful = planted_lists()
    steps = [[0 if u else -1 for u in row] for row in useful]
    rng = np.random.default_rng(0)

    def heads_of(m):
        rows, _ = ks.last_token_attention(m, ids)
        feats = [f + 1e-4 * rng.standard_normal(f.shape) for f in ks.features_from_rows(rows, "none", per_head=True)]
        return ProbeData(feats, useful, steps)

    hm = head_map(heads_of(model), [heads_of(random_control(model, seed=s)) for s in (0, 1)], [0, 1])
    assert hm["s_p1"][0][0] > 0.9 and abs(hm["s_p1"][0][1]) < 0.1
    assert hm["top_p1"][0][:2] == [0, 0]
    assert hm["s_p2"][0][0] is None  # every useful token is step 0: P2 undefined
