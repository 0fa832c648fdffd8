"""ProofWriter in context: accuracy and the MechanisticProbe (run_probing_proofwriter.sh).

Data: the original release (`<data-dir>/CWA/depth-N/meta-<split>.jsonl`, filtered as in the
paper: proofs present, no NAF, no OR, QDep in --depths, capped per group), generated
theories in that format when --generate is given and the folder holds none, or Logic-LLM's
processed file (a .json: accuracy only, it has no proofs).
"""
import argparse
from pathlib import Path

from . import proofwriter as pw
from .incontext import PromptBuilder, pick_demos
from .llmprobe import add_model_args, load, probe_items, report
from .utils import MechprobeError, get_logger, run_main, seed_everything, write_json

log = get_logger()


def load_items(a):
    """(items, demo pool, answer words, source name)."""
    path = Path(a.data)
    if path.suffix == ".json":
        items = pw.read_logic_llm(path)
        words = ["True", "False", "Unknown"] if any(it["answer"] == "Unknown" for it in items) else ["True", "False"]
        return items, items, words, str(path)
    if path.suffix == ".jsonl":
        metas, trains = [path], []
    else:
        if not (path / a.setting).is_dir():
            if not a.generate:
                raise MechprobeError(f"{path}: no {a.setting}/depth-N/ folder; point DATA at a ProofWriter release, or set GENERATE=1 to write synthetic theories there")
            from .proofwriter_gen import generate

            log.info("%s holds no ProofWriter data: generating synthetic theories (max depth %d)", path, max(a.depths))
            generate(path, max(a.depths), seed=a.seeds[0], naf=getattr(a, "naf", False))
        metas = pw.find_metas(path, a.split, a.setting, a.depth_folder)
        trains = [m.with_name("meta-train.jsonl") for m in metas if m.name != "meta-train.jsonl"]
        trains = [t for t in trains if t.exists()]
    items = pw.read_meta(metas, tuple(a.depths), a.max_per_group, a.skip_bad, groups=a.groups)
    log.info("read %d questions from %s", len(items), ", ".join(str(m) for m in metas))
    pool = pw.read_meta(trains, tuple(a.depths), a.max_per_group, True, groups=a.groups) if trains else items
    return items, pool, ["True", "False"], ", ".join(str(m) for m in metas)


def main(argv=None):
    p = argparse.ArgumentParser(description="ProofWriter: in-context accuracy and the MechanisticProbe on a causal LM.")
    p.add_argument("--data", required=True, help="ProofWriter folder (with CWA/depth-N/), one meta-*.jsonl, or Logic-LLM's dev.json")
    p.add_argument("--generate", action="store_true", help="write synthetic theories into --data when it holds none")
    p.add_argument("--setting", default="CWA", choices=["CWA", "OWA"])
    p.add_argument("--split", default="test")
    p.add_argument("--depth-folder", type=int, default=None, help="read only this depth-N folder (default: every depth-N folder of the split, pooled)")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 1], help="question depths (QDep) kept")
    p.add_argument("--groups", type=int, nargs="*", default=None, help="numbers of statements kept (default: all)")
    p.add_argument("--max-per-group", type=int, default=1024)
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed questions instead of stopping")
    add_model_args(p)
    a = p.parse_args(argv)
    seed_everything(a.seeds[0])
    out = Path(a.out_dir)
    items, pool, words, source = load_items(a)
    if a.limit:
        items = items[: a.limit]
    demos = pick_demos(items, a.n_demos, a.seeds[0], pool)
    texts = [s for it in items + pool for s in it["statements"] + [it["question"]]]
    tok, model, mpath = load(a, texts, out)
    builder = PromptBuilder(suffix="True or False?" if words == ["True", "False"] else "True, False, or Unknown?")
    res, _, _ = probe_items(a, tok, model, items, demos, builder, words, source)
    res.update({"model": mpath, "data": source})
    write_json(out / "config.json", vars(a))
    write_json(out / "probe_results.json", res)
    report(res, out, "ProofWriter in-context accuracy")
    print(f"results: {out / 'probe_results.json'}  plots: {out}/accuracy_by_group.png, probe_by_group.png, probe_by_depth.png, probe_by_layer.png")
    return res


if __name__ == "__main__":
    run_main(main)
