"""The MechanisticProbe: two kNN classifiers on per-statement attention features.

P1 predicts useful vs not for every statement; P2, trained only on useful statements,
predicts the reasoning step. Both are kNN (k=8, distance-weighted) scored with macro F1
on out-of-fold predictions of a cross-validation grouped by example (the statements of
one example are never split between train and test). The kNN itself is knn.py (exact, equal
to sklearn's KNeighborsClassifier(8, weights="distance"), fast enough for per-layer curves).

The probing score normalises against the same probe on a randomly initialised model:
    S = (F1_model - F1_random) / (1 - F1_random)
A probe whose labels have a single class (P2 when k = 0) is undefined: it reports
{"undefined": reason} instead of a number.
"""

import numpy as np

from .knn import N_NEIGHBORS, fold_curves, macro_f1
from .utils import MechprobeError, get_logger

P2_LABELS = ("rank", "answer")


class ProbeData:
    """Stacked statements: X (N, L, H'), useful (N,), step (N,), group (N,) = example index.

    p2_labels: "rank" keeps each useful statement's step as its P2 label; "answer" labels the
    statement of the last step of its example 1 and the other useful statements 0 (the
    original's two classes for the k-th smallest: the answer vs the smaller numbers).
    p2_examples: per example, whether its useful statements enter P2 (default: all). P2 over a
    mix of depths would pool depth-0 items (whose single useful statement is always step 0) with
    deeper ones; the LLM probe keeps depth >= 1 only. `p2` (N,) marks the statements P2 reads.
    """

    def __init__(self, feats, useful, steps, p2_labels="rank", p2_examples=None):
        if p2_labels not in P2_LABELS:
            raise MechprobeError(f"p2_labels={p2_labels!r}: expected one of {', '.join(P2_LABELS)}")
        self.X = np.concatenate([np.asarray(f, dtype=np.float64) for f in feats])
        self.useful = np.concatenate([np.asarray(u, dtype=int) for u in useful])
        if p2_labels == "answer":
            steps = [np.where(np.asarray(s) < 0, -1, (np.asarray(s) == np.max(s)).astype(int)) for s in steps]
        self.step = np.concatenate([np.asarray(s, dtype=int) for s in steps])
        self.group = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats)])
        keep = np.ones(len(feats), bool) if p2_examples is None else np.asarray(p2_examples, bool)
        self.p2 = (self.useful == 1) & keep[self.group]

    def layers(self, sel):
        """Flattened features of the chosen layers: (N, len(sel) * H')."""
        return self.X[:, sel].reshape(len(self.X), -1)


def group_folds(groups, n_folds, seed):
    """Assign every example (group) to one of n_folds folds at random (seeded)."""
    if n_folds < 2:
        raise MechprobeError(f"folds={n_folds}: cross-validation needs at least 2 folds")
    uniq = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(uniq)
    fold_of = {g: i % n_folds for i, g in enumerate(perm)}
    return np.array([fold_of[g] for g in groups])


def curve_f1(X, y, groups, n_folds=2, seed=0, curves=True, device="cpu", k=N_NEIGHBORS):
    """Macro F1 of out-of-fold kNN predictions: {"all": f1, "single": [f1 per layer],
    "cumulative": [f1 of layers 0..l]}; every value None (undefined) when y has one class."""
    classes = np.unique(y)
    L = X.shape[1]
    if len(classes) < 2:
        return {"all": None, "single": [None] * L, "cumulative": [None] * L}
    folds = group_folds(groups, n_folds, seed)
    pred = fold_curves(X, y, folds, k, device, curves)
    out = {"all": macro_f1(y, pred["cumulative"][-1], classes)}
    if curves:
        for mode in ("single", "cumulative"):
            out[mode] = [macro_f1(y, p, classes) for p in pred[mode]]
    return out


def single_f1(X, y, groups, n_folds=2, seed=0, device="cpu"):
    """Macro F1 of each feature column alone: X (N, F) -> [F1 per column] (None when y has one class)."""
    classes = np.unique(y)
    if len(classes) < 2:
        return [None] * X.shape[1]
    pred = fold_curves(
        np.asarray(X)[:, :, None], y, group_folds(groups, n_folds, seed), N_NEIGHBORS, device, True, cumulative=False
    )
    return [macro_f1(y, p, classes) for p in pred["single"]]


