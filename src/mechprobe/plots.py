"""All figures. Each function takes plain numbers (the same ones written to JSON) and a path."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .runs import save_figure  # noqa: E402


def _mean_std(summaries):
    m = np.array([s.get("mean", np.nan) for s in summaries], dtype=float)
    sd = np.array([s.get("std", 0.0) for s in summaries], dtype=float)
    return m, sd


def _interval(subsets, key):
    """(low, high) arrays of each subset's bootstrap interval of S (null.py), NaN where none."""
    iv = [s.get("null", {}).get(key, {}).get("interval95") or [np.nan, np.nan] for s in subsets]
    return np.array([v[0] for v in iv], dtype=float), np.array([v[1] for v in iv], dtype=float)


def _low(values, floor=-0.2):
    """A y-axis floor that shows every value: `floor`, or lower with a margin."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return min(floor, float(v.min()) - 0.05) if v.size else floor


def probe_curves(results, path, label_key="k", label_fmt="k={}"):
    """S_P1 / S_P2 per layer (each layer alone, and layers 0..l), one line per result (mean ± std
    over seeds); in grey, where a result has "curves_null", the range of S of one random-init
    control against another at that layer (null.pair_null): values above it stand out from chance."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, layout="tight")
    lows = {}
    for r in results:
        for row, mode in enumerate(("single", "cumulative")):
            for col, key in enumerate(("s_p1", "s_p2")):
                m, sd = _mean_std(r["curves"][mode][key])
                x = np.arange(len(m))
                ax = axes[row, col]
                band = r.get("curves_null", {}).get(mode, {}).get(key)
                if band:
                    lo = np.array([np.nan if b is None else b[0] for b in band])
                    hi = np.array([np.nan if b is None else b[1] for b in band])
                    ax.fill_between(x, lo, hi, color="grey", alpha=0.25, lw=0, label="control vs control (null)")
                    lows.setdefault((row, col), []).extend(lo)
                ax.plot(x, m, marker="o", ms=3, label=label_fmt.format(r[label_key]))
                ax.fill_between(x, m - sd, m + sd, alpha=0.2)
                lows.setdefault((row, col), []).extend(m - sd)
    for row, mode in enumerate(("layer l alone", "layers 0..l")):
        for col, key in enumerate(("S_P1 (useful?)", "S_P2 (which step?)")):
            low = _low(lows.get((row, col), []))
            axes[row, col].set(title=f"{key}, {mode}", ylabel="probing score S", ylim=(low, 1.05))
            axes[row, col].axhline(0, color="grey", lw=0.5)
    for ax in axes[1]:
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize=8)
    save_figure(fig, path)


def probe_by_k(results, path, label_key="k", xlabel="k (0-indexed rank of the answer)"):
    """Bars of S_P1 and S_P2 (mean ± std over seeds) per result; undefined scores are marked."""
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(results) + 2), 3.5), layout="tight")
    x = np.arange(len(results))
    low = 0.0
    for j, key in enumerate(("s_p1", "s_p2")):
        m, sd = _mean_std([r.get(key, {}) for r in results])
        if np.isfinite(m).any():
            low = min(low, np.nanmin(m - sd))
        ax.bar(
            x + (j - 0.5) * 0.38, np.nan_to_num(m), 0.38, yerr=sd, capsize=3, label=key.upper().replace("S_P", "S_P")
        )
        lo, hi = _interval(results, key)
        ok = np.isfinite(lo) & np.isfinite(m)
        if ok.any():
            xs = (x + (j - 0.5) * 0.38)[ok]
            ax.vlines(xs, lo[ok], hi[ok], color="black", lw=0.8, label="95% interval over items" if j == 0 else None)
            low = min(low, float(np.nanmin(np.clip(lo[ok], -3, None))))
        for i, v in enumerate(m):
            if np.isnan(v):
                ax.text(x[i] + (j - 0.5) * 0.38, 0.02, "undef.", ha="center", rotation=90, fontsize=8)
    ax.set_xticks(x, [str(r[label_key]) for r in results])
    ax.set(xlabel=xlabel, ylabel="probing score S", ylim=(min(0.0, low - 0.05), 1.05))
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    save_figure(fig, path)


