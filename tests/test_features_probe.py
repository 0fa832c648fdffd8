import numpy as np
import pytest
import torch

from mechprobe.features import statement_features, token_spans
from mechprobe.probing import ProbeData, group_folds, knn_f1, run_probe, score
from mechprobe.utils import MechprobeError


def test_token_spans_from_offsets():
    #          "ab cd ef": tokens "ab" (0,2) " cd" (2,5) " ef" (5,8), plus a special (0,0)
    offsets = [(0, 0), (0, 2), (2, 5), (5, 8)]
    assert token_spans(offsets, [(0, 2), (3, 8)]) == [(1, 2), (2, 4)]
    with pytest.raises(MechprobeError, match="statement 0 .*maps to no token"):
        token_spans([(0, 0), (0, 2)], [(5, 6)], text="ab    x")


def test_token_spans_binary_search_equals_the_scan():
    """The binary search over ordered offsets gives the spans of the definition (tokens with s < b and e > a),
    on random tokenisations with special tokens (0, 0) anywhere, and names a span split by one."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        cuts = np.sort(rng.choice(np.arange(1, 200), rng.integers(2, 40), replace=False)).tolist()
        offsets = [(a, b) for a, b in zip([0] + cuts, cuts)]
        for _ in range(rng.integers(0, 3)):
            offsets.insert(int(rng.integers(0, len(offsets) + 1)), (0, 0))
        a = int(rng.integers(0, cuts[-1] - 1))
        b = int(rng.integers(a + 1, cuts[-1] + 1))
        ref = [t for t, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        if ref == list(range(ref[0], ref[-1] + 1)):
            assert token_spans(offsets, [(a, b)]) == [(ref[0], ref[-1] + 1)]
        else:
            with pytest.raises(MechprobeError, match="non-contiguous tokens"):
                token_spans(offsets, [(a, b)])


def test_statement_features_hand_computed():
    # L=1, H=2, Q=2, T=4
    rows = torch.tensor([[[[0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0]], [[0.3, 0.2, 0.1, 0.4], [0.2, 0.2, 0.2, 0.4]]]])
    spans = [(0, 1), (1, 3)]
    f = statement_features(rows, spans, "last")
    # last query, head mean: [0.1, 0.35, 0.35, 0.2] -> s0 = 0.1, s1 = 0.35
    torch.testing.assert_close(f[:, 0, 0], torch.tensor([0.1, 0.35]))
    f = statement_features(rows, spans, "mean")
    # head mean per query: q0 [0.2,0.2,0.2,0.4], q1 [0.1,0.35,0.35,0.2]; mean: [0.15,0.275,0.275,0.3]
    torch.testing.assert_close(f[:, 0, 0], torch.tensor([0.15, 0.275]))
    f = statement_features(rows, spans, "max", normalize="max")
    # pooled per head first: h0 max [0.1,0.5,0.5,0.4], h1 [0.3,0.2,0.2,0.4]; head mean [0.2,0.35,0.35,0.4]
    torch.testing.assert_close(f[:, 0, 0], torch.tensor([0.2, 0.35]) / 0.35)
    f = statement_features(rows, spans, "last", per_head=True)
    torch.testing.assert_close(f[:, 0], torch.tensor([[0.0, 0.2], [0.5, 0.2]]))


def test_group_folds_keep_examples_whole():
    groups = np.repeat(np.arange(10), 5)
    folds = group_folds(groups, 2, seed=3)
    for g in range(10):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == {0, 1}


def test_knn_perfect_and_chance():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    groups = np.arange(n) // 4
    X = np.c_[y + 0.01 * rng.standard_normal(n)]
    assert knn_f1(X, y, groups) == 1.0
    Xr = rng.standard_normal((n, 3))
    assert abs(knn_f1(Xr, y, groups) - 0.5) < 0.1
    assert knn_f1(X, np.zeros(n, int), groups) is None


def test_score_formula():
    assert score(0.9, 0.6) == pytest.approx(0.75)
    assert score(None, 0.5) is None and score(0.7, 1.0) is None


def test_run_probe_undefined_p2_no_nan():
    rng = np.random.default_rng(0)
    feats, useful, steps, ctl = [], [], [], []
    for _ in range(40):
        u = np.zeros(6, int)
        u[rng.integers(6)] = 1
        feats.append(np.c_[u + 0.05 * rng.standard_normal(6), rng.standard_normal(6)][:, :, None])
        ctl.append(rng.standard_normal((6, 2, 1)))
        useful.append(u)
        steps.append(np.where(u == 1, 0, -1))  # k = 0: every useful statement is step 0
    res = run_probe(ProbeData(feats, useful, steps), [ProbeData(ctl, useful, steps)], [0])
    assert res["s_p1"]["mean"] > 0.5
    assert "undefined" in res["s_p2"] and "single class" in res["s_p2"]["undefined"]
    assert len(res["curves"]["single"]["s_p1"]) == 2
    assert res["n_examples"] == 40


def test_warnings_for_small_classes_and_a_perfect_control():
    rng = np.random.default_rng(0)
    feats, useful, steps = [], [], []
    for i in range(30):
        u = np.zeros(5, int)
        u[0] = 1
        feats.append(np.c_[u + 0.01 * rng.standard_normal(5)][:, :, None])
        useful.append(u)
        steps.append(np.where(u == 1, 1 if i < 4 else 0, -1))  # P2: 4 statements of step 1 only
    data = ProbeData(feats, useful, steps)
    res = run_probe(data, [data], [0])  # the "control" is the model itself: it probes perfectly
    text = " | ".join(res["warnings"])
    assert "P2: fewer than 10 statements of class 1 (4)" in text
    assert "control_f1_p1 = 1.000 >= 0.95" in text
    import json

    json.dumps(res)  # serialisable


def test_selectivity_separates_task_signal_from_surface_type():
    """Features carrying the label itself: the control task (labels fixed at random per type) is not
    learnable, selectivity is high. Features carrying only the statement's type (and the label a
    function of the type): the control task is learnt as well, selectivity about 0."""
    from mechprobe.probing import control_task_labels, selectivity

    rng = np.random.default_rng(0)
    n_ex, S, n_types = 300, 8, 40
    types = rng.integers(0, n_types, (n_ex, S))
    useful = rng.integers(0, 2, (n_ex, S))
    steps = np.where(useful == 1, rng.integers(0, 2, (n_ex, S)), -1)
    label_feats = [
        np.c_[u + 0.05 * rng.standard_normal(S), s + 0.05 * rng.standard_normal(S)][:, :, None]
        for u, s in zip(useful, steps)
    ]
    sel = selectivity(ProbeData(label_feats, useful, steps), types.ravel(), [0, 1])
    assert sel["selectivity_p1"]["mean"] > 0.4 and sel["control_task_f1_p1"]["mean"] < 0.6
    # the label is a function of the type, and the features encode only the type
    of_type = rng.integers(0, 2, n_types)
    useful2 = of_type[types]
    type_feats = [np.c_[t / n_types + 0.001 * rng.standard_normal(S)][:, :, None] for t in types]
    sel2 = selectivity(ProbeData(type_feats, useful2, np.where(useful2 == 1, 0, -1)), types.ravel(), [0, 1])
    assert abs(sel2["selectivity_p1"]["mean"]) < 0.1 and sel2["control_task_f1_p1"]["mean"] > 0.9
    lab = control_task_labels(np.array([0, 1, 1, 0]), np.array([5, 5, 7, 7]), 0)
    assert lab[0] == lab[1] and lab[2] == lab[3]  # one label per type
