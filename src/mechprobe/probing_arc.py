"""ARC (EntailmentBank / STREET trees) in context: the MechanisticProbe (run_probing_arc.sh).

Prompt: N demonstrations "<premises> Question: <question> Answer: <answer>" then the query
item in the same form (its answer text included); queries are the question's tokens, keys
each premise's tokens. The probe runs over all items and per proof depth (<= --max-depth).
"""

import argparse
from pathlib import Path

from . import arc
from .cli import DefaultsHelp, run_driver, run_main
from .downloads import check_present
from .incontext import pick_demos
from .llmcli import (
    add_model_args,
    load_args,
    probe_settings,
    prompt_builder,
    write_view,
)
from .llmprobe import (
    knockout_items,
    model_info,
    probe_items,
    report,
    report_knockout,
)
from .runs import write_config, write_json
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()


OUTPUTS = (
    "probe_results.json",
    "config.json",
    "probe_by_depth.png",
    "probe_by_layer.png",
    "probe_by_head.png",
    "accuracy_by_depth.png",
    "attention_view.html",
    "knockout*.png",
)


def parser():
    p = argparse.ArgumentParser(
        description="ARC reasoning trees (EntailmentBank or STREET) probed on a causal LM.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--data",
        default="data/entailment_bank/task_2/dev.jsonl",
        help="EntailmentBank task_1/task_2 .jsonl (task_2 has distractors), or STREET reasoning_annotated_*.jsonl",
    )
    p.add_argument("--format", default="auto", choices=["auto", "entailment_bank", "street"])
    p.add_argument(
        "--demo-data",
        default="",
        help="file to draw demonstrations from (default: the same file, never the item itself)",
    )
    p.add_argument("--max-depth", type=int, default=2, help="keep items whose proof depth is at most this")
    add_model_args(
        p, "runs/probing_arc", knockout_items=32
    )  # ARC's prompts (4 demonstrations) are long: 29 passes each
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


def run(a):
    """The run described by the parsed arguments `a` (see main); returns its results."""
    seed_everything(a.seeds[0])
    out = Path(a.out_dir)
    check_present(a.data)
    fmt = a.format
    if fmt == "auto":
        fmt = "street" if "reasoning_annotated" in Path(a.data).name else "entailment_bank"
    reader = arc.read_street if fmt == "street" else arc.read_entailment_bank
    items = reader(a.data, a.max_depth)
    if a.limit:
        items = items[: a.limit]
    pool = reader(a.demo_data, None) if a.demo_data else items
    if len(pool) < 2:
        raise MechprobeError(f"{a.data}: {len(pool)} item(s): demonstrations need at least 2")
    demos = pick_demos(items, a.n_demos, a.seeds[0], pool)
    texts = [s for it in items + pool for s in it["statements"] + [it["question"], it["answer"]]]
    tok, model, mpath = load_args(a, texts, out)
    builder = prompt_builder(
        a, tok, suffix="", answer_in_query=True, question_prefix="Question: ", answer_prefix=" Answer: "
    )
    st = probe_settings(a)
    res, feats, _ = probe_items(st, tok, model, items, demos, builder, [], a.data, by=("depth",))
    res.update(
        {
            "model": mpath,
            "data": a.data,
            "format": fmt,
            "accuracy": None,
            "accuracy_note": "free-text answers (no options): accuracy is not scored; the answer is part of the prompt",
        }
    )
    write_config(
        out,
        a,
        [a.data] + ([a.demo_data] if a.demo_data else []),
        **model_info(model),
    )
    if a.knockout_items:
        res["knockout"] = knockout_items(st, tok, model, items, demos, builder, [], a.data, feats, a.knockout_items)
    write_json(out / "probe_results.json", res)
    report(res, out, "ARC", key="depth")
    if "knockout" in res:
        report_knockout(res["knockout"], out, "ARC attention knockout")
    write_view(a, st, tok, model, items, demos, builder, [], a.data, feats, f"ARC: {mpath}")
    print(f"results: {out / 'probe_results.json'}  plots: {out}/probe_by_depth.png, probe_by_layer.png")
    return res


if __name__ == "__main__":
    run_main(main)
