"""The probe's kNN: the sklearn path (one KNeighborsClassifier fit per layer selection) against
mechprobe.knn (one-dimensional window search, incremental cumulative curves), same data, one run.

Features. "structured" (default) is shaped like captured ones: each example has S statements
(S drawn from the paper's groups 2..24); per layer a softmax over the statements of logits that
follow an AR(1) walk over the layers (correlated layers), with the useful statements raised in a
band of middle layers, so the values are attention shares in (0, 1) summing to 1 per layer, with
many small ones (as real rows). "uniform" is i.i.d. noise in [0, 1): the worst case for any exact
search (no structure to prune with). --features FILE.npz takes captured features instead
(arrays X (N, L) or (N, L, 1), useful (N,), step (N,), group (N,)), resampled by example to the size.

Timed, for the model and one random-init control (two datasets), P1 on every statement and P2 on
the useful ones, 2 folds grouped by example, one seed:
  all-layers probe | single-layer curves (L fits) | cumulative curves (L fits)
sklearn: KNeighborsClassifier(8, weights="distance") (what probe.py used before);
new: mechprobe.knn (its compiled loops warmed up first; the one-time compile is printed).
Predictions are compared (the number that differ is printed).
--paper-scale: 131,072 statements x 32 layers, 3 seeds, curves, and the 8 group subsets, new
path only (the sklearn path would take hours).
Peak memory: growth of the process's peak resident set (VmHWM, reset before) during the new path.
Last line: probe_speedup_vs_sklearn=X single_curve_speedup=Y peak_mib=Z
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

GROUPS = (2, 4, 8, 12, 16, 20, 24)


def structured(n, L, seed=0):
    rng = np.random.default_rng(seed)
    X, useful, step, group, g = [], [], [], [], 0
    while sum(len(u) for u in useful) < n:
        S = int(rng.choice(GROUPS))
        n_use = int(rng.integers(1, min(S, 4) + 1))
        u = np.zeros(S, int)
        u[rng.choice(S, n_use, replace=False)] = 1
        st = np.where(u == 1, rng.integers(0, 2, S), -1)
        logit = np.zeros((S, L))
        walk = rng.standard_normal(S)
        boost = np.exp(-0.5 * ((np.arange(L) - L * 0.45) / (L * 0.2)) ** 2)  # useful raised in middle layers
        for l in range(L):
            walk = 0.85 * walk + 0.5 * rng.standard_normal(S)
            logit[:, l] = walk + 2.0 * boost[l] * u + 0.8 * boost[l] * (st == 1)
        a = np.exp(logit - logit.max(0))
        X.append(a / a.sum(0))
        useful.append(u), step.append(st), group.append(np.full(S, g))
        g += 1
    cat = [np.concatenate(v)[:n] for v in (X, useful, step, group)]
    return cat[0][:, :, None], cat[1], cat[2], cat[3]


def uniform(n, L, seed=0):
    X, u, s, g = structured(n, L, seed)
    return np.random.default_rng(seed + 7).random(X.shape), u, s, g


def from_file(path, n, L, seed=0):
    z = np.load(path)
    X = z["X"] if z["X"].ndim == 3 else z["X"][:, :, None]
    groups = z["group"]
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    rows, g = [], 0
    out = {k: [] for k in ("X", "useful", "step", "group")}
    while sum(len(r) for r in rows) < n:  # resample whole examples (with replacement) up to the size
        ex = np.flatnonzero(groups == rng.choice(uniq))
        rows.append(ex)
        for k in ("X", "useful", "step"):
            out[k].append((X if k == "X" else z[k])[ex])
        out["group"].append(np.full(len(ex), g))
        g += 1
    X = np.concatenate(out["X"])[:n][:, :L]
    return X, np.concatenate(out["useful"])[:n], np.concatenate(out["step"])[:n], np.concatenate(out["group"])[:n]


def peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sklearn_part(X, y, folds, sels):
    from sklearn.neighbors import KNeighborsClassifier

    preds = []
    for sel in sels:
        pred = np.empty_like(y)
        for f in np.unique(folds):
            tr, te = folds != f, folds == f
            clf = KNeighborsClassifier(n_neighbors=min(8, int(tr.sum())), weights="distance")
            clf.fit(X[tr][:, sel].reshape(int(tr.sum()), -1), y[tr])
            pred[te] = clf.predict(X[te][:, sel].reshape(int(te.sum()), -1))
        preds.append(pred)
    return preds


def tasks(data):
    """(X, y, folds) of P1 and P2 for one dataset."""
    from mechprobe.probing import group_folds

    X, useful, step, group = data
    u = useful == 1
    return [(X, useful, group_folds(group, 2, 0)), (X[u], step[u], group_folds(group[u], 2, 0))]


def run_sklearn(datasets, L):
    t = {"all": 0.0, "single": 0.0, "cumulative": 0.0}
    preds = []
    for data in datasets:
        for X, y, folds in tasks(data):
            for part, sels in (
                ("all", [list(range(L))]),
                ("single", [[l] for l in range(L)]),
                ("cumulative", [list(range(l + 1)) for l in range(L)]),
            ):
                t0 = time.perf_counter()
                p = sklearn_part(X, y, folds, sels)
                t[part] += time.perf_counter() - t0
                if part == "all":
                    preds.append(p[0])
    return t, preds


def run_new(datasets, L, device):
    import torch

    from mechprobe import knn

    t = {"all": 0.0, "single": 0.0, "cumulative": 0.0}
    preds = []
    for data in datasets:
        for X, y, folds in tasks(data):
            classes, yi = np.unique(y, return_inverse=True)
            Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(yi, device=device)
            t0 = time.perf_counter()
            preds.append(knn.fold_curves(X, y, folds, device=device, curves=False)["cumulative"][-1])
            t["all"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            knn.fold_curves(X, y, folds, device=device, cumulative=False)  # every layer and fold at once
            t["single"] += time.perf_counter() - t0
            for f in np.unique(folds):
                tr, te = torch.as_tensor(folds != f, device=device), torch.as_tensor(folds == f, device=device)
                t0 = time.perf_counter()
                knn._cumulative(Xt[tr], yt[tr], Xt[te], 8, len(classes), 64)
                t["cumulative"] += time.perf_counter() - t0
    return t, preds


def paper_scale(make, L, device):
    from mechprobe.probing import ProbeData, run_probe

    n = 131072
    seeds = [0, 1, 2]
    X, useful, step, group = make(n, L, 0)
    feats = [X[group == g] for g in np.unique(group)]
    us = [useful[group == g] for g in np.unique(group)]
    sts = [step[group == g] for g in np.unique(group)]
    model = ProbeData(feats, us, sts)
    ctls = [ProbeData([make(n, L, 100 + s)[0][group == g] for g in np.unique(group)], us, sts) for s in seeds]
    t0 = time.perf_counter()
    run_probe(model, ctls, seeds, device=device)
    sizes = np.array([len(f) for f in feats])
    for k, G in enumerate(GROUPS + (None,)):  # 8 subsets: the 7 groups and one of everything else
        idx = np.flatnonzero(sizes == G) if G is not None else np.flatnonzero(~np.isin(sizes, GROUPS))
        if len(idx) < 4:
            idx = np.arange(k, len(feats), 8)
        sub = lambda d: ProbeData(
            [d.X[d.group == i] for i in idx], [d.useful[d.group == i] for i in idx], [d.step[d.group == i] for i in idx]
        )  # noqa: E731
        run_probe(sub(model), [sub(c) for c in ctls], seeds, device=device)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=65536, help="statements")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kind", default="structured", choices=["structured", "uniform"])
    p.add_argument(
        "--features", default="", help="captured features (.npz) resampled to the size instead of synthetic ones"
    )
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument(
        "--paper-scale", action="store_true", help="131,072 statements, 3 seeds, curves, 8 subsets: new path only"
    )
    p.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    a = p.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        a.device = "cpu"
    make = (
        (lambda n, L, s: from_file(a.features, n, L, s))
        if a.features
        else {"structured": structured, "uniform": uniform}[a.kind]
    )
    print(f"device {a.device}, {torch.get_num_threads()} threads, features {a.features or a.kind}", flush=True)
    if a.paper_scale:
        peak_reset()
        base = peak_mib()
        sec = paper_scale(make, a.layers, a.device)
        print(
            f"paper scale (131,072 statements x {a.layers} layers, 3 seeds, curves, 8 subsets), new path: {sec:.1f} s"
        )
        print(f"probe_speedup_vs_sklearn=nan single_curve_speedup=nan peak_mib={peak_mib() - base:.0f}")
        return
    model = make(a.n, a.layers, 0)
    control = (make(a.n, a.layers, 1)[0], *model[1:])
    datasets = [model, control]
    t0 = time.perf_counter()
    warm = structured(256, 2, 0)
    run_new([warm], 2, a.device)  # compiles (or loads from numba's cache) the compiled loops outside the timings
    print(f"warm-up (numba compile or cache load) {time.perf_counter() - t0:.1f} s", flush=True)
    peak_reset()
    base = peak_mib()
    t_new, p_new = run_new(datasets, a.layers, a.device)
    peak = peak_mib() - base
    tot_new = t_new["single"] + t_new["cumulative"]  # the cumulative curve's last point is the all-layers probe
    print(
        f"new     ({a.n} statements x {a.layers} layers, model + control, P1 + P2, 2 folds): all-layers "
        f"{t_new['all']:.1f} s, "
        f"single curves {t_new['single']:.2f} s, cumulative curves {t_new['cumulative']:.1f} s; total {tot_new:.1f} s",
        flush=True,
    )
    if a.skip_sklearn:
        print(f"probe_speedup_vs_sklearn=nan single_curve_speedup=nan peak_mib={peak:.0f}")
        return
    t_sk, p_sk = run_sklearn(datasets, a.layers)
    tot_sk = sum(t_sk.values())
    diff = sum(int((x != y).sum()) for x, y in zip(p_new, p_sk))
    print(
        f"sklearn: all-layers {t_sk['all']:.1f} s, single curves {t_sk['single']:.1f} s, cumulative curves "
        f"{t_sk['cumulative']:.1f} s; "
        f"total {tot_sk:.1f} s; all-layers predictions that differ: {diff} of {sum(len(x) for x in p_sk)}"
    )
    print(
        f"probe_speedup_vs_sklearn={tot_sk / tot_new:.2f} "
        f"single_curve_speedup={t_sk['single'] / t_new['single']:.1f} peak_mib={peak:.0f}"
    )


if __name__ == "__main__":
    main()
