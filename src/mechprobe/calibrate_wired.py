"""Calibrate the instrument on a model whose mechanism is known (wired.py): build the untrained
hand-wired lookup for the reasoner's data, save it as a model folder the probing scripts read, and
measure what it does on the depth-0 questions (calibration.json: its verdict's accuracy with a
threshold fitted on dev, its lookup head's attention on the asked fact, the knockout of that fact
against a random other one). Then probe it as any model:

    python -m mechprobe.calibrate_wired --data-dir data/proofwriter/reasoner --out-dir runs/wired
    MODEL=runs/wired/model N_DEMOS=0 DATA=data/proofwriter/reasoner bash run_probing_proofwriter.sh
"""

import argparse
import json
from pathlib import Path

from . import reasoner as rs
from . import wired
from .cli import DefaultsHelp, add_threads_arg, run_driver, run_main, seed_int
from .runs import write_config, write_json
from .utils import MechprobeError, get_logger, seed_everything

log = get_logger()
OUTPUTS = ("calibration.json", "config.json")


def parser():
    p = argparse.ArgumentParser(
        description="Build the hand-wired lookup (a model whose depth-0 mechanism is known) and calibrate on it.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--data-dir", default="data/proofwriter/reasoner", help="the reasoner's data (run_finetune_proofwriter.sh)"
    )
    p.add_argument("--out-dir", default="runs/wired")
    p.add_argument("--seed", type=seed_int, default=0, help="the random weights and the wired codes")
    p.add_argument("--device", default="auto")
    add_threads_arg(p)
    return p


def run(a):
    from .training import save_pretrained_atomic

    meta = Path(a.data_dir) / "meta.json"
    if not meta.exists():
        raise MechprobeError(f"{meta}: not found; run_finetune_proofwriter.sh generates the reasoner's data there")
    files = rs.split_files(a.data_dir, json.loads(meta.read_text()))
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    seed_everything(a.seed)
    tok = rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"])
    model = wired.build(tok, a.seed)
    out = Path(a.out_dir)
    save_pretrained_atomic(model, tok, out / "model")
    write_config(out, vars(a), list(files.values()), params=sum(p.numel() for p in model.parameters()))
    res = wired.calibrate(model, tok, splits["val"], splits["test"], a.seed)
    write_json(out / "calibration.json", res)
    log.info(
        "wired lookup, depth-0 test questions (%d): verdict accuracy %.3f; attention on the asked fact %.3f; "
        "knockout changes %s",
        res["n"],
        res["verdict_accuracy"],
        res["gold_attention"],
        ", ".join(f"{k} {v:.3f}" for k, v in res["knockout_changed"].items()),
    )
    print(f"model: {out / 'model'}  calibration: {out / 'calibration.json'}")
    return res


def main(argv=None):
    a = parser().parse_args(argv)
    return run_driver(a, OUTPUTS, run)


if __name__ == "__main__":
    run_main(main)
