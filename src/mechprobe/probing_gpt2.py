"""Probe GPT-2 models finetuned on the k-th smallest task (run_probing_gpt2.sh).

For each (model, dataset) pair: capture the last input token's attention to every position
on N test lists, build each number's feature (its attention over layers, head-averaged,
each example divided by its max), and run the two kNN probes against random-init controls
of the same architecture (one per seed) and, when given, the pretrained model.
"""

import argparse
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import knockout as ko
from . import ksmallest as ks
from . import plots
from .cli import DefaultsHelp, add_threads_arg, at_least_two, positive_int, run_main, seed_int
from .features import normalized_entropy
from .models import attention_modules, load_model, load_tokenizer, random_control
from .probing import ProbeData, head_map, predicted_useful, run_probe, selectivity
from .runs import run_folder, write_config, write_json
from .utils import MechprobeError, check_device, distinct_seeds, get_logger, seed_everything, set_threads

log = get_logger()


def probe_inputs(model, ids, records, batch_size, normalize, per_head, desc, p2_labels="answer"):
    """(ProbeData of the probe's features, ProbeData of per-head features for the head map, rows, logits)."""
    rows, logits = ks.last_token_attention(model, ids, batch_size, desc)
    lab = ([r["useful"] for r in records], [r["step"] for r in records], p2_labels)
    data = ProbeData(ks.features_from_rows(rows, normalize, per_head), *lab)
    heads = ProbeData(ks.features_from_rows(rows, normalize, True), *lab)
    return data, heads, rows, logits


@dataclass
class GPT2ProbeSettings:
    """The probe on k-th smallest models (the CLI's options take these defaults, as the script)."""

    split: str = "test"
    n_examples: int = 1024
    seeds: tuple = (0, 1, 2)
    folds: int = 2
    normalize: str = "max"
    per_head: bool = False
    p2_labels: str = "answer"
    batch_size: int = 128
    device: str = "cpu"
    knockout: int = 1


def knockout_gpt2(model, ids, answers, records, data, a):
    """Knockout study (knockout.py) on the lists: the last token's attention to the gold useful
    numbers, to the ones the P1 probe predicts useful (folds of the first seed), or to as many
    not-useful numbers drawn per seed, blocked in layers >= l."""
    T = ids.shape[1]
    prompts = [{"ids": row.tolist(), "spans": [(i, i + 1) for i in range(T)], "queries": [T - 1]} for row in ids]
    pred = predicted_useful(data, a.folds, a.seeds[0], a.device)
    conds = ko.conditions([r["useful"] for r in records], pred, a.seeds)
    windows = ko.layer_windows(len(attention_modules(model)))
    return ko.knockout_study(model, prompts, answers, conds, windows, batch_size=a.batch_size, desc="knockout")


def _references(model, ids, records, a, pretrained):
    """The probe's references on the same lists: one random-init control per seed (features and
    per-head features) and, when given, the pretrained model's features."""
    controls, control_heads = [], []
    for seed in a.seeds:
        ctl = random_control(model, seed=seed)
        c, ch, _, _ = probe_inputs(ctl, ids, records, a.batch_size, a.normalize, a.per_head, None, a.p2_labels)
        controls.append(c), control_heads.append(ch)
        del ctl
    ref = None
    if pretrained:
        pm = load_model(pretrained, device=a.device)
        ref = probe_inputs(pm, ids, records, a.batch_size, a.normalize, a.per_head, "capture pretrained", a.p2_labels)
        ref = ref[0]
        del pm
    return controls, control_heads, ref


def probe_one(model_dir, data_dir, a, pretrained=None):
    """Probe one finetuned model on its dataset's lists against random-init controls (one per
    seed) and, when given, the pretrained model; `a` is a GPT2ProbeSettings."""
    model = load_model(model_dir, device=a.device)
    tok = load_tokenizer(model_dir)
    meta = ks.load_meta(data_dir)
    records = ks.load_split(data_dir, a.split)[: a.n_examples]
    ids, answers = ks.encode_records(tok, records)
    ks.check_fits(model, ids, data_dir)
    data, heads, rows, logits = probe_inputs(
        model, ids, records, a.batch_size, a.normalize, a.per_head, f"capture {Path(model_dir).name}", a.p2_labels
    )
    acc = ks.answer_accuracy(logits, answers)
    controls, control_heads, ref = _references(model, ids, records, a, pretrained)
    res = run_probe(data, controls, a.seeds, a.folds, ref, device=a.device)
    res["head_map"] = head_map(heads, control_heads, a.seeds, a.folds, a.device)
    # beside it, each head's attention entropy over the numbers (mean over lists; 1 = uniform)
    res["head_map"]["entropy"] = normalized_entropy(rows).mean(0).tolist()  # (L, H)
    # Hewitt and Liang's control task: the surface type of a statement is the number's value
    res.update(selectivity(data, np.concatenate([r["numbers"] for r in records]), a.seeds, a.folds, a.device))
    if a.knockout:
        res["knockout"] = knockout_gpt2(model, ids, answers, records, data, a)
    head_avg = rows.mean(2)  # (N, L, T)
    res.update(
        {
            "model": str(model_dir),
            "data_dir": str(data_dir),
            "k": meta["k"],
            "accuracy": acc,
            "p2_labels": a.p2_labels,
            "sink_attention_first_position": head_avg[:, :, 0].mean(0).tolist(),
            "attention_to_useful": (head_avg * torch.tensor([r["useful"] for r in records], dtype=torch.float)[:, None])
            .sum(-1)
            .mean(0)
            .tolist(),
            "layers": int(rows.shape[1]),
            "heads": int(rows.shape[2]),
        }
    )
    return res


