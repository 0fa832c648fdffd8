"""Causal analysis on the k-th smallest task (run_causal_gpt2.sh).

Head entropy. For layer l, head h, let a_n(t) be the last token's attention to position t
in list n (t = 0..T-1, sum_t a_n(t) = 1). The list-averaged distribution in position order is
p(t) = mean_n a_n(t); in rank order p(r) = mean_n a_n(pi_n(r)), pi_n(r) the position of the
r-th smallest number of list n. The normalised entropy of a head is
    E = -(1/log T) sum_t p(t) log p(t)      in [0, 1]
(0: always the same position / rank; 1: uniform). We also report the mean over lists of each
list's own entropy (order-free).

Pruning: mask a growing share of heads (hooks, see masking.py) at random (several seeds),
lowest-entropy first, or highest-entropy first, with heads ordered by rank-order entropy and,
separately, by position-order entropy (the original used both), and measure test accuracy.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from . import ksmallest as ks
from . import plots
from .cli import DefaultsHelp, add_threads_arg, at_least_two, positive_int, run_driver, run_main, seed_int, share
from .masking import flow_attention, mask_heads, pruning_curves
from .models import load_model, load_tokenizer
from .runs import write_config, write_json
from .utils import get_logger, seed_everything

log = get_logger()
PRUNING_ORDERS = ("rank", "position")  # the original pruned by both entropies


def accuracy_masked(model, ids, answers, heads):
    """Test accuracy with `heads` masked (see masking.py)."""
    with mask_heads(model, heads):
        return ks.model_accuracy(model, ids, answers)


OUTPUTS = ("causal_results.json", "config.json", "head_entropy.png", "pruning.png", "attention_flow.png")


def parser():
    p = argparse.ArgumentParser(
        description="Head entropy, head pruning and attention flow on the k-th smallest task.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--model", default="runs/finetune_gpt2_k1/best", help="finetuned model folder")
    p.add_argument("--data-dir", default="data/ksmallest/min01")
    p.add_argument("--out-dir", default="runs/causal_gpt2")
    p.add_argument("--n-examples", type=at_least_two, default=1000, help="test lists")
    p.add_argument("--shares", type=share, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of random masking")
    p.add_argument(
        "--entropy-order",
        default="rank",
        choices=["rank", "position", "per_list"],
        help="which entropy picks the heads masked in the flow case study (pruning is run for rank and position order)",
    )
    p.add_argument(
        "--flow-mask-share", type=share, default=0.4, help="share of lowest-entropy heads masked in the flow case study"
    )
    p.add_argument(
        "--flow-positions",
        type=int,
        nargs="+",
        default=None,
        help="positions of the k+1 useful numbers (rank order); "
        "default: spread over positions 3..T-4 (3 and 12 for k=1, 16 numbers)",
    )
    p.add_argument("--flow-lists", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--device", default="cpu")
    add_threads_arg(p)
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


def entropy_maps(rows, records, out):
    """head_entropy of the captured rows, logged and drawn as head_entropy.png (position and rank order)."""
    ent = ks.head_entropy(rows, records)
    H = rows.shape[2]
    log.info(
        "heads with rank entropy < 0.5: %d; position entropy < 0.2: %d",
        int((ent["rank"] < 0.5).sum()),
        int((ent["position"] < 0.2).sum()),
    )
    title = "normalised entropy of the last token's attention (averaged over lists)"
    plots.heatmap_grid(
        [ent["position"].T, ent["rank"].T],
        ["position order", "rank order"],
        out / "head_entropy.png",
        ylabels=[f"h{h}" for h in range(H)],
        ylabel="head",
        vmin=0,
        vmax=1,
        suptitle=title,
    )
    return ent


def flow_study(model, tok, meta, entropy, a, out):
    """The attention-flow case study: lists with the useful numbers at fixed positions, the
    a.flow_mask_share lowest-entropy heads masked; draws attention_flow.png, returns its numbers."""
    L, H = entropy.shape
    T, k = meta["length"], meta["k"]
    positions = a.flow_positions or [int(x) for x in np.linspace(3, T - 4, k + 1)]
    fids, fans = ks.encode_records(tok, ks.placed_lists(meta["vocab"], T, k, positions, a.flow_lists, a.seed))
    order = np.argsort(entropy.ravel(), kind="stable")
    masked = [(int(i) // H, int(i) % H) for i in order[: int(round(a.flow_mask_share * L * H))]]
    flow = flow_attention(model, fids, masked)
    acc = accuracy_masked(model, fids, fans, masked)
    title = f"attention flow, {len(masked)} lowest-entropy heads masked (acc {acc:.2f}); useful at {positions}"
    plots.attention_flow(flow.numpy(), set(positions), out / "attention_flow.png", title=title)
    return {"positions": positions, "masked_heads": masked, "accuracy_masked": acc, "attention": flow.tolist()}


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seed)
    t0 = time.time()
    out = Path(a.out_dir)
    model = load_model(a.model, device=a.device)
    tok = load_tokenizer(a.model)
    meta = ks.load_meta(a.data_dir)
    records = ks.load_split(a.data_dir, "test")[: a.n_examples]
    ids, answers = ks.encode_records(tok, records)
    ks.check_fits(model, ids, a.data_dir)
    rows, logits = ks.last_token_attention(model, ids, desc="capture")
    L, H, T = rows.shape[1:]
    base_acc = ks.answer_accuracy(logits, answers)
    ent = entropy_maps(rows, records, out)
    log.info("accuracy %.4f; %d layers x %d heads", base_acc, L, H)
    pruning = pruning_curves(
        lambda heads: accuracy_masked(model, ids, answers, heads),
        {o: ent[o] for o in PRUNING_ORDERS},
        a.shares,
        a.seeds,
    )
    plots.pruning_curves(
        pruning,
        out / "pruning.png",
        orders=PRUNING_ORDERS,
        title="head masking: random, and by entropy (rank and position order)",
    )
    k = meta["k"]
    flow = flow_study(model, tok, meta, ent[a.entropy_order], a, out)
    res = {
        "model": a.model,
        "k": k,
        "accuracy": base_acc,
        "layers": L,
        "heads": H,
        "list_length": T,
        "entropy": ent[a.entropy_order].tolist(),
        "entropy_order": a.entropy_order,
        "entropy_position": ent["position"].tolist(),
        "entropy_rank": ent["rank"].tolist(),
        "entropy_per_list": ent["per_list"].tolist(),
        "pruning": pruning,
        "flow": flow,
        "seconds": round(time.time() - t0, 1),
    }
    write_config(out, a, [Path(a.data_dir) / "test.jsonl", Path(a.data_dir) / "meta.json"])
    write_json(out / "causal_results.json", res)
    print(f"results: {out / 'causal_results.json'}  plots: {out}/head_entropy.png, pruning.png, attention_flow.png")
    return res


if __name__ == "__main__":
    run_main(main)
