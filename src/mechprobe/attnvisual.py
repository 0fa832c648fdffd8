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

from . import ksmallest as ks
from . import plots
from .knn import knn_predict
from .models import load_model, load_tokenizer, random_control
from .utils import (
    add_threads_arg,
    at_least_two,
    get_logger,
    run_driver,
    run_main,
    seed_everything,
    write_config,
    write_json,
)

log = get_logger()


def mean_matrices(rows, records):
    """rows (N, L, H, T) -> position-order and rank-order (T, L) means of the head average."""
    avg = rows.mean(2)  # (N, L, T)
    return avg.mean(0).T.numpy(), ks.rank_order(avg, records).mean(0).T.numpy()


def predicted_tree(feats, records, idx):
    """The probe's tree for example idx: P1 and P2 fitted on every other example."""
    X = np.concatenate([f.reshape(len(f), -1) for i, f in enumerate(feats) if i != idx])
    useful = np.concatenate([r["useful"] for i, r in enumerate(records) if i != idx]).astype(int)
    step = np.concatenate([r["step"] for i, r in enumerate(records) if i != idx])
    x = feats[idx].reshape(len(feats[idx]), -1)
    p1 = knn_predict(X, useful, x)
    pred = np.full(len(x), -1)
    if p1.any():
        u = useful == 1
        if len(np.unique(step[u])) > 1:
            pred[p1 == 1] = knn_predict(X[u], step[u], x[p1 == 1])
        else:
            pred[p1 == 1] = step[u][0]
    return pred.tolist()


OUTPUTS = (
    "attention_matrices.json",
    "config.json",
    "attention_rank.png",
    "attention_rank.pdf",
    "attention_position.png",
    "attention_position.pdf",
    "tree_example.png",
)


def parser():
    p = argparse.ArgumentParser(description="Heatmaps of the last token's attention to each number, per layer.")
    p.add_argument("--models", nargs="+", required=True, help="finetuned model folders")
    p.add_argument("--pretrained", default="", help="optional pretrained-not-finetuned folder")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--n-examples", type=at_least_two, default=1000)
    p.add_argument("--example", type=int, default=0, help="test list drawn as a tree")
    p.add_argument("--no-control", action="store_true", help="leave out the random-init control")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_threads_arg(p)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


def example_tree(name, rows, records, i):
    """List i as its gold tree, the tree the probe predicts for it, and the attention it receives."""
    return {
        "model": name,
        "numbers": records[i]["numbers"],
        "gold_step": records[i]["step"],
        "pred_step": predicted_tree(ks.features_from_rows(rows), records, i),
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


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seed)
    out = Path(a.out_dir)
    records = ks.load_split(a.data_dir, "test")[: a.n_examples]
    named = ([("pretrained", a.pretrained)] if a.pretrained else []) + [
        (Path(m).parent.name if Path(m).name in ("best", "last") else Path(m).name, m) for m in a.models
    ]
    mats, tree = {}, None
    for name, path in named:
        model, tok = load_model(path, device=a.device), load_tokenizer(path)
        ids, answers = ks.encode_records(tok, records)
        todo = [(name, model)] + (
            [("random-init control", random_control(model, a.seed))]
            if not a.no_control and name != "pretrained" and "random-init control" not in mats
            else []
        )
        for nm, m in todo:
            rows, logits = ks.last_token_attention(m, ids, desc=f"capture {nm}")
            pos, rank = mean_matrices(rows, records)
            mats[nm] = {
                "position": pos.tolist(),
                "rank": rank.tolist(),
                "accuracy": ks.answer_accuracy(logits, answers),
            }
            if tree is None and nm == named[-1][0]:
                tree = example_tree(nm, rows, records, a.example)
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
    write_config(out, a, [Path(a.data_dir) / "test.jsonl", Path(a.data_dir) / "meta.json"])
    print(
        f"results: {out / 'attention_matrices.json'}  plots: {out}/attention_rank.png, attention_position.png (+ "
        ".pdf), tree_example.png"
    )
    return mats


if __name__ == "__main__":
    run_main(main)
