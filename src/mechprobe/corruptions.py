"""Corruptions of ProofWriter items and the robustness study's statistics (the driver:
corrupt_proofwriter.py, run_corrupt_proofwriter.sh).

Each corruption maps an item to a new item (or None when it does not apply) and updates the
gold tree; the statement to change is drawn with the given rng (the original always took the
first sentence because its loop never ran).

* negate_unused: negate a statement NOT in the proof.
* negate_used:   negate a statement IN the proof; the tree no longer holds (tree_valid = False).
* shuffle:       permute the statements (labels move with them).
* insert_irrelevant: add a fact about an entity the theory does not mention, not useful.

No corruption assumes its effect on the answer: the gold answer of every corrupted item is
derived again by logic.answer under the run's setting (CWA with negation as failure, or OWA).
Negating a used fact need not flip it (a rule "If someone is not x then ..." can re-derive the
conclusion; under OWA it becomes Unknown), and negating an unused fact can change it through
such a rule. Items the solver cannot read (e.g. relational sentences), whose clean answer it
does not reproduce, or whose new answer is not an answer word of the prompt are skipped and
counted; results report how many gold answers actually changed.

Experiment: over random subsets of questions, the change of accuracy (corrupted - clean)
against the probing score S_P2 of the clean subset, binned, with Pearson's r and its 95%
interval (Fisher z; subsets overlap, so the interval is optimistic).
"""

import re

import numpy as np

from . import logic
from .probing import ProbeData, probe_f1, score
from .utils import MechprobeError, get_logger

log = get_logger()
_FACT = re.compile(r"^(.+?) is (\w+)\.$")
NEW_ENTITIES = ["The tiger", "The squirrel", "Gary", "Harry", "The cow", "The bald eagle", "Ivy", "The zebra"]


def negate_text(s, style="grammatical"):
    """A positive fact 'X is a.' -> 'X is not a.' (grammatical); a rule in any wording, any other
    sentence, or style='that': 'That x is false.' (a rule is negated as a rule, the same way whatever
    its wording: the solver then drops it; its conclusion is never turned around)."""
    p = logic.parse_statement(s)
    m = _FACT.match(s)
    if style == "grammatical" and p is not None and p[0] == "fact" and p[3] and m:
        return f"{m.group(1)} is not {m.group(2)}."
    body = s.rstrip(".")
    return f"That {body[0].lower() + body[1:]} is false."


def _copy(it, **kw):
    new = {**it, **kw}
    for key in ("statements", "useful", "step"):
        new[key] = list(new[key])
    return new


def negate_unused(it, rng, style="grammatical"):
    cand = [i for i, u in enumerate(it["useful"]) if not u]
    if not cand:
        return None
    i = int(rng.choice(cand))
    new = _copy(it, corruption="negate_unused", corrupted_index=i)
    new["statements"][i] = negate_text(new["statements"][i], style)
    return new


def negate_used(it, rng, style="grammatical"):
    cand = [i for i, u in enumerate(it["useful"]) if u]
    if not cand:
        return None
    i = int(rng.choice(cand))
    new = _copy(it, corruption="negate_used", corrupted_index=i, tree_valid=False)
    new["statements"][i] = negate_text(new["statements"][i], style)
    return new


def shuffle(it, rng, style=None):
    perm = rng.permutation(len(it["statements"]))
    new = _copy(it, corruption="shuffle", permutation=perm.tolist())
    for key in ("statements", "useful", "step"):
        new[key] = [it[key][j] for j in perm]
    return new


def insert_irrelevant(it, rng, style=None):
    text = " ".join(it["statements"] + [it["question"]])
    ents = [e for e in NEW_ENTITIES if e.lower() not in text.lower()]
    if not ents:
        return None
    parsed = [logic.parse_statement(s) for s in it["statements"]]
    attrs = [p[2] for p in parsed if p is not None and p[0] == "fact"] or ["red"]
    fact = f"{rng.choice(ents)} is {rng.choice(attrs)}."
    i = int(rng.integers(len(it["statements"]) + 1))
    new = _copy(it, corruption="insert_irrelevant", corrupted_index=i)
    new["statements"].insert(i, fact)
    new["useful"].insert(i, False)
    new["step"].insert(i, -1)
    new["group"] = len(new["statements"])
    return new


# Corruptions that cannot change the gold answer (a new entity's fact touches no other entity; the
# order of statements is no part of the logic): kept without the solver.
SAME_ANSWER = ("shuffle", "insert_irrelevant")
CORRUPTIONS = {
    "negate_unused": negate_unused,
    "negate_used": negate_used,
    "shuffle": shuffle,
    "insert_irrelevant": insert_irrelevant,
}


