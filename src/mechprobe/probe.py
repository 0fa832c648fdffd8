"""The MechanisticProbe: two kNN classifiers on per-statement attention features.

P1 predicts useful vs not for every statement; P2, trained only on useful statements,
predicts the reasoning step. Both are kNN (k=8, distance-weighted) scored with macro F1
on out-of-fold predictions of a cross-validation grouped by example (the statements of
one example are never split between train and test).

The probing score normalises against the same probe on a randomly initialised model:
    S = (F1_model - F1_random) / (1 - F1_random)
A probe whose labels have a single class (P2 when k = 0) is undefined: it reports
{"undefined": reason} instead of a number.
"""
import numpy as np
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

N_NEIGHBORS = 8


class ProbeData:
    """Stacked statements: X (N, L, H'), useful (N,), step (N,), group (N,) = example index."""

    def __init__(self, feats, useful, steps):
        self.X = np.concatenate([np.asarray(f, dtype=np.float64) for f in feats])
        self.useful = np.concatenate([np.asarray(u, dtype=int) for u in useful])
        self.step = np.concatenate([np.asarray(s, dtype=int) for s in steps])
        self.group = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])

    def layers(self, sel):
        """Flattened features of the chosen layers: (N, len(sel) * H')."""
        return self.X[:, sel].reshape(len(self.X), -1)


def group_folds(groups, n_folds, seed):
    """Assign every example (group) to one of n_folds folds at random (seeded)."""
    uniq = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(uniq)
    fold_of = {g: i % n_folds for i, g in enumerate(perm)}
    return np.array([fold_of[g] for g in groups])


def knn_f1(X, y, groups, n_folds=2, seed=0, k=N_NEIGHBORS):
    """Macro F1 of out-of-fold kNN predictions; None (undefined) when y has one class."""
    classes = np.unique(y)
    if len(classes) < 2:
        return None
    folds = group_folds(groups, n_folds, seed)
    pred = np.empty_like(y)
    for f in range(n_folds):
        tr, te = folds != f, folds == f
        if not te.any():
            continue
        if not tr.any():
            raise ValueError("a fold left no training data")
        clf = KNeighborsClassifier(n_neighbors=min(k, int(tr.sum())), weights="distance")
        clf.fit(X[tr], y[tr])
        pred[te] = clf.predict(X[te])
    return float(f1_score(y, pred, average="macro", labels=classes))


def probe_f1(data, sel, n_folds=2, seed=0):
    """(F1_P1, F1_P2) on the chosen layers. P2 uses useful statements only."""
    X = data.layers(sel)
    f1 = knn_f1(X, data.useful, data.group, n_folds, seed)
    u = data.useful == 1
    f2 = knn_f1(X[u], data.step[u], data.group[u], n_folds, seed) if u.any() else None
    return f1, f2


def score(f_model, f_random):
    """S = (F1_model - F1_random) / (1 - F1_random); None when undefined."""
    if f_model is None or f_random is None or f_random >= 1.0:
        return None
    return (f_model - f_random) / (1.0 - f_random)


def summarize(values, reason="labels have a single class"):
    """{"mean", "std", "n_seeds"} over seeds, or {"undefined": reason}."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"undefined": reason, "n_seeds": len(values)}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n_seeds": len(vals)}


def _why(data, key):
    """Why a probe is undefined on `data` (the key says which probe)."""
    if "p1" in key:
        return "P1 labels have a single class (every statement is useful, or none is)"
    if not data.useful.any():
        return "P2 has no useful statement"
    return "P2 labels have a single class (every useful statement has the same step, e.g. k = 0)"


def run_probe(model_data, control_data, seeds, n_folds=2, reference_data=None):
    """Probe a model against its random-init controls (one ProbeData per seed).

    Returns F1s and scores over seeds, plus per-layer curves (each layer alone; layers 0..l).
    """
    L = model_data.X.shape[1]
    allL = list(range(L))
    out = {}
    rows = {"f1_p1": [], "f1_p2": [], "control_f1_p1": [], "control_f1_p2": [], "s_p1": [], "s_p2": []}
    if reference_data is not None:
        rows.update({"reference_f1_p1": [], "reference_f1_p2": [], "reference_s_p1": [], "reference_s_p2": []})
    curves = {m: {c: [[] for _ in allL] for c in ("s_p1", "s_p2")} for m in ("single", "cumulative")}
    for seed, ctl in zip(seeds, control_data):
        m1, m2 = probe_f1(model_data, allL, n_folds, seed)
        c1, c2 = probe_f1(ctl, allL, n_folds, seed)
        rows["f1_p1"].append(m1), rows["f1_p2"].append(m2)
        rows["control_f1_p1"].append(c1), rows["control_f1_p2"].append(c2)
        rows["s_p1"].append(score(m1, c1)), rows["s_p2"].append(score(m2, c2))
        if reference_data is not None:
            r1, r2 = probe_f1(reference_data, allL, n_folds, seed)
            rows["reference_f1_p1"].append(r1), rows["reference_f1_p2"].append(r2)
            rows["reference_s_p1"].append(score(r1, c1)), rows["reference_s_p2"].append(score(r2, c2))
        for mode in ("single", "cumulative"):
            for l in allL:
                sel = [l] if mode == "single" else list(range(l + 1))
                a1, a2 = probe_f1(model_data, sel, n_folds, seed)
                b1, b2 = probe_f1(ctl, sel, n_folds, seed)
                curves[mode]["s_p1"][l].append(score(a1, b1))
                curves[mode]["s_p2"][l].append(score(a2, b2))
    for key, vals in rows.items():
        out[key] = summarize(vals, _why(model_data, key))
    out["curves"] = {m: {c: [summarize(v, _why(model_data, c)) for v in per] for c, per in d.items()} for m, d in curves.items()}
    out["n_statements"] = int(len(model_data.useful))
    out["n_examples"] = int(len(np.unique(model_data.group)))
    out["n_useful"] = int(model_data.useful.sum())
    return out
