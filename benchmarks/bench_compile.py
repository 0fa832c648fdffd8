"""Eager vs torch.compile'd training steps of the ProofWriter reasoner (run_finetune_proofwriter.sh,
--compile 0 / 1).

The same packed batches (64 questions with their recall segments, as the default draws them) are
trained on two copies of the default 4-layer, 128-wide model, one eager and one compiled
(`Trainer(compile=True)`: torch.compile with dynamic shapes), bf16 autocast where the CPU has it,
alternating blocks of steps so that both see the same machine. Before timing, both take the first
batch in fp32 and their losses are compared (the compiled graph computes the same function), then a
few steps each warm up (the compiled graph is built there; its cost is printed). Generates a small
dataset (400 theories of the default groups) in a temporary folder. Time it alone on the machine.

    python benchmarks/bench_compile.py       # about 2 minutes on 2 cores
Last line: eager_s_per_step=... compiled_s_per_step=... speedup=...
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mechprobe import reasoner as rs  # noqa: E402
from mechprobe.training import Trainer, bf16_fast  # noqa: E402
from reasoner_steps import check_first_losses, seconds_per_step, small_splits  # noqa: E402

WARM, STEPS, BLOCK = 10, 80, 10


def main():
    splits, tok = small_splits()
    task = rs.PromptTask(tok, splits, 64, 0, recall=True)
    batches = (task.epoch_batches(1) + task.epoch_batches(2))[: 1 + WARM + STEPS]
    bf16 = bf16_fast("cpu")
    trainers = {
        c: Trainer(
            rs.build_model(tok, 4, 128, 4, seed=0),
            lr=5e-4,
            weight_decay=0.01,
            warmup=10,
            total=10_000,
            dev="cpu",
            lm_weight=1.0,
            recall_weight=1.0,
            compile=c,
        )
        for c in (False, True)
    }
    runs = {c: (trainers[c], task) for c in trainers}
    check_first_losses(
        runs, batches[0], {False: "eager", True: "compiled"}, "the compiled loss differs from the eager one"
    )
    for c in trainers:
        t = time.perf_counter()
        for idx in batches[1 : 1 + WARM]:
            trainers[c].train_step(*task.batch(idx), use_bf16=bf16)
        print(f"{WARM} warm-up steps, {'compiled' if c else 'eager'}: {time.perf_counter() - t:.1f} s")
    per_step = seconds_per_step(runs, batches[1 + WARM :], BLOCK, bf16)
    print(f"{STEPS} steps of 64 packed questions with recall segments, bf16 autocast: {bf16}")
    eager, comp = per_step[False], per_step[True]
    print(f"eager_s_per_step={eager:.3f} compiled_s_per_step={comp:.3f} speedup={eager / comp:.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