def heatmap_grid(
    mats,
    titles,
    path,
    ylabels,
    xlabel="layer",
    ylabel="",
    suptitle="",
    vmin=None,
    vmax=None,
    fmt=".2f",
    pdf=False,
    cmap="viridis",
):
    """Side-by-side heatmaps with one shared colour scale; mats: list of (rows, cols) arrays."""
    mats = [np.asarray(m, dtype=float) for m in mats]
    vmin = min(m.min() for m in mats) if vmin is None else vmin
    vmax = max(m.max() for m in mats) if vmax is None else vmax
    n = len(mats)
    rows, cols = mats[0].shape
    fig, axes = plt.subplots(
        1,
        n,
        figsize=(max(0.45 * cols, 2.2) * n + 2.5, 0.32 * rows + 1.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    im = None
    for i, (ax, m, t) in enumerate(zip(axes[0], mats, titles)):
        im = ax.imshow(m, aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_title(t, fontsize=9)
        ax.set_xticks(range(m.shape[1]))
        if i == 0:
            ax.set_yticks(range(m.shape[0]), ylabels if ylabels is not None else range(m.shape[0]), fontsize=7)
        ax.set_xlabel(xlabel)
        if m.size <= 400:
            _annotate(ax, m, fmt, (vmin + vmax) / 2)
    axes[0, 0].set_ylabel(ylabel)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    save_figure(fig, path, pdf=pdf)


def _annotate(ax, m, fmt, mid):
    """Each cell's value written on it, white on the dark half of the colour scale."""
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            color = "white" if m[i, j] < mid else "black"
            ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=5.5, color=color)


def pruning_curves(pruning, path, orders=("rank",), title=""):
    """Accuracy against share of heads masked: random (mean ± std band), and for each entropy
    order lowest- and highest-entropy first."""
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="tight")
    r = pruning["random"]
    x = np.array([p["share"] for p in r])
    m = np.array([p["mean"] for p in r])
    sd = np.array([p["std"] for p in r])
    ax.plot(x, m, marker="o", ms=3, color="black", label="random heads (mean ± std)")
    ax.fill_between(x, m - sd, m + sd, color="grey", alpha=0.25)
    for o, ls in zip(orders, ("-", "--", ":")):
        for key, lab, c in (
            ("low_entropy_first", "lowest entropy first", "tab:blue"),
            ("high_entropy_first", "highest entropy first", "tab:red"),
        ):
            ax.plot(
                [p["share"] for p in pruning[o][key]],
                [p["accuracy"] for p in pruning[o][key]],
                marker="s",
                ms=3,
                ls=ls,
                color=c,
                label=f"{lab} ({o} entropy)",
            )
    if "base" in pruning:
        ax.axhline(pruning["base"], color="grey", ls="--", lw=0.8, label=f"nothing masked ({pruning['base']:.3f})")
    ax.set(xlabel="share of heads masked", ylabel="test accuracy", ylim=(-0.02, 1.02), title=title)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def attention_flow(layers_att, useful, path, title="", tokens=None):
    """Lines from each query token to each earlier key, per layer; alpha = weight.

    layers_att: (L, T, T) attention (averaged over the kept heads); useful: positions to colour.
    """
    A = np.asarray(layers_att)
    L, T, _ = A.shape
    fig, ax = plt.subplots(figsize=(0.45 * T + 2, 0.6 * L + 1.5), layout="tight")
    mx = A.max() if A.max() > 0 else 1.0
    for l in range(L):
        for q in range(T):
            for k in range(q + 1):
                w = A[l, q, k] / mx
                if w < 0.02:
                    continue
                c = "tab:red" if k in useful else "tab:blue"
                ax.plot([k, q], [l, l + 1], color=c, alpha=float(min(1.0, w)), lw=1.2)
    for l in range(L + 1):
        ax.scatter(range(T), [l] * T, s=8, c=["tab:red" if t in useful else "grey" for t in range(T)], zorder=3)
    ax.set_yticks(range(L + 1), ["input"] + [f"layer {l}" for l in range(L)], fontsize=7)
    ax.set_xticks(
        range(T), tokens if tokens is not None else range(T), fontsize=7, rotation=90 if tokens is not None else 0
    )
    ax.set(title=title, xlabel="position (red: useful numbers)")
    save_figure(fig, path)


def tree_figure(values, gold_step, pred_step, att, path, title=""):
    """One example: gold tree vs the probe's predicted tree, with the attention per layer.

    values: statement labels; gold_step / pred_step: step per statement (-1 = not useful);
    att: (S, L) attention each statement receives per layer.
    """
    att = np.asarray(att)
    S, L = att.shape
    fig, axes = plt.subplots(
        1, 3, figsize=(13, 0.3 * S + 2), gridspec_kw={"width_ratios": [1, 1, 1.4]}, layout="constrained"
    )
    for ax, steps, name in ((axes[0], gold_step, "gold tree"), (axes[1], pred_step, "probe's tree")):
        used = [i for i in range(S) if steps[i] >= 0]
        by_step = {}
        for i in used:
            by_step.setdefault(steps[i], []).append(i)
        for s, items in sorted(by_step.items()):
            for j, i in enumerate(items):
                ax.scatter(j, s, s=500, c="tab:red" if s == max(by_step) else "tab:orange", zorder=3)
                ax.text(j, s, str(values[i]), ha="center", va="center", fontsize=8, zorder=4)
        for s in sorted(by_step)[:-1]:
            for j, _ in enumerate(by_step[s]):
                ax.annotate(
                    "", xy=(0, s + 1 - 0.15), xytext=(j, s + 0.15), arrowprops=dict(arrowstyle="->", color="grey")
                )
        ax.set(
            title=f"{name} ({len(used)} of {S} useful)",
            ylabel="step (0 = used first)",
            xlim=(-1, 3),
            ylim=(-0.7, max(list(by_step) + [0]) + 0.7),
        )
        ax.set_xticks([])
    im = axes[2].imshow(att, aspect="auto", cmap="viridis")
    axes[2].set_yticks(range(S), [f"{values[i]}{' *' if gold_step[i] >= 0 else ''}" for i in range(S)], fontsize=7)
    axes[2].set(xlabel="layer", title="attention received (* = useful)")
    fig.colorbar(im, ax=axes[2])
    fig.suptitle(title)
    save_figure(fig, path)


def accuracy_bars(labels, accs, counts, path, xlabel="", title="", chance=None):
    """In-context accuracy per subset, with the number of items on each bar."""
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(labels) + 2), 3.5), layout="tight")
    x = np.arange(len(labels))
    ax.bar(x, accs, color="tab:blue")
    for i, (a, n) in enumerate(zip(accs, counts)):
        ax.text(i, a + 0.01, f"n={n}", ha="center", fontsize=7)
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xticks(x, labels)
    ax.set(xlabel=xlabel, ylabel="accuracy", ylim=(0, 1.05), title=title)
    save_figure(fig, path)


