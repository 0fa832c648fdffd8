"""How far S moves by chance: a null distribution, a p-value and an interval for the probing score.

S = (F1_model - F1_control) / (1 - F1_control) is reported as the mean over K random-init controls
c_1..c_K. Two things make it move without any learnt structure: the items (another sample of
questions gives other F1s) and the initialisation (random models differ, and some random models
already separate the classes). The null asks: would a model that learnt nothing, one more random
initialisation of the same architecture, score as high on these items?

Bootstrap over items. For draws b = 1..B, resample the items with replacement (a drawn item's
statements stay together; copies of one item fall in the same fold), seed the folds with b, and
compute each feature set's macro F1 (P1 over every statement, P2 over the useful statements of
depth >= 1 items), all layers:
    S_b      = mean_k  s(F_b(model), F_b(c_k))                      the model's score on draw b
    N_{b,i}  = mean_{j != i}  s(F_b(c_i), F_b(c_j))                 control i scored as if it were the model
with s(f, g) = (f - g) / (1 - g). Then
    interval  = the 2.5% and 97.5% quantiles of S_b                (a percentile bootstrap interval)
    null      = the K * B values N_{b,i}; null95 = their 2.5% and 97.5% quantiles
    p         = (1 + #{N_{b,i} >= S}) / (1 + K * B)                  (one-sided; S the reported point score)
N averages over K - 1 controls where S averages over K: its spread is slightly wider than that of
S under the null, so the test errs on the conservative side. With K = 3 and B = 50 the smallest
p is 1/151, below 0.01. The rate at which a random model's S falls inside null95 is measured in
docs/results.md (benchmarks/bench_null.py).
"""

import numpy as np

from .probing import knn_f1, score

DRAWS = 50


def _resampled(data, pick):
    """Rows (X, useful, step, group, p2) of the examples `pick` (with repeats), groups kept as drawn."""
    rows = np.concatenate([np.flatnonzero(data.group == g) for g in pick])
    return data.X[rows].reshape(len(rows), -1), data.useful[rows], data.step[rows], data.group[rows], data.p2[rows]


def _f1(X, y, group, n_folds, seed, device):
    """knn_f1, or None (undefined on this draw) when the draw holds fewer distinct items than folds."""
    return knn_f1(X, y, group, n_folds, seed, device=device) if len(np.unique(group)) >= n_folds else None


def _f1s(data, pick, seed, n_folds, device):
    X, useful, step, group, p2 = _resampled(data, pick)
    return _f1(X, useful, group, n_folds, seed, device), _f1(X[p2], step[p2], group[p2], n_folds, seed, device)


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def bootstrap(model_data, control_data, observed, n_folds=2, draws=DRAWS, seed=0, device="cpu"):
    """{"s_p1": {...}, "s_p2": {...}}: for each probe the bootstrap interval of S, the null of S
    (control against the other controls) with its 95% range, and the p-value of the observed S
    (`observed`: {"s_p1": value or None, "s_p2": ...}); {"undefined": reason} where S is undefined.
    Needs at least 2 controls."""
    K = len(control_data)
    groups = np.unique(model_data.group)
    rng = np.random.default_rng([seed, 7])
    s = {"s_p1": [], "s_p2": []}
    n = {"s_p1": [], "s_p2": []}
    for b in range(draws):
        pick = rng.choice(groups, len(groups), replace=True)
        fm = _f1s(model_data, pick, b, n_folds, device)
        fc = [_f1s(c, pick, b, n_folds, device) for c in control_data]
        for j, key in enumerate(("s_p1", "s_p2")):
            s[key].append(_mean([score(fm[j], c[j]) for c in fc]))
            for i in range(K):
                n[key].append(_mean([score(fc[i][j], fc[k][j]) for k in range(K) if k != i]))
    return {key: _summary(observed.get(key), s[key], n[key]) for key in s}


def _summary(obs, draws, null):
    draws = np.array([v for v in draws if v is not None])
    null = np.array([v for v in null if v is not None])
    if obs is None or len(draws) < 10 or len(null) < 10:
        return {"undefined": "S is undefined on too many resamples of these items"}
    return {
        "interval95": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
        "null_mean": float(null.mean()),
        "null95": [float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))],
        "p_value": float((1 + np.sum(null >= obs)) / (1 + len(null))),
        "draws": int(len(draws)),
        "null_draws": int(len(null)),
    }


def pair_null(curves_by_control):
    """Per position (layer, or head) the null of S from control pairs: curves_by_control[k][l] is
    control k's F1 at position l; returns [(low, high)]: the range of s(F(c_i), F(c_j)) over ordered
    pairs i != j (None where undefined). A coarse band for curves and maps, where no bootstrap runs."""
    K = len(curves_by_control)
    out = []
    for l in range(len(curves_by_control[0])):
        vals = [
            score(curves_by_control[i][l], curves_by_control[j][l])
            for i in range(K)
            for j in range(K)
            if i != j and curves_by_control[i][l] is not None and curves_by_control[j][l] is not None
        ]
        vals = [v for v in vals if v is not None]
        out.append((float(min(vals)), float(max(vals))) if vals else None)
    return out