def corrupt_all(items, name, seed, style="grammatical", world="CWA", words=("True", "False")):
    """(kept indices, corrupted items, skipped counts) for one corruption.

    Every corrupted item's answer is derived by logic.answer (see the module docstring); items
    it cannot apply to, or whose answer cannot be derived, are skipped and counted."""
    rng = np.random.default_rng(seed)
    fn = CORRUPTIONS[name]
    keep, out, skipped = [], [], {}

    def skip(why):
        skipped[why] = skipped.get(why, 0) + 1

    for i, it in enumerate(items):
        c = fn(it, rng, style)
        if c is None:
            skip("not applicable")
            continue
        if name in SAME_ANSWER:  # the answer cannot change: no solver needed
            c["answer"], c["answer_changed"] = it["answer"], False
            keep.append(i)
            out.append(c)
            continue
        clean = logic.answer(it["statements"], it["question"], world)
        if clean is None:
            skip(f"the solver cannot read {logic.unreadable(it['statements'] + [it['question']])!r}")
            continue
        if clean != it["answer"]:
            skip(f"the solver does not reproduce the clean answer ({world})")
            continue
        gold = logic.answer(c["statements"], c["question"], world)
        if gold is None:
            skip(f"the solver cannot read {logic.unreadable(c['statements'])!r}")
            continue
        if gold not in words:
            skip(f"the corrupted answer is {gold}, not one of {'/'.join(words)}")
            continue
        c["answer"], c["answer_changed"] = gold, gold != it["answer"]
        keep.append(i)
        out.append(c)
    if skipped:
        top = sorted(skipped.items(), key=lambda kv: -kv[1])
        log.info(
            "%s: %d of %d items skipped: %s%s",
            name,
            len(items) - len(keep),
            len(items),
            ", ".join(f"{v} ({k})" for k, v in top[:5]),
            f", and {len(top) - 5} other reasons" if len(top) > 5 else "",
        )
    return keep, out, skipped


def pearson_ci(x, y, z=1.959964):
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4 or x.std() == 0 or y.std() == 0:
        return {"r": None, "ci95": None, "n": n, "note": "undefined (fewer than 4 subsets or no variation)"}
    r = float(np.corrcoef(x, y)[0, 1])
    zr, se = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1 / np.sqrt(n - 3)
    return {"r": r, "ci95": [float(np.tanh(zr - z * se)), float(np.tanh(zr + z * se))], "n": n}


def binned(x, y, n_bins):
    x, y = np.asarray(x, float), np.asarray(y, float)
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (x >= lo) & ((x <= hi) if hi == edges[-1] else (x < hi))
        if m.any():
            out.append(
                {
                    "s_p2_low": float(lo),
                    "s_p2_high": float(hi),
                    "n": int(m.sum()),
                    "delta_acc_mean": float(y[m].mean()),
                    "delta_acc_std": float(y[m].std()),
                }
            )
    return out


def subset_study(items, feats, ctl_feats, correct_clean, correct_corr, keep, n_subsets, size, seed, folds, n_bins):
    """S_P2 of random clean subsets (of the kept items) against their accuracy change."""
    rng = np.random.default_rng(seed)
    keep = np.asarray(keep)
    if size < 2 or size >= len(keep):
        raise MechprobeError(
            f"subset_size={size}: subsets must hold at least 2 and fewer than the {len(keep)} items this corruption "
            "applies to (otherwise every subset is the same set); lower subset_size or raise limit"
        )
    rows = []
    for s in range(n_subsets):
        j = rng.choice(len(keep), size, replace=False)  # positions within keep
        idx = keep[j]
        lab = ([items[i]["useful"] for i in idx], [items[i]["step"] for i in idx])
        L = feats[idx[0]].shape[1]
        _, f_m = probe_f1(ProbeData([feats[i] for i in idx], *lab), list(range(L)), folds, seed + s)
        ctl = [probe_f1(ProbeData([cf[i] for i in idx], *lab), list(range(L)), folds, seed + s)[1] for cf in ctl_feats]
        s_p2 = [score(f_m, c) for c in ctl]
        s_p2 = [v for v in s_p2 if v is not None]
        if not s_p2:
            continue
        rows.append(
            {
                "s_p2": float(np.mean(s_p2)),
                "acc_clean": float(correct_clean[idx].mean()),
                "acc_corrupted": float(correct_corr[j].mean()),
            }
        )
    if not rows:
        raise MechprobeError(
            "S_P2 is undefined on every subset (all useful statements share one step: use depth >= 1 questions)"
        )
    x = [r["s_p2"] for r in rows]
    d = [r["acc_corrupted"] - r["acc_clean"] for r in rows]
    return {"subsets": rows, "correlation": pearson_ci(x, d), "bins": binned(x, d, n_bins)}
