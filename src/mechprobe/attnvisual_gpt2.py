"""Attention visualisation on the k-th smallest task (run_attnvisual_gpt2.sh).

For each model, M[s, l] = mean over test lists of the last token's head-averaged attention
at layer l to statement s, with statements in position order (s = position) and in value-rank
order (s = rank: 0 = smallest). Models are drawn side by side on one colour scale.
One example is also drawn as a tree: the gold tree next to the tree the probe predicts for it
(kNN P1 and P2 trained on the other test lists), with the attention each number receives.
"""

import argparse
from pathlib import Path

import numpy as np

from . import htmlview, plots
from . import ksmallest as ks
from .cli import DefaultsHelp, add_threads_arg, at_least_two, nonneg_int, run_driver, run_main, seed_int
from .models import load_model, load_tokenizer, random_control
from .runs import write_config, write_json
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()


OUTPUTS = (
    "attention_matrices.json",
    "config.json",
    "attention_rank.png",
    "attention_rank.pdf",
    "attention_position.png",
    "attention_position.pdf",
    "tree_example.png",
    "attention_view.html",
)


def parser():
    p = argparse.ArgumentParser(
        description="Heatmaps of the last token's attention to each number, per layer.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--models", nargs="+", default=["runs/finetune_gpt2_k1/best"], help="finetuned model folders")
    p.add_argument("--pretrained", default="", help="optional pretrained-not-finetuned folder")
    p.add_argument("--data-dir", default="data/ksmallest/min01")
    p.add_argument("--out-dir", default="runs/attnvisual_gpt2")
    p.add_argument("--n-examples", type=at_least_two, default=1000)
    p.add_argument("--example", type=nonneg_int, default=0, help="test list drawn as a tree (0: the first)")
    p.add_argument(
        "--view-items", type=int, default=8, help="lists in the interactive view attention_view.html (0: no view)"
    )
    p.add_argument("--no-control", action="store_true", help="leave out the random-init control")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="cpu")
    add_threads_arg(p)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


def example_tree(name, rows, records, trees, i):
    """List i as its gold tree, the tree the probe predicts for it, and the attention it receives."""
    return {
        "model": name,
        "numbers": records[i]["numbers"],
        "gold_step": records[i]["step"],
        "pred_step": trees[i],
        "attention": rows[i].mean(1).T.tolist(),
    }


def draw_heatmaps(mats, records, out):
    """attention_rank.png/.pdf and attention_position.png/.pdf: the models side by side, one colour scale."""
    names = list(mats)
    T, k = len(records[0]["numbers"]), records[0]["k"]
    vmax = max(np.max(mats[n][o]) for n in names for o in ("position", "rank"))
    title = f"last token's head-averaged attention, mean over {len(records)} test lists (k={k})"
    labels = {
        "rank": [f"rank {r}" + (" *" if r <= k else "") for r in range(T)],
        "position": [f"pos {t}" for t in range(T)],
    }
    for order, ylab in labels.items():
        plots.heatmap_grid(
            [mats[n][order] for n in names],
            [f"{n} (acc {mats[n]['accuracy']:.2f})" for n in names],
            out / f"attention_{order}.png",
            ylabels=ylab,
            ylabel=f"numbers in {order} order",
            vmin=0,
            vmax=vmax,
            pdf=True,
            suptitle=title,
        )


def _capture_models(named, records, a):
    """Per model (and one random-init control): mean attention by position and by rank, accuracy;
    the example tree and the HTML view from the last model. Returns (matrices, tree, view)."""
    mats, tree, view = {}, None, []
    for name, path in named:
        model, tok = load_model(path, device=a.device), load_tokenizer(path)
        ids, answers = ks.encode_records(tok, records)
        ks.check_fits(model, ids, a.data_dir)
        todo = [(name, model)] + (
            [("random-init control", random_control(model, a.seed))]
            if not a.no_control and name != "pretrained" and "random-init control" not in mats
            else []
        )
        for nm, m in todo:
            rows, logits = ks.last_token_attention(m, ids, desc=f"capture {nm}")
            pos, rank = ks.mean_matrices(rows, records)
            mats[nm] = {
                "position": pos.tolist(),
                "rank": rank.tolist(),
                "accuracy": ks.answer_accuracy(logits, answers),
            }
            if tree is None and nm == named[-1][0]:
                trees = ks.probe_trees(rows, records, a.seed)
                tree = example_tree(nm, rows, records, trees, a.example)
                view = htmlview.list_examples(tok, ids, rows, records, trees, logits, a.view_items)
    return mats, tree, view


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seed)
    out = Path(a.out_dir)
    records = ks.load_split(a.data_dir, "test")[: a.n_examples]
    if a.example >= len(records):
        raise MechprobeError(
            f"example={a.example}: expected a test list among the {len(records)} read (0 to {len(records) - 1})"
        )
    named = ([("pretrained", a.pretrained)] if a.pretrained else []) + [
        (Path(m).parent.name if Path(m).name in ("best", "last") else Path(m).name, m) for m in a.models
    ]
    mats, tree, view = _capture_models(named, records, a)
    k = records[0]["k"]
    draw_heatmaps(mats, records, out)
    plots.tree_figure(
        tree["numbers"],
        tree["gold_step"],
        tree["pred_step"],
        tree["attention"],
        out / "tree_example.png",
        title=f"test list {a.example}: gold vs probe ({tree['model']})",
    )
    write_json(
        out / "attention_matrices.json", {"models": mats, "tree_example": tree, "k": k, "n_examples": len(records)}
    )
    if view:
        htmlview.write_view(
            out / "attention_view.html", view, f"{tree['model']}: the last token's attention to each number (k={k})"
        )
    write_config(out, a, [Path(a.data_dir) / "test.jsonl", Path(a.data_dir) / "meta.json"])
    print(
        f"results: {out / 'attention_matrices.json'}  plots: {out}/attention_rank.png, attention_position.png (+ "
        ".pdf), tree_example.png, attention_view.html"
    )
    return mats


if __name__ == "__main__":
    run_main(main)
