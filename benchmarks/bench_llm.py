"""SmolLM2-135M-Instruct (the LLM default) at the default ProofWriter study's prompts.

Part 1, capture against output_attentions and a bare forward: 48 prompts of the default study
(4 demonstrations, generated theories, ~320-480 tokens), batches of 16, fp32:
  forward            the model with SDPA attention, the LM head on the last position only
  capture            mechprobe.capture's rows of the question tokens, whole prompts
  capture_prefix     the same rows with the shared demonstrations run once (prefix.py; the default)
  output_attentions  the eager model with output_attentions=True, rows taken afterwards
Time: best of 3 in this process. Memory: growth of the peak resident set (VmHWM, reset before) over
one batch, each variant in a fresh process.
Part 2 (unless --no-study), the whole default study, timed from the shell: `run_probing_proofwriter.sh`
with its defaults from an empty feature cache, then a rerun that changes only the probe (--folds 3).

    python benchmarks/bench_llm.py              # about 15 minutes on 2 cores; alone on the machine
Last line: capture_vs_forward=... prefix_vs_forward=... output_attentions_vs_forward=...
memory_capture_vs_output_attentions=... study_s=... rerun_s=...
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_extract import best_of, peak_rss_mb, reset_peak, rss_mb  # noqa: E402


def prompts(n):
    """The first n encoded prompts of the default study (data generated as the script would)."""
    from mechprobe.incontext import PromptBuilder, encode_items, pick_demos
    from mechprobe.models import load_tokenizer
    from mechprobe.proofwriter import load_items

    items, pool, words, _ = load_items(ROOT / "data/proofwriter/synthetic", generate=True)
    items = items[:n]
    tok = load_tokenizer("smollm2")
    return encode_items(tok, items, pick_demos(items, 4, 0, pool), PromptBuilder())


def batches(enc, bs):
    from mechprobe.capture import pad_batch, pad_queries

    for s in range(0, len(enc), bs):
        b = enc[s : s + bs]
        ids, mask = pad_batch([e["ids"] for e in b], 0)
        yield b, ids, mask, pad_queries([e["query"] for e in b])


def variants(model, enc, bs):
    """{name: function running every batch}; the rows of capture and output_attentions checked equal."""
    from mechprobe.capture import capture
    from mechprobe.incontext import run_items

    def forward():
        model.set_attn_implementation("sdpa")
        for _, ids, mask, _ in batches(enc, bs):
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        model.set_attn_implementation("eager")

    def ours():
        return [capture(model, ids, mask, q).rows for _, ids, mask, q in batches(enc, bs)]

    def with_prefix():
        model._mechprobe_prefix = None  # the shared prefix is computed inside, once per call
        return run_items(model, enc, [0], batch_size=bs, per_head=True)

    def attentions():
        out = []
        for _, ids, mask, q in batches(enc, bs):
            att = model(input_ids=ids, attention_mask=mask, output_attentions=True, logits_to_keep=1).attentions
            idx = q.clamp(min=0)[:, None, :, None]  # (B, 1, Q, 1)
            rows = [a.gather(2, idx.expand(-1, a.shape[1], -1, a.shape[-1])) for a in att]  # L x (B, H, Q, T)
            out.append(torch.stack(rows, 1) * (q >= 0)[:, None, None, :, None])
        return out

    return {"forward": forward, "capture": ours, "capture_prefix": with_prefix, "output_attentions": attentions}


@torch.no_grad()
def speed(n, bs):
    from mechprobe.models import load_model

    model = load_model("smollm2")
    enc = prompts(n)
    v = variants(model, enc, bs)
    a, b = v["capture"](), v["output_attentions"]()
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-4), "capture differs from output_attentions"
    lens = [len(e["ids"]) for e in enc]
    print(f"{len(enc)} prompts of {min(lens)}-{max(lens)} tokens, batches of {bs}, fp32")
    return {name: best_of(fn, 3) for name, fn in v.items()}


@torch.no_grad()
def memory_child(mode, bs):
    from mechprobe.models import load_model

    model = load_model("smollm2")
    enc = prompts(bs)
    fn = variants(model, enc, bs)[mode]
    model(input_ids=torch.tensor([enc[0]["ids"][:8]]))
    reset_peak()
    base = rss_mb()
    fn()
    print(json.dumps({"delta_mb": peak_rss_mb() - base}))


def memory(bs):
    out = {}
    for mode in ("forward", "capture", "capture_prefix", "output_attentions"):
        p = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--batch-size", str(bs)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(p.stdout.strip().splitlines()[-1])["delta_mb"]
    return out


def study():
    """Seconds of the default study from an empty cache, and of a rerun with --folds 3."""
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, folds in (("first", "2"), ("rerun", "3")):
            env = {**os.environ, "CACHE_DIR": f"{tmp}/cache", "OUT_DIR": f"{tmp}/out{folds}"}
            t = time.perf_counter()
            p = subprocess.run(
                ["bash", str(ROOT / "run_probing_proofwriter.sh"), "--folds", folds],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            times[label] = time.perf_counter() - t
            if p.returncode:
                sys.exit(f"run_probing_proofwriter.sh failed ({p.returncode}):\n{p.stderr[-2000:]}")
            print(f"study, {label} (--folds {folds}): {times[label]:.1f} s")
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-study", action="store_true")
    ap.add_argument("--memory-child", default=None)
    a = ap.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child, a.batch_size)
    t = speed(a.n, a.batch_size)
    for k, v in t.items():
        print(f"time {k}: {v:.2f} s ({v / t['forward']:.2f} x forward)")
    m = memory(a.batch_size)
    for k, v in m.items():
        print(f"peak memory growth {k}: {v:.0f} MiB (one batch of {a.batch_size})")
    st = {"first": float("nan"), "rerun": float("nan")} if a.no_study else study()
    print(
        f"capture_vs_forward={t['capture'] / t['forward']:.2f} "
        f"prefix_vs_forward={t['capture_prefix'] / t['forward']:.2f} "
        f"output_attentions_vs_forward={t['output_attentions'] / t['forward']:.2f} "
        f"memory_capture_vs_output_attentions={m['capture'] / m['output_attentions']:.2f} "
        f"study_s={st['first']:.0f} rerun_s={st['rerun']:.0f}"
    )


if __name__ == "__main__":
    main()
