"""Calibration of the null of S (null.py): random models probed against random controls.

A tiny LLaMA config (4 layers, 4 heads, width 64, the word tokenizer of the data) and generated
ProofWriter questions of depth 0 and 1 (N_ITEMS of them, no demonstrations). Each of N_MODELS
"subjects" is a random initialisation (seeds 100, 101, ...) probed against the 3 random-init controls
of seeds 0-2, with the null's bootstrap (DRAWS draws). A subject that learnt nothing should land
inside the null's 95% range about 95% of the time, and below p = 0.05 about 5% of the time; a
planted subject (the useful statements' features raised) should not.

    python benchmarks/bench_null.py                 # about 5 minutes on 2 cores
Last line: models=... inside_null95_p1=... inside_null95_p2=... p_below_0.05_p1=... p_below_0.05_p2=...
planted_p_p1=... planted_p_p2=...
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=40)
    ap.add_argument("--items", type=int, default=120)
    ap.add_argument("--draws", type=int, default=50)
    a = ap.parse_args()

    import torch

    from mechprobe.incontext import PromptBuilder, answer_ids, encode_items, run_items
    from mechprobe.models import load_model, load_tokenizer, random_control
    from mechprobe.probing import ProbeData, run_probe
    from mechprobe.proofwriter import load_items
    from mechprobe.tiny import tiny_llama_dir

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        items, _, words, _ = load_items(Path(tmp) / "pw", generate=True, pool=False)
        items = items[: a.items]
        texts = [s for it in items for s in it["statements"] + [it["question"]]]
        folder = tiny_llama_dir(Path(tmp) / "tiny", texts)
        tok, base = load_tokenizer(folder), load_model(folder)
        enc = encode_items(tok, items, [[] for _ in items], PromptBuilder())
        wid = answer_ids(tok, words)
        lab = ([it["useful"] for it in items], [it["step"] for it in items])
        deep = [it["depth"] >= 1 for it in items]

        def feats(seed):
            return run_items(random_control(base, seed=seed), enc, wid)[0]

        ctls = [ProbeData(feats(s), *lab, p2_examples=deep) for s in (0, 1, 2)]
        rows = []
        for i in range(a.models):
            subject = ProbeData(feats(100 + i), *lab, p2_examples=deep)
            r = run_probe(subject, ctls, [0, 1, 2], curves=False, null_draws=a.draws)
            row = {}
            for k in ("s_p1", "s_p2"):
                nl = r["null"][k]
                s = r[k].get("mean")
                row[k] = (nl["null95"][0] <= s <= nl["null95"][1], nl["p_value"] < 0.05, s, nl["p_value"])
            rows.append(row)
            print(
                f"subject {i:2d}: S_P1 {row['s_p1'][2]:+.3f} (p={row['s_p1'][3]:.3f})  "
                f"S_P2 {row['s_p2'][2]:+.3f} (p={row['s_p2'][3]:.3f})",
                flush=True,
            )
        # a planted subject: a random model's features with the useful statements raised
        f = feats(100)
        planted = [x + 0.05 * np.asarray(u, float)[:, None, None] for x, u in zip(f, lab[0])]
        planted = [x + 0.05 * (np.asarray(st)[:, None, None] == 1) for x, st in zip(planted, lab[1])]
        pr = run_probe(ProbeData(planted, *lab, p2_examples=deep), ctls, [0, 1, 2], curves=False, null_draws=a.draws)
    n = len(rows)
    rate = {k: sum(r[k][0] for r in rows) / n for k in ("s_p1", "s_p2")}
    low = {k: sum(r[k][1] for r in rows) / n for k in ("s_p1", "s_p2")}
    print(
        f"models={n} inside_null95_p1={rate['s_p1']:.3f} inside_null95_p2={rate['s_p2']:.3f} "
        f"p_below_0.05_p1={low['s_p1']:.3f} p_below_0.05_p2={low['s_p2']:.3f} "
        f"planted_p_p1={pr['null']['s_p1']['p_value']:.4f} planted_p_p2={pr['null']['s_p2']['p_value']:.4f}"
    )


if __name__ == "__main__":
    main()
