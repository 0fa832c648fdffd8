"""AdamW vs Muon training steps of the ProofWriter reasoner (run_finetune_proofwriter.sh,
OPTIMIZER=adamw / muon), and what Muon's own update costs alone.

The same packed batches (64 questions with their recall segments, as the default draws them) are
trained on two copies of the default 4-layer, 128-wide model (eager; bf16 autocast where the CPU has
it), one per optimizer, alternating blocks of steps so that both see the same machine. Before timing,
both take the first batch in fp32 and their losses are compared (the same model and batch: the
optimizers differ only from the first update on). Then the Muon optimizer's step alone (momentum,
the Newton-Schulz iterations on the model's 28 block matrices, 16 attention 128 x 128 and 12 MLP
128 x 512, and the update), on the last batch's gradients, is timed. Generates a small dataset (400
theories of the default groups) in a temporary folder. Time it alone on the machine.

    python benchmarks/bench_optim.py         # about 30 s on 2 cores
Last line: adamw_s_per_step=... muon_s_per_step=... ratio=... muon_update_s=...
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mechprobe import reasoner as rs  # noqa: E402
from mechprobe.training import Trainer, bf16_fast  # noqa: E402
from reasoner_steps import check_first_losses, seconds_per_step, small_splits  # noqa: E402

STEPS, BLOCK = 60, 10


def update_seconds(opt, repeats=20):
    """Mean wall seconds of opt.step() on the gradients its parameters hold (the last training step's)."""
    t = time.perf_counter()
    for _ in range(repeats):
        opt.step()
    return (time.perf_counter() - t) / repeats


def main():
    splits, tok = small_splits()
    task = rs.PromptTask(tok, splits, 64, 0, pack=True, recall=True)
    batches = (task.epoch_batches(1) + task.epoch_batches(2))[: 1 + STEPS]
    bf16 = bf16_fast("cpu")
    trainers = {
        o: Trainer(rs.build_model(tok, 4, 128, 4, seed=0), 5e-4, 0.01, 10, 10_000, "cpu", 1.0, 0, 1.0, optimizer=o)
        for o in ("adamw", "muon")
    }
    runs = {o: (trainers[o], task) for o in trainers}
    check_first_losses(runs, batches[0], {o: o for o in trainers}, "the two copies' first losses differ")
    per_step = seconds_per_step(runs, batches[1:], BLOCK, bf16)
    ns = update_seconds(trainers["muon"].opts[1])
    print(f"{STEPS} steps of 64 packed questions with recall segments, bf16 autocast: {bf16}")
    adam, muon = per_step["adamw"], per_step["muon"]
    print(f"adamw_s_per_step={adam:.3f} muon_s_per_step={muon:.3f} ratio={muon / adam:.2f} muon_update_s={ns:.3f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
