"""The null of S (null.py): a planted model gets a tiny p-value and an interval above 0; a model
exchangeable with its random-init controls falls inside the null's 95% range."""

import numpy as np

from mechprobe.null import bootstrap, pair_null
from mechprobe.probing import ProbeData, run_probe, score


def items(rng, n=60, S=8, L=4):
    """Useful flags and steps of n items of S statements (2-3 useful, steps 0..), and a shared
    'architecture' signal per statement (its position), as random models of one config share."""
    useful, steps, pos = [], [], []
    for _ in range(n):
        u = np.zeros(S, bool)
        idx = rng.choice(S, int(rng.integers(2, 4)), replace=False)
        u[idx] = True
        st = -np.ones(S, int)
        st[idx] = np.arange(len(idx))
        useful.append(u), steps.append(st), pos.append(np.tile(np.arange(S)[:, None], (1, L)) / S)
    return useful, steps, pos


def random_model(rng, pos, L=4, planted=None):
    """Features (S, L, 1) per item: the shared positional signal times a per-model random weight plus
    per-model noise; planted: add the useful flags (a model that attends to the tree)."""
    w = rng.normal(size=L)
    feats = []
    for j, p in enumerate(pos):
        f = p * w + rng.normal(scale=0.5, size=p.shape)
        if planted is not None:
            f = f + 1.5 * planted[0][j][:, None] + 0.8 * (planted[1][j][:, None] == 1)
        feats.append(f[:, :, None])
    return feats


def test_planted_model_p_value_is_tiny_and_interval_above_zero():
    rng = np.random.default_rng(0)
    useful, steps, pos = items(rng)
    model = ProbeData(random_model(rng, pos, planted=(useful, steps)), useful, steps)
    ctls = [ProbeData(random_model(np.random.default_rng(s + 10), pos), useful, steps) for s in range(3)]
    res = run_probe(model, ctls, [0, 1, 2], curves=False, null_draws=60)
    for key in ("s_p1", "s_p2"):
        nl = res["null"][key]
        assert res[key]["mean"] > 0.3 and nl["p_value"] <= 1 / 150, (key, nl)
        assert nl["interval95"][0] > nl["null95"][1], (key, nl)  # the whole interval above the null's range
    assert not any("includes 0" in w for w in res["warnings"])


def test_a_random_model_falls_inside_the_null_range():
    """Over 12 random models exchangeable with their 3 controls (the benchmark measures 40+), S lies
    within the null's 95% range for most; a p-value below 0.01 is rare."""
    inside, small_p = 0, 0
    for r in range(12):
        rng = np.random.default_rng(100 + r)
        useful, steps, pos = items(rng, n=40)
        model = ProbeData(random_model(rng, pos), useful, steps)
        ctls = [ProbeData(random_model(np.random.default_rng(1000 * r + s), pos), useful, steps) for s in range(3)]
        res = run_probe(model, ctls, [0, 1, 2], curves=False, null_draws=30)
        nl = res["null"]["s_p1"]
        inside += nl["null95"][0] <= res["s_p1"]["mean"] <= nl["null95"][1]
        small_p += nl["p_value"] < 0.01
    assert inside >= 10 and small_p <= 1, (inside, small_p)


def test_interval_warning_names_the_subset_and_pair_null_by_hand():
    rng = np.random.default_rng(5)
    useful, steps, pos = items(rng, n=12)
    model = ProbeData(random_model(rng, pos), useful, steps)
    ctls = [ProbeData(random_model(np.random.default_rng(s), pos), useful, steps) for s in range(2)]
    res = run_probe(model, ctls, [0, 1], curves=False, null_draws=20, name="group=8,depth=1")
    assert any(w.startswith("group=8,depth=1: S_P1: its 95% interval") for w in res["warnings"]), res["warnings"]
    f = [[0.6, None], [0.5, 0.7], [0.8, 0.7]]  # three controls' F1 at two positions
    lo, hi = pair_null(f)[0]
    pairs = [score(f[i][0], f[j][0]) for i in range(3) for j in range(3) if i != j]
    assert (lo, hi) == (min(pairs), max(pairs))
    assert pair_null(f)[1] == (0.0, 0.0)  # only controls 1 and 2 defined there, equal F1
    out = bootstrap(model, ctls, {"s_p1": None, "s_p2": None}, draws=10)
    assert "undefined" in out["s_p1"]
