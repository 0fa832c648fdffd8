"""Packed vs padded training steps of the ProofWriter reasoner (run_finetune_proofwriter.sh, PACK=1 / 0).

The same batches (64 questions: whole theories, as PACK=1 draws them) are trained once as padded
prompts and once packed (a theory's questions share one row holding its statements once), on two
copies of the default 4-layer, 128-wide model, bf16 autocast where the CPU has it, alternating
blocks of steps so that both see the same machine. Before timing, the two losses of the first batch
are compared (they must agree: the packed prompts are the same computation). Generates a small
dataset (400 theories of the default groups) in a temporary folder. Time it alone on the machine.

    python benchmarks/bench_pack.py          # about 30 s on 2 cores
Last line: padded_s_per_step=... packed_s_per_step=... speedup=...
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mechprobe import reasoner as rs  # noqa: E402
from mechprobe.training import Trainer, bf16_fast  # noqa: E402
from reasoner_steps import check_first_losses, seconds_per_step, small_splits  # noqa: E402

STEPS, BLOCK = 60, 10


def main():
    splits, tok = small_splits()
    tasks = {p: rs.PromptTask(tok, splits, 64, 0, pack=p) for p in (False, True)}
    batches = tasks[True].epoch_batches(1)[: STEPS + 1]
    bf16 = bf16_fast("cpu")
    trainers = {p: Trainer(rs.build_model(tok, 4, 128, 4, seed=0), 5e-4, 0.01, 10, 10_000, "cpu", 1.0) for p in tasks}
    runs = {p: (trainers[p], tasks[p]) for p in tasks}
    check_first_losses(
        runs, batches[0], {False: "padded", True: "packed"}, "the packed loss differs from the padded one"
    )
    per_step = seconds_per_step(runs, batches[1:], BLOCK, bf16)
    tokens = [sum(len(tasks[True].ids["train"][int(i)]) for i in b) for b in batches[1:]]
    print(f"{STEPS} steps of 64 questions, {sum(tokens) / STEPS:.0f} prompt tokens per step, bf16 autocast: {bf16}")
    pad, packed = per_step[False], per_step[True]
    print(f"padded_s_per_step={pad:.3f} packed_s_per_step={packed:.3f} speedup={pad / packed:.2f}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