def corruption_figure(study, name, path):
    """Accuracy change (corrupted - clean) against S_P2 per subset, with binned means and r."""
    x = np.array([r["s_p2"] for r in study["subsets"]])
    d = np.array([r["acc_corrupted"] - r["acc_clean"] for r in study["subsets"]])
    fig, ax = plt.subplots(figsize=(6, 4), layout="tight")
    ax.scatter(x, d, s=8, alpha=0.4, label="random subsets")
    b = study["bins"]
    ax.errorbar(
        [(r["s_p2_low"] + r["s_p2_high"]) / 2 for r in b],
        [r["delta_acc_mean"] for r in b],
        yerr=[r["delta_acc_std"] for r in b],
        color="tab:red",
        marker="o",
        capsize=3,
        label="binned mean ± std",
    )
    c = study["correlation"]
    r = "undefined" if c["r"] is None else f"r = {c['r']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="S_P2 of the clean subset", ylabel="accuracy change (corrupted - clean)", title=f"{name}: {r}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def by_group_per_depth(per, probe_path, acc_path, key="group", title=""):
    """per = {depth: [(group, subset result)]}: one line per depth of S_P1, S_P2 (depth >= 1 only:
    at depth 0 every useful statement is step 0) and accuracy against the group."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="tight")
    colour = {d: f"C{i}" for i, d in enumerate(sorted(per))}  # one colour per depth in every panel
    low, groups = {"s_p1": [], "s_p2": []}, sorted({g for rows in per.values() for g, _ in rows})
    for d, rows in sorted(per.items()):
        rows = sorted(rows)
        x = np.array([g for g, _ in rows])
        for ax, metric in zip(axes, ("s_p1", "s_p2")):
            if metric == "s_p2" and d == 0:
                continue
            m, sd = _mean_std([s.get(metric, {}) for _, s in rows])
            ax.errorbar(x, m, yerr=sd, marker="o", ms=3, capsize=3, color=colour[d], label=f"depth {d}")
            lo, hi = _interval([s for _, s in rows], metric)
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=colour[d], alpha=0.12, lw=0)
            low[metric].extend(m - sd)
            low[metric].extend(np.clip(lo, -3, None))
    names = ("S_P1 (useful?)", "S_P2 (which step?), depth >= 1")
    for ax, t, metric in zip(axes, names, ("s_p1", "s_p2")):
        ax.set(
            title=t + "\nbars: std over controls; band: 95% interval over items", xlabel=f"{key} (number of statements)"
        )
        ax.set_ylim(_low(low[metric]), 1.05)
        ax.set_xticks(groups)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("probing score S")
    save_figure(fig, probe_path)
    if all(s["accuracy"] is None for rows in per.values() for _, s in rows):
        return
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="tight")
    for d, rows in sorted(per.items()):
        rows = sorted(rows)
        ax.plot(
            [g for g, _ in rows],
            [np.nan if s["accuracy"] is None else s["accuracy"] for _, s in rows],
            marker="o",
            color=colour[d],
            label=f"depth {d}",
        )
    ax.set_xticks(groups)
    ax.set(xlabel=f"{key} (number of statements)", ylabel="accuracy", ylim=(0, 1.05), title=title)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.legend(fontsize=8)
    save_figure(fig, acc_path)


def knockout_figure(rows, path, title=""):
    """Each metric of a knockout study (accuracy, share of answers changed, margin drop; or the answer's
    log-probability drop) against the first knocked layer, one line per condition (the random
    not-useful draws as mean ± std over seeds). rows: [(label, study)], one row of panels per study
    (e.g. all items, then each depth; label "" for none)."""
    labels = {
        "accuracy": "accuracy",
        "changed": "share of answers changed",
        "margin_drop": "gold-answer margin drop",
        "logprob_drop": "answer log-probability drop",
    }
    metrics = rows[0][1].get("metrics", ["accuracy", "changed", "margin_drop"])
    fig, axes = plt.subplots(
        len(rows),
        len(metrics),
        figsize=(4.4 * len(metrics) + 0.4, 3.4 * len(rows) + 1.2),
        squeeze=False,
        layout="constrained",
    )
    for r_i, (row_label, st) in enumerate(rows):
        x, rand = st["windows"], st.get("random not useful")
        for ax, key in zip(axes[r_i], metrics):
            for name, r in st["conditions"].items():
                if name.startswith("random not useful"):
                    continue
                y = [np.nan if v is None else v for v in r[key]]
                ax.plot(x, y, marker="o", ms=3, label=f"{name} ({r['knocked_per_prompt']:.1f}/prompt)")
            if rand:
                m = np.array([np.nan if v is None else v for v in rand[key]["mean"]])
                sd = np.array([0 if v is None else v for v in rand[key]["std"]])
                ax.errorbar(x, m, yerr=sd, marker="o", ms=3, capsize=3, label="random not useful (seeds)")
            ax.set(xlabel="knocked layers: l and above", ylabel=labels[key])
            ax.set_xticks(x)
            ax.axhline(0, color="grey", lw=0.5)
        if "accuracy" in st["base"]:
            axes[r_i, 0].axhline(st["base"]["accuracy"], color="grey", ls="--", lw=0.8)
        if row_label:
            n = st.get("n_prompts")
            axes[r_i, 0].set_title(f"{row_label}" + (f" ({n} prompts)" if n else ""), loc="left", fontsize=10)
    handles, labels_ = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="outside lower center", ncol=min(3, len(labels_)), fontsize=8)
    fig.suptitle(title or "attention knockout: queries blocked from the chosen statements")
    save_figure(fig, path)


def head_map_figure(hm, path, suptitle):
    """S_P1 and S_P2 of each head alone (probing.head_map) as heads x layers maps and, when hm has
    "entropy", each head's normalised attention entropy (1 = uniform, 0 = one key) with a colour bar
    of its own. A head whose S exceeds every control-against-control S of that head (hm's
    "null_high_*") is ringed. Maps with many layers are stacked one above the other; values are
    written in the cells only where they fit."""
    L, H = len(hm["s_p1"]), len(hm["s_p1"][0])
    keys = [("s_p1", "S_P1 of each head alone", "null_high_p1"), ("s_p2", "S_P2 of each head alone", "null_high_p2")]
    if hm.get("entropy") is not None:
        keys.append(("entropy", "attention entropy (normalised)", None))
    mats = [np.array([[np.nan if v is None else v for v in row] for row in hm[k]], dtype=float).T for k, _, _ in keys]
    stacked = L > 12
    n = len(keys)
    cell = 0.3 if stacked else 0.45
    size = (
        (max(6.0, cell * L + 2.5), n * (0.3 * H + 1.1) + 1.0)
        if stacked
        else (max(cell * L, 2.2) * n + 3.0, 0.32 * H + 1.9)
    )
    fig, axes = plt.subplots(
        n if stacked else 1, 1 if stacked else n, figsize=size, squeeze=False, layout="constrained"
    )
    axes = axes[:, 0] if stacked else axes[0]
    s_vals = np.concatenate([m[np.isfinite(m)] for m in mats[:2]] + [np.zeros(1)])
    s_low = min(-0.2, float(s_vals.min()))
    im_s = im_e = None
    for ax, m, (key, title, null_key) in zip(axes, mats, keys):
        ent = key == "entropy"
        im = ax.imshow(m, aspect="auto", vmin=0 if ent else s_low, vmax=1, cmap="magma" if ent else "viridis")
        im_e, im_s = (im, im_s) if ent else (im_e, im)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks(range(H), [f"h{h}" for h in range(H)], fontsize=7)
        ax.set_xticks(range(0, L, 1 if L <= 16 else 2))
        ax.set(xlabel="layer", ylabel="head")
        if L * H <= 200:
            _annotate(ax, m, ".2f", (s_low + 1) / 2 if not ent else 0.5)
        if null_key and hm.get(null_key):
            hi = np.array([[np.nan if v is None else v for v in row] for row in hm[null_key]], dtype=float).T
            ys, xs = np.nonzero(np.nan_to_num(m, nan=-9) > np.nan_to_num(hi, nan=9))
            ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="red", linewidths=0.9)
    s_axes = [ax for ax, (k, _, _) in zip(axes, keys) if k != "entropy"]
    fig.colorbar(im_s, ax=s_axes, shrink=0.8, label="probing score S")
    if im_e is not None:
        fig.colorbar(im_e, ax=[axes[-1]], shrink=0.8, label="entropy")
    note = "ringed: above every control-vs-control S of that head" if any(hm.get(k) for _, _, k in keys if k) else ""
    fig.suptitle(suptitle + (f"\n{note}" if note else ""), fontsize=10)
    save_figure(fig, path)


def selectivity_figure(res, path, title=""):
    """Control-task selectivity (probing.selectivity): per probe, F1 on the real labels, F1 on the
    control task (labels fixed at random per surface type) and, when given, the random-init
    control's F1 on the real labels; the selectivity (real - control task) written above."""
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="tight")
    w = 0.26
    for i, p in enumerate(("p1", "p2")):
        sel, ctl = res.get(f"selectivity_{p}", {}), res.get(f"control_task_f1_{p}", {})
        if "mean" not in sel or "mean" not in ctl:
            continue
        real = sel["mean"] + ctl["mean"]
        bars = [(real, "real labels", "tab:blue"), (ctl["mean"], "control task", "tab:orange")]
        rnd = res.get(f"control_f1_{p}", {})
        if "mean" in rnd:
            bars.append((rnd["mean"], "random-init model", "tab:grey"))
        for j, (v, lab, c) in enumerate(bars):
            ax.bar(i + (j - 1) * w, v, w, color=c, label=lab if i == 0 else None)
        ax.text(i, real + 0.04, f"selectivity {sel['mean']:.3f} ± {sel['std']:.3f}", ha="center", fontsize=8)
    ax.set_xticks([0, 1], ["P1 (useful?)", "P2 (step)"])
    ax.set_xlim(-0.65, 1.65)
    import textwrap

    ax.set(ylabel="macro F1 (all layers)", ylim=(0, 1.15))
    ax.set_title("\n".join(textwrap.wrap(title or "control-task selectivity", 60)), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def kinds_figure(reports, path, title=""):
    """Accuracy per question kind (grouped bars), one bar per model or baseline: reports {name: report}
    (reasoner.report: by_kind and balanced_accuracy), the first drawn as the model; the number of
    questions under each group."""
    names = list(reports)
    first = reports[names[0]]
    kinds = [k for k, v in first["by_kind"].items() if v] + ["balanced"]
    fig, ax = plt.subplots(figsize=(1.6 * len(kinds) + 2, 3.8), layout="constrained")
    width = 0.8 / len(names)
    colours = ["tab:blue"] + [plt.get_cmap("Greys")(0.35 + 0.5 * i / max(1, len(names) - 1)) for i in range(len(names))]
    for j, name in enumerate(names):
        r = reports[name]
        vals = [r["by_kind"][k]["accuracy"] if k != "balanced" else r["balanced_accuracy"] for k in kinds]
        ax.bar(np.arange(len(kinds)) + (j - (len(names) - 1) / 2) * width, vals, width, label=name, color=colours[j])
    labels = [f"{k}\nn={first['by_kind'][k]['n']}" if k != "balanced" else "balanced\n(mean of kinds)" for k in kinds]
    ax.set_xticks(np.arange(len(kinds)), labels, fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set(ylabel="test accuracy", ylim=(0, 1.05), title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(names), fontsize=8, frameon=False)
    save_figure(fig, path)