def head_map(model_data, control_data, seeds, n_folds=2, device="cpu", top=5):
    """S_P1 / S_P2 of each (layer, head) alone: ProbeData with per-head features X (N, L, H); each
    head of the model against the same head of the random-init control, one control per seed.
    Returns {"s_p1", "s_p2": (L, H) means over seeds (None where undefined), "top_p1", "top_p2":
    the `top` heads by S as [layer, head, S], "null_high_p1", "null_high_p2": (L, H) the highest S of one
    control's head against another's (null.pair_null; with 2 controls or more), which a head's S must
    exceed to stand out}."""
    from .null import pair_null

    N, L, H = model_data.X.shape
    out = {}
    for key in ("s_p1", "s_p2"):
        per_seed, fcs = [], []
        for seed, ctl in zip(seeds, control_data):
            pick = (lambda d: np.ones(len(d.useful), bool)) if key == "s_p1" else (lambda d: d.p2)
            lab = (lambda d: d.useful) if key == "s_p1" else (lambda d: d.step)
            m, c = model_data, ctl
            fm = single_f1(m.X[pick(m)].reshape(-1, L * H), lab(m)[pick(m)], m.group[pick(m)], n_folds, seed, device)
            fc = single_f1(c.X[pick(c)].reshape(-1, L * H), lab(c)[pick(c)], c.group[pick(c)], n_folds, seed, device)
            per_seed.append([score(a, b) for a, b in zip(fm, fc)])
            fcs.append(fc)
        if len(fcs) > 1:
            high = [None if b is None else b[1] for b in pair_null(fcs)]
            out["null_high_" + key.split("_")[1]] = [high[l * H : (l + 1) * H] for l in range(L)]
        cell = lambda i: None if any(s[i] is None for s in per_seed) else float(np.mean([s[i] for s in per_seed]))  # noqa: E731
        mat = [[cell(l * H + h) for h in range(H)] for l in range(L)]
        out[key] = mat
        ranked = sorted(
            ((v, l, h) for l, row in enumerate(mat) for h, v in enumerate(row) if v is not None), reverse=True
        )
        out["top_" + key.split("_")[1]] = [[l, h, v] for v, l, h in ranked[:top]]
    return out


def control_task_labels(y, types, seed):
    """Hewitt and Liang's control task: each surface type (e.g. a number's value) gets one label,
    drawn at random (seeded) from the real labels' distribution; every statement of that type has it."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(types, return_inverse=True)
    return rng.choice(y, size=len(uniq), replace=True)[inv]


def selectivity(data, types, seeds, n_folds=2, device="cpu"):
    """F1 on the real labels minus F1 on control-task labels (control_task_labels), all layers, for
    P1 and P2 (useful statements), per seed. High: the probe reads the task from the features, not
    the statement's surface type. Returns {"selectivity_p1", "control_task_f1_p1", ... P2} summaries."""
    types = np.asarray(types)
    u = data.p2
    rows = {k: [] for k in ("selectivity_p1", "control_task_f1_p1", "selectivity_p2", "control_task_f1_p2")}
    for seed in seeds:
        for name, sel, y in (("p1", np.ones(len(u), bool), data.useful), ("p2", u, data.step)):
            X, g, t = data.layers(list(range(data.X.shape[1])))[sel], data.group[sel], types[sel]
            real = knn_f1(X, y[sel], g, n_folds, seed, device=device)
            ctl = knn_f1(X, control_task_labels(y[sel], t, seed), g, n_folds, seed, device=device)
            rows[f"control_task_f1_{name}"].append(ctl)
            rows[f"selectivity_{name}"].append(None if real is None or ctl is None else real - ctl)
    return {k: summarize(v, "labels have a single class") for k, v in rows.items()}