def fmt(s):
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if "mean" in s else f"undefined ({s['undefined']})"


OUTPUTS = (
    "probe_results.json",
    "config.json",
    "probe_by_layer.png",
    "probe_by_k.png",
    "probe_by_head_k0.png",
    "probe_by_head_k1.png",
    "probe_by_head_k2.png",
    "probe_by_head_k3.png",
    "knockout_k*.png",
    "selectivity_k*.png",
)


def parser():
    p = argparse.ArgumentParser(
        description="MechanisticProbe on GPT-2 models finetuned on the k-th smallest task.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--models", nargs="+", default=["runs/finetune_gpt2_k1/best"], help="finetuned model folders (one per k)"
    )
    p.add_argument(
        "--data-dirs",
        nargs="+",
        default=["data/ksmallest/min01"],
        help="dataset folder of each model (same order); k is read from its meta.json",
    )
    p.add_argument("--pretrained", default="", help="optional pretrained-not-finetuned model folder (second reference)")
    p.add_argument("--out-dir", default="runs/probing_gpt2")
    p.add_argument("--split")
    p.add_argument("--n-examples", type=at_least_two, help="test lists to probe")
    p.add_argument("--seeds", type=seed_int, nargs="+", help="seeds of the random-init controls and the folds")
    p.add_argument("--folds", type=at_least_two, help="cross-validation folds, grouped by example")
    p.add_argument(
        "--normalize",
        choices=["max", "none"],
        help="divide each example's matrix by its max (as the paper)",
    )
    p.add_argument("--per-head", action="store_true", help="per-head features instead of the head average")
    p.add_argument(
        "--p2-labels",
        choices=["answer", "rank"],
        help="P2 classes: answer = the answer vs the other useful numbers (the original's two classes); "
        "rank = each useful number's rank (k+1 classes); the same at k = 1",
    )
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--device")
    p.add_argument(
        "--knockout",
        type=int,
        choices=[0, 1],
        help="1: attention knockout of the gold / probe-predicted useful / random not-useful numbers",
    )
    add_threads_arg(p)
    p.set_defaults(**{f.name: f.default for f in fields(GPT2ProbeSettings)})
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    a.seeds = list(a.seeds)
    check_device(a.device)
    a.threads = set_threads(a.threads)
    if hasattr(a, "seeds"):
        distinct_seeds(a.seeds)
    with run_folder(a.out_dir, OUTPUTS, owner="probing_gpt2"):
        return run(a)


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    if len(a.models) != len(a.data_dirs):
        raise MechprobeError(
            f"{len(a.models)} models but {len(a.data_dirs)} data directories: give one data directory per model"
        )
    seed_everything(a.seeds[0])
    out = Path(a.out_dir)
    t0 = time.time()
    results = []
    for m, d in zip(a.models, a.data_dirs):
        log.info("probing %s on %s", m, d)
        st = GPT2ProbeSettings(**{f.name: getattr(a, f.name) for f in fields(GPT2ProbeSettings)})
        r = probe_one(m, d, st, a.pretrained or None)
        results.append(r)
        log.info(
            "selectivity (F1 real - F1 control task): P1 %s, P2 %s", fmt(r["selectivity_p1"]), fmt(r["selectivity_p2"])
        )
        log.info(
            "k=%d acc=%.4f  S_P1=%s  S_P2=%s  (F1 model %s / control %s)",
            r["k"],
            r["accuracy"],
            fmt(r["s_p1"]),
            fmt(r["s_p2"]),
            fmt(r["f1_p1"]),
            fmt(r["control_f1_p1"]),
        )
    write_config(out, a, [f for d in a.data_dirs for f in (Path(d) / f"{a.split}.jsonl", Path(d) / "meta.json")])
    write_json(out / "probe_results.json", {"models": results, "seconds": round(time.time() - t0, 1)})
    plots.probe_curves(results, out / "probe_by_layer.png")
    plots.probe_by_k(results, out / "probe_by_k.png")
    for r in results:
        if "knockout" in r:
            for line in ko.summary_lines(r["knockout"]):
                log.info("k=%d %s", r["k"], line)
            plots.knockout_figure(
                [("", r["knockout"])],
                out / f"knockout_k{r['k']}.png",
                f"attention knockout (k={r['k']}): last token blocked",
            )
        plots.selectivity_figure(r, out / f"selectivity_k{r['k']}.png", f"control-task selectivity (k={r['k']})")
        hm = r["head_map"]
        plots.head_map_figure(
            hm,
            out / f"probe_by_head_k{r['k']}.png",
            f"per-head probing scores (k={r['k']}, vs the same head of the controls)",
        )
    print(f"results: {out / 'probe_results.json'}  plots: {out / 'probe_by_layer.png'}, {out / 'probe_by_k.png'}")
    return results


if __name__ == "__main__":
    run_main(main)
