"""Attention capture against the original code's naive loop and a plain forward pass.

Part 1 (speed): a GPT-2-small-size config (12 layers, 12 heads, 768 wide, random weights),
256 lists of 16 numbers; the last token's rows of every layer.
  naive    : one prompt at a time, output_attentions=True, rows taken afterwards (the original)
  capture  : mechprobe.capture (hooks, batched)
  forward  : the same batches through the same eager model, no attention output, no hooks, the
             LM head on the last position only (as capture does; the original computed every position)
Part 2 (memory): a LLaMA-architecture config, one 2,048-token prompt, 8 query rows; growth of
the peak resident memory (VmHWM, reset before the forward) during the forward, each variant in
a fresh process, with output_attentions=True against capture.
Last line: speedup_vs_naive=<x> overhead_vs_forward=<y> memory_ratio=<z>
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768)
    return GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()


def best_of(fn, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


@torch.no_grad()
def speed(n_lists, batch_size, repeat):
    from mechprobe.capture import capture

    model = gpt2_small()
    ids = torch.randint(0, 50257, (n_lists, 16), generator=torch.Generator().manual_seed(0))
    q = torch.full((batch_size, 1), 15)
    mask = torch.ones(batch_size, 16, dtype=torch.long)

    def naive():
        out = []
        for i in range(n_lists):
            att = model(input_ids=ids[i : i + 1], output_attentions=True).attentions
            out.append(torch.stack([a[0, :, -1] for a in att]))
        return torch.stack(out)

    def ours():
        return torch.cat(
            [capture(model, ids[s : s + batch_size], mask, q).rows[:, :, :, 0] for s in range(0, n_lists, batch_size)]
        )

    def forward():
        for s in range(0, n_lists, batch_size):
            model(input_ids=ids[s : s + batch_size], attention_mask=mask, logits_to_keep=1)

    a, b = naive(), ours()  # warm-up, and the two must agree
    assert torch.allclose(a, b, atol=1e-5), "capture differs from output_attentions"
    t_naive = best_of(naive, repeat)
    t_ours = best_of(ours, repeat)
    t_fwd = best_of(forward, repeat)
    return t_naive, t_ours, t_fwd


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """VmHWM: the peak resident set of this process image (unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


@torch.no_grad()
def memory_child(mode, T, layers, heads, hidden):
    """Run in a fresh process: peak RSS growth (MiB) of one forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechprobe.capture import capture

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=T,
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    ids = torch.randint(0, 1000, (1, T))
    model(input_ids=ids[:, :8])
    reset_peak()
    base = rss_mb()
    q = torch.arange(T - 8, T)[None]
    if mode == "output_attentions":
        att = model(input_ids=ids, output_attentions=True).attentions
        rows = torch.stack([a[0][:, q[0]] for a in att])
    else:
        rows = capture(model, ids, torch.ones_like(ids), q, method="hooks" if mode == "hooks" else "auto")[0]
    peak = peak_rss_mb()
    print(json.dumps({"delta_mb": peak - base, "shape": list(rows.shape)}))


def memory(T, layers, heads, hidden):
    res = {}
    for mode in ("output_attentions", "capture", "hooks"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                mode,
                "--T",
                str(T),
                "--layers",
                str(layers),
                "--heads",
                str(heads),
                "--hidden",
                str(hidden),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lists", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--memory-child", default="")
    a = p.parse_args()
    if a.memory_child:
        return memory_child(a.memory_child, a.T, a.layers, a.heads, a.hidden)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t_naive, t_ours, t_fwd = speed(a.lists, a.batch_size, a.repeat)
    print(
        f"GPT-2 small, {a.lists} lists x 16 tokens: naive loop {t_naive:.2f} s, capture {t_ours:.2f} s, plain "
        f"forward {t_fwd:.2f} s"
    )
    mem = memory(a.T, a.layers, a.heads, a.hidden)
    print(
        f"LLaMA config ({a.layers} layers, {a.heads} heads, {a.hidden} wide), {a.T} tokens, 8 query rows: "
        f"peak growth output_attentions {mem['output_attentions']['delta_mb']:.0f} MiB, capture "
        f"{mem['capture']['delta_mb']:.0f} MiB "
        f"(hooks method: {mem['hooks']['delta_mb']:.0f} MiB)"
    )
    print(
        f"speedup_vs_naive={t_naive / t_ours:.2f} overhead_vs_forward={t_ours / t_fwd:.2f} "
        f"memory_ratio={mem['capture']['delta_mb'] / mem['output_attentions']['delta_mb']:.3f}"
    )


if __name__ == "__main__":
    main()