def oof_tree(data, n_folds=2, seed=0, device="cpu"):
    """The tree the probe predicts for every example, out of fold (all layers): per example an
    (S_i,) array of predicted steps, -1 = predicted not useful. In each fold, P1 is fitted on the
    other folds' statements and P2 on their useful ones; P2 labels the statements P1 calls useful."""
    from .knn import knn_predict

    X = data.layers(list(range(data.X.shape[1])))
    folds = group_folds(data.group, n_folds, seed)
    pred = np.full(len(X), -1)
    for f in np.unique(folds):
        te, tr = folds == f, folds != f
        if not tr.any():  # fewer examples than folds: nothing to fit on, no prediction (-1)
            continue
        u, y1 = tr & (data.useful == 1), data.useful[tr]
        p1 = knn_predict(X[tr], y1, X[te], device=device) if len(np.unique(y1)) > 1 else np.full(te.sum(), y1[0])
        hit = np.flatnonzero(te)[p1 == 1]
        if len(hit) and u.any():
            steps = data.step[u]
            pred[hit] = knn_predict(X[u], steps, X[hit], device=device) if len(np.unique(steps)) > 1 else steps[0]
    return [pred[data.group == g] for g in np.unique(data.group)]


def predicted_useful(data, n_folds=2, seed=0, device="cpu"):
    """P1's out-of-fold predictions (all layers) per example: [(S_i,) 0/1 arrays] (see oof_tree)."""
    return [(t >= 0).astype(int) for t in oof_tree(data, n_folds, seed, device)]


def knn_f1(X, y, groups, n_folds=2, seed=0, k=N_NEIGHBORS, device="cpu"):
    """Macro F1 of out-of-fold kNN predictions on X (N, F); None (undefined) when y has one class."""
    return curve_f1(np.asarray(X)[:, None, :], y, groups, n_folds, seed, False, device, k)["all"]


def probe_curves(data, n_folds=2, seed=0, curves=True, device="cpu"):
    """(P1, P2) curve_f1 results; P2 on the useful statements only."""
    p1 = curve_f1(data.X, data.useful, data.group, n_folds, seed, curves, device)
    u = data.p2
    if u.any():
        p2 = curve_f1(data.X[u], data.step[u], data.group[u], n_folds, seed, curves, device)
    else:
        L = data.X.shape[1]
        p2 = {"all": None, "single": [None] * L, "cumulative": [None] * L}
    return p1, p2


def probe_f1(data, sel, n_folds=2, seed=0, device="cpu"):
    """(F1_P1, F1_P2) on the chosen layers. P2 uses useful statements only."""
    X = data.layers(sel)
    f1 = knn_f1(X, data.useful, data.group, n_folds, seed, device=device)
    u = data.p2
    f2 = knn_f1(X[u], data.step[u], data.group[u], n_folds, seed, device=device) if u.any() else None
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
    return {
        "mean": float(np.mean(vals)),
        "std": float(np.std(vals)),
        "n_seeds": len(vals),
        "per_seed": [float(v) for v in vals],
    }


def _why(data, key):
    """Why a probe is undefined on `data` (the key says which probe)."""
    if "p1" in key:
        return "P1 labels have a single class (every statement is useful, or none is)"
    if not data.useful.any():
        return "P2 has no useful statement"
    if not data.p2.any():
        return "P2 has no item of depth >= 1 here (depth-0 items have one step)"
    return "P2 labels have a single class (every useful statement has the same step, e.g. k = 0)"


