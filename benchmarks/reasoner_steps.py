"""Used by bench_compile.py: a small generated ProofWriter dataset and a timer
that trains several copies of the reasoner on the same batches in alternating blocks of steps, so
that every copy sees the same machine (not a benchmark itself)."""

import sys
import tempfile
import time

from mechprobe import reasoner as rs  # the benchmark that imports this module puts src/ on sys.path
from mechprobe.proofwriter_gen import generate


def small_splits(theories=400):
    """Questions of `theories` training theories of the default groups (depth 1) and a tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, 1, (theories, 10, 10), (2, 4, 8, 12, 16, 20, 24), 0, 8)
        splits = {s: rs.read_questions(f) for s, f in rs.split_files(tmp, {"depth": 1}).items()}
    return splits, rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"])


def check_first_losses(runs, idx, names, differ):
    """runs {key: (Trainer, PromptTask)}: one fp32 training step each on the same batch `idx`; prints
    the losses (names {key: label}) and exits with `differ` when they disagree by more than 1e-4
    relative (the copies must compute the same function before their speeds are compared)."""
    loss = {key: tr.train_step(*task.batch(idx), use_bf16=False) for key, (tr, task) in runs.items()}
    print("first batch, fp32: " + ", ".join(f"{names[k]} loss {v:.6f}" for k, v in loss.items()))
    ref = next(iter(loss.values()))
    if any(abs(v - ref) > 1e-4 * abs(ref) for v in loss.values()):
        sys.exit(differ)


def seconds_per_step(runs, batches, block, bf16):
    """runs {key: (Trainer, PromptTask)}: each trains on every batch (index tensors), block by block in
    turn; returns {key: mean wall seconds per step}."""
    spent = dict.fromkeys(runs, 0.0)
    for b0 in range(0, len(batches), block):
        for key, (tr, task) in runs.items():
            t = time.perf_counter()
            for idx in batches[b0 : b0 + block]:
                tr.train_step(*task.batch(idx), use_bf16=bf16)
            spent[key] += time.perf_counter() - t
    return {key: s / len(batches) for key, s in spent.items()}
