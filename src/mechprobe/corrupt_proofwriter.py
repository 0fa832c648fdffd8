"""The robustness experiment on corrupted ProofWriter (run_corrupt_proofwriter.sh): the corruptions
of corruptions.py applied to a probed set, accuracy change against the clean subsets' S_P2."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plots
from .cli import DefaultsHelp, positive_int, run_driver, run_main
from .corruptions import CORRUPTIONS, NEW_ENTITIES, corrupt_all, subset_study
from .incontext import pick_demos
from .llmcli import (
    add_model_args,
    load_args,
    load_items_args,
    probe_settings,
    prompt_builder,
)
from .llmprobe import (
    compared_layers,
    control_features,
    encode,
    features,
    model_info,
)
from .runs import write_config, write_json
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()


OUTPUTS = (
    "corrupt_results.json",
    "config.json",
    "corrupt_negate_unused.png",
    "corrupt_negate_used.png",
    "corrupt_shuffle.png",
    "corrupt_insert_irrelevant.png",
)


def parser():
    p = argparse.ArgumentParser(
        description="Corrupted ProofWriter: accuracy change against the probing score S_P2.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--data",
        help="ProofWriter folder (CWA/depth-N/) or a meta-*.jsonl; needs proofs (default: data/proofwriter/reasoner "
        "for --model reasoner, else data/proofwriter/synthetic)",
    )
    p.add_argument(
        "--generate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write synthetic theories into --data when it holds none",
    )
    p.add_argument(
        "--naf", action="store_true", help="generated theories get rules with negated conditions (negation as failure)"
    )
    p.add_argument("--setting", default="CWA", choices=["CWA", "OWA"])
    p.add_argument("--split", default="test")
    p.add_argument(
        "--depth-folder", type=int, default=None, help="read only this depth-N folder (default: every one, pooled)"
    )
    p.add_argument("--depths", type=int, nargs="+", default=[1], help="question depths kept (S_P2 needs >= 1)")
    p.add_argument("--groups", type=int, nargs="*", default=None)
    p.add_argument("--max-per-group", type=int, default=1024)
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=list(CORRUPTIONS))
    p.add_argument(
        "--negation", default="grammatical", choices=["grammatical", "that"], help="'X is not a.' or 'That x is false.'"
    )
    p.add_argument("--n-subsets", type=positive_int, default=200)
    p.add_argument("--subset-size", type=positive_int, default=32)
    p.add_argument("--bins", type=positive_int, default=5)
    add_model_args(p, "runs/corrupt_proofwriter", limit=0, seeds=(0, 1), n_demos=None, probing=False)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


@dataclass
class Clean:
    """The clean prompts and what the model and its controls did on them."""

    items: list
    demos: list
    builder: object  # the incontext.PromptBuilder of the clean prompts (the corrupted ones use it too)
    source: str
    words: list
    word_ids: list
    feats: list
    ctl_feats: list
    scores: np.ndarray
    correct: np.ndarray


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seeds[0])
    out = Path(a.out_dir)
    st = settings(a)
    items, pool, words, source = load_items_args(a)
    if words != ["True", "False"] or items[0]["useful"] is None:
        raise MechprobeError(
            f"{source}: the robustness study needs ProofWriter items with proofs and True/False answers"
        )
    items = items[: a.limit] if a.limit else items
    prepared = {n: corrupt_all(items, n, a.seeds[0], a.negation, a.setting, words) for n in a.corruptions}
    if not any(keep for keep, _, _ in prepared.values()):
        why = "; ".join(
            f"{n}: " + ", ".join(f"{v} x {k}" for k, v in sorted(sk.items(), key=lambda kv: -kv[1])[:3])
            for n, (_, _, sk) in prepared.items()
        )
        raise MechprobeError(f"{source}: no corruption applies to any of the {len(items)} items ({why})")
    demos = pick_demos(items, a.n_demos, a.seeds[0], pool)
    texts = [s for it in items + pool for s in it["statements"] + [it["question"]]]
    tok, model, mpath = load_args(a, texts + [" ".join(NEW_ENTITIES) + " not That is false"], out)
    builder = prompt_builder(a, tok)
    enc, wid = encode(st, tok, items, demos, builder, words, source)
    feats, scores = features(st, model, enc, wid, layers=compared_layers(st, model), desc="clean")
    correct = scores.argmax(1) == np.array([words.index(it["answer"]) for it in items])
    clean = Clean(
        items, demos, builder, source, words, wid, feats, control_features(st, model, enc, wid), scores, correct
    )
    res = {
        "model": mpath,
        "data": source,
        "n_items": len(items),
        "accuracy_clean": float(correct.mean()),
        "corruptions": {},
    }
    for name in a.corruptions:
        res["corruptions"][name] = study_corruption(name, prepared[name], a, clean, tok, model, out)
    write_config(
        out,
        a,
        source.split(", "),
        **model_info(model),
    )
    write_json(out / "corrupt_results.json", res)
    print(f"results: {out / 'corrupt_results.json'}  plots: {out}/corrupt_<corruption>.png")
    return res


def settings(a):
    """The probe settings of the study: no per-head map (it is the probing scripts' job)."""
    st = probe_settings(a)
    st.head_map = 0
    return st


def study_corruption(name, prepared, a, clean, tok, model, out):
    """Score the model on the corrupted prompts (`prepared`: corrupt_all's result for this corruption),
    relate the accuracy change to S_P2 over random subsets; plot it. Returns that corruption's results."""
    keep, cor, skipped = prepared
    if not keep:
        return {"undefined": "applies to no item", "skipped": skipped}
    cenc, _ = encode(
        settings(a), tok, cor, [clean.demos[i] for i in keep], clean.builder, clean.words, f"{clean.source} ({name})"
    )
    _, cscores = features(settings(a), model, cenc, clean.word_ids, desc=name)
    correct_corr = cscores.argmax(1) == np.array([clean.words.index(it["answer"]) for it in cor])
    study = subset_study(
        clean.items,
        clean.feats,
        clean.ctl_feats,
        clean.correct,
        correct_corr,
        keep,
        a.n_subsets,
        a.subset_size,
        a.seeds[0],
        a.folds,
        a.bins,
    )
    n_changed = int(sum(c["answer_changed"] for c in cor))
    res = {
        "n_items": len(keep),
        "skipped": skipped,
        "accuracy_clean": float(clean.correct[keep].mean()),
        "accuracy_corrupted": float(correct_corr.mean()),
        "gold_answer_changed": n_changed / len(keep),
        "n_gold_answers_changed": n_changed,
        "prediction_changed": float(np.mean(cscores.argmax(1) != clean.scores[keep].argmax(1))),
        **study,
    }
    c = study["correlation"]
    r = "undefined" if c["r"] is None else f"{c['r']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"
    log.info(
        "%-18s gold answers changed %d/%d; acc clean %.3f -> corrupted %.3f; r(S_P2, delta acc) = %s",
        name,
        n_changed,
        len(keep),
        res["accuracy_clean"],
        res["accuracy_corrupted"],
        r,
    )
    plots.corruption_figure(study, name, out / f"corrupt_{name}.png")
    return res


if __name__ == "__main__":
    run_main(main)