def run_probe(
    model_data, control_data, seeds, n_folds=2, reference_data=None, curves=True, device="cpu", null_draws=0, name=None
):
    """Probe a model against its random-init controls (one ProbeData per seed).

    Returns F1s and scores over seeds (each seed's value kept in "per_seed"), plus per-layer
    curves (each layer alone; layers 0..l) when `curves`, with "curves_null": per layer the range of
    S of one control against another (null.pair_null). null_draws > 0 (and two controls or more):
    "null", the bootstrap interval, null distribution and p-value of S_P1 and S_P2 (null.bootstrap).
    name: the subset's name, said in its warnings.
    """
    if len(set(seeds)) != len(seeds):
        raise MechprobeError(f"seeds={' '.join(map(str, seeds))}: a seed is repeated; give distinct seeds")
    L = model_data.X.shape[1]
    out = {}
    rows = {"f1_p1": [], "f1_p2": [], "control_f1_p1": [], "control_f1_p2": [], "s_p1": [], "s_p2": []}
    if reference_data is not None:
        rows.update({"reference_f1_p1": [], "reference_f1_p2": [], "reference_s_p1": [], "reference_s_p2": []})
    curve = {m: {c: [[] for _ in range(L)] for c in ("s_p1", "s_p2")} for m in ("single", "cumulative")}
    ctl_curves = {m: {"s_p1": [], "s_p2": []} for m in ("single", "cumulative")}
    for seed, ctl in zip(seeds, control_data):
        m1, m2 = probe_curves(model_data, n_folds, seed, curves, device)
        c1, c2 = probe_curves(ctl, n_folds, seed, curves, device)
        rows["f1_p1"].append(m1["all"]), rows["f1_p2"].append(m2["all"])
        rows["control_f1_p1"].append(c1["all"]), rows["control_f1_p2"].append(c2["all"])
        rows["s_p1"].append(score(m1["all"], c1["all"])), rows["s_p2"].append(score(m2["all"], c2["all"]))
        if reference_data is not None:
            r1, r2 = probe_curves(reference_data, n_folds, seed, False, device)
            rows["reference_f1_p1"].append(r1["all"]), rows["reference_f1_p2"].append(r2["all"])
            rows["reference_s_p1"].append(score(r1["all"], c1["all"]))
            rows["reference_s_p2"].append(score(r2["all"], c2["all"]))
        for mode in ("single", "cumulative") if curves else ():
            ctl_curves[mode]["s_p1"].append(c1[mode]), ctl_curves[mode]["s_p2"].append(c2[mode])
            for l in range(L):
                curve[mode]["s_p1"][l].append(score(m1[mode][l], c1[mode][l]))
                curve[mode]["s_p2"][l].append(score(m2[mode][l], c2[mode][l]))
    for key, vals in rows.items():
        out[key] = summarize(vals, _why(model_data, key))
    if curves:
        out["curves"] = {
            m: {c: [summarize(v, _why(model_data, c)) for v in per] for c, per in d.items()} for m, d in curve.items()
        }
    out.update(n_statements=len(model_data.useful), n_examples=len(np.unique(model_data.group)))
    out["n_useful"] = int(model_data.useful.sum())
    _chance(out, model_data, control_data, ctl_curves if curves else None, seeds, n_folds, device, null_draws)
    out["warnings"] = [f"{name}: {w}" if name else w for w in trust_warnings(model_data, out)]
    for w in out["warnings"]:
        get_logger().warning("warning: %s", w)
    return out


def _chance(out, model_data, control_data, ctl_curves, seeds, n_folds, device, null_draws):
    """Add to run_probe's `out` how far S moves by chance (null.py): "curves_null" from the controls'
    curves, "null" (bootstrap interval, null, p-value) with null_draws > 0; both need 2 controls."""
    from .null import bootstrap, pair_null  # null.py builds on this module

    if len(control_data) < 2:
        return
    if ctl_curves is not None:
        out["curves_null"] = {m: {c: pair_null(v) for c, v in d.items()} for m, d in ctl_curves.items()}
    if null_draws:
        obs = {k: out[k].get("mean") for k in ("s_p1", "s_p2")}
        out["null"] = bootstrap(model_data, control_data, obs, n_folds, null_draws, seeds[0], device)


def trust_warnings(data, res, min_class=10, control_max=0.95):
    """Reasons not to trust the scores: a class with fewer than `min_class` examples, a random-init
    control that probes nearly perfectly (S then divides by almost nothing), or a bootstrap interval
    of S that includes 0."""
    out = []
    u = data.p2
    for name, y in (("P1", data.useful), ("P2", data.step[u])):
        vals, counts = np.unique(y, return_counts=True)
        small = [f"{v} ({c})" for v, c in zip(vals, counts) if c < min_class]
        if small and len(vals) > 1:
            out.append(f"{name}: fewer than {min_class} statements of class {', '.join(small)}: its F1 is noisy")
    for key in ("control_f1_p1", "control_f1_p2"):
        m = res.get(key, {}).get("mean")
        if m is not None and m >= control_max:
            out.append(
                f"{key} = {m:.3f} >= {control_max}: the random-init control already separates the classes, so S is "
                "unstable"
            )
    for key, nl in res.get("null", {}).items():
        iv = nl.get("interval95")
        if iv and iv[0] <= 0 <= iv[1]:
            out.append(
                f"{key.upper()}: its 95% interval over items [{iv[0]:.3f}, {iv[1]:.3f}] includes 0: too few items "
                f"({res['n_examples']}) to tell it from no structure"
            )
    return out
