"""ProofWriter in context: accuracy and the MechanisticProbe (run_probing_proofwriter.sh).

Data: the original release (`<data-dir>/CWA/depth-N/meta-<split>.jsonl`, filtered as in the
paper: proofs present, no NAF, no OR, QDep in --depths, capped per group), generated
theories in that format when --generate is given and the folder holds none, or Logic-LLM's
processed file (a .json: accuracy only, it has no proofs).
"""

import argparse
from pathlib import Path

from . import plots, shortcuts
from .cli import DefaultsHelp, nonneg_int, run_driver, run_main
from .incontext import pick_demos
from .llmcli import (
    add_model_args,
    load_args,
    load_items_args,
    probe_settings,
    prompt_builder,
    write_view,
)
from .llmprobe import (
    item_subsets,
    knockout_items,
    masking_items,
    model_info,
    probe_items,
    report,
    report_knockout,
)
from .proofwriter import statement_type
from .runs import write_config, write_json
from .utils import get_logger, seed_everything

log = get_logger()


OUTPUTS = (
    "probe_results.json",
    "config.json",
    "accuracy_by_group.png",
    "accuracy_by_depth.png",
    "probe_by_group.png",
    "probe_by_depth.png",
    "probe_by_layer.png",
    "probe_by_head.png",
    "selectivity.png",
    "knockout*.png",
    "masking.png",
    "attention_view.html",
)


def parser():
    p = argparse.ArgumentParser(
        description="ProofWriter: in-context accuracy and the MechanisticProbe on a causal LM.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--data",
        help="ProofWriter folder (with CWA/depth-N/), one meta-*.jsonl, or Logic-LLM's dev.json (default: "
        "data/proofwriter/reasoner for --model reasoner, else data/proofwriter/synthetic)",
    )
    p.add_argument(
        "--generate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write synthetic theories into --data when it holds none",
    )
    p.add_argument("--setting", default="CWA", choices=["CWA", "OWA"])
    p.add_argument("--split", default="test")
    p.add_argument(
        "--depth-folder",
        type=int,
        default=None,
        help="read only this depth-N folder (default: every depth-N folder of the split, pooled)",
    )
    p.add_argument("--depths", type=int, nargs="+", default=[0, 1], help="question depths (QDep) kept")
    p.add_argument("--groups", type=int, nargs="*", default=None, help="numbers of statements kept (default: all)")
    p.add_argument("--max-per-group", type=int, default=1024)
    p.add_argument(
        "--masking-items",
        type=nonneg_int,
        default=128,
        help="head masking (random heads vs lowest / highest attention entropy first; needs --head-map 1) on at "
        "most this many questions (0: none)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed questions instead of stopping")
    p.add_argument(
        "--naf", action="store_true", help="generated theories get rules with negated conditions (negation as failure)"
    )
    add_model_args(p, "runs/probing_proofwriter", limit=0, n_demos=None, knockout_items=128)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


def baselines(res, items, pool, words):
    """The shortcut baselines (shortcuts.py) on the run's questions, trained on the demonstration pool
    when it is apart from them; logged beside the model's accuracy for all items and each depth."""
    train = pool if pool and {it["id"] for it in pool}.isdisjoint(it["id"] for it in items) else []
    out = shortcuts.accuracies(train, items, item_subsets(items), words)
    for name in ("all", "depth=0", "depth=1"):
        if name in out:
            acc = res["subsets"].get(name, {}).get("accuracy")
            log.info(
                "%s: accuracy %s; shortcuts on the same questions: %s",
                name,
                "-" if acc is None else f"{acc:.3f}",
                ", ".join(f"{b} {v:.3f}" for b, v in out[name].items()),
            )
    return out


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seeds[0])
    out = Path(a.out_dir)
    items, pool, words, source = load_items_args(a)
    if a.limit:
        items = items[: a.limit]
    demos = pick_demos(items, a.n_demos, a.seeds[0], pool)
    texts = [s for it in items + pool for s in it["statements"] + [it["question"]]]
    tok, model, mpath = load_args(a, texts, out)
    builder = prompt_builder(
        a, tok, suffix="True or False?" if words == ["True", "False"] else "True, False, or Unknown?"
    )
    st = probe_settings(a)
    res, feats, scores = probe_items(
        st, tok, model, items, demos, builder, words, source, statement_type=statement_type
    )
    res.update({"model": mpath, "data": source})
    res["baselines"] = baselines(res, items, pool, words)
    res["answers"] = shortcuts.answer_profile(items, scores, words)
    log.info("answers: %s", ", ".join(f"{k} {v}" for k, v in res["answers"].items()))
    if a.knockout_items:
        res["knockout"] = knockout_items(st, tok, model, items, demos, builder, words, source, feats, a.knockout_items)
    if a.masking_items and res.get("head_map", {}).get("entropy") is not None:
        ent = res["head_map"]["entropy"]
        res["masking"] = masking_items(st, tok, model, items, demos, builder, words, source, ent, a.masking_items)
    write_config(
        out,
        a,
        source.split(", "),
        **model_info(model),
    )
    write_json(out / "probe_results.json", res)
    report(res, out, "ProofWriter")
    if "knockout" in res:
        report_knockout(res["knockout"], out, "ProofWriter attention knockout")
    if "masking" in res:
        title = f"ProofWriter, {res['masking']['n_items']} questions: heads masked by attention entropy"
        plots.pruning_curves(res["masking"], out / "masking.png", orders=("statement",), title=title)
    write_view(a, st, tok, model, items, demos, builder, words, source, feats, f"ProofWriter: {mpath}")
    print(
        f"results: {out / 'probe_results.json'}  plots: {out}/accuracy_by_group.png, probe_by_group.png, "
        "probe_by_depth.png, probe_by_layer.png"
    )
    return res


if __name__ == "__main__":
    run_main(main)
