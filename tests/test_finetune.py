import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechprobe import finetune_gpt2, training
from mechprobe import ksmallest as ks
from mechprobe.models import load_model
from mechprobe.utils import MechprobeError

from .conftest import shared_path

TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--vocab-size",
    "20",
    "--sizes",
    "64",
    "8",
    "8",
    "--batch-size",
    "8",
    "--warmup",
    "1",
    "--lr",
    "3e-3",
    "--threads",
    "1",
]


def args(tmp_path, out="run", *extra):
    return ["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / out), *TINY, *extra]


def test_train_lowers_the_loss_it_records(tmp_path, monkeypatch):
    """finetune_gpt2.train's loss is the cross-entropy of the last-position logits: the first recorded
    value equals it recomputed by hand on the first batch with the initial weights, and 60 steps
    lower it."""
    seen = {}
    real = training.F.cross_entropy

    def spy(logits, target, *a, **k):
        seen.setdefault("first", (logits.detach().clone(), target.clone()))
        return real(logits, target, *a, **k)

    monkeypatch.setattr(training.F, "cross_entropy", spy)
    finetune_gpt2.main(
        args(tmp_path, "run", "--max-steps", "60", "--eval-every", "30", "--lr", "1e-2", "--autocast", "none")
    )
    hist = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["history"]["train"]
    logits, target = seen["first"]
    by_hand = -torch.log_softmax(logits.double(), -1)[torch.arange(len(target)), target].mean().item()
    assert hist[0][1] == pytest.approx(by_hand, rel=1e-5)
    assert abs(by_hand - math.log(22)) < 0.5  # near uniform over the 22 tokens at init
    first, last = np.mean([l for _, l in hist[:10]]), np.mean([l for _, l in hist[-10:]])
    assert last < first - 0.3


def test_train_writes_outputs_and_generates_data(tmp_path, caplog):
    res = finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2"))
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert saved == res and saved["steps"] == 4
    for key in ("test_acc_last", "test_acc_best", "train_seconds", "steps"):
        assert key in saved
    assert (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["k"] == 1
    assert (tmp_path / "data" / "meta.json").exists()
    m = load_model(out / "best")
    assert m.config.n_layer == 1 and m.training is False


def test_resume_continues_from_saved_step(tmp_path, monkeypatch):
    finetune_gpt2.main(args(tmp_path, "ref", "--max-steps", "4", "--eval-every", "2"))
    calls = {"n": 0}
    real = F.cross_entropy

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training.F, "cross_entropy", flaky)
    with pytest.raises(KeyboardInterrupt):
        finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2"))
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.setattr(training.F, "cross_entropy", real)
    res = finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2"))
    assert res["steps"] == 4
    a = load_model(tmp_path / "ref" / "last").state_dict()
    b = load_model(tmp_path / "run" / "last").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])  # resumed run == uninterrupted run


def test_bad_inputs(tmp_path):
    with pytest.raises(MechprobeError, match="nope: model directory not found"):
        finetune_gpt2.main(args(tmp_path, "r", "--model", str(tmp_path / "nope")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{oops")
    with pytest.raises(MechprobeError, match=r"config\.json: line 1: malformed config\.json"):
        finetune_gpt2.main(args(tmp_path, "r", "--model", str(bad)))
    (bad / "config.json").write_text("{}")
    with pytest.raises(MechprobeError, match="no weights"):
        finetune_gpt2.main(args(tmp_path, "r", "--model", str(bad)))
    with pytest.raises(MechprobeError, match="k=16 is outside the list"):
        finetune_gpt2.main(args(tmp_path, "r", "--k", "16"))
    with pytest.raises(MechprobeError, match="tuning='heads'"):
        finetune_gpt2.main(args(tmp_path, "r", "--tuning", "heads", "--max-steps", "1"))
    assert not (tmp_path / "r" / "results.json").exists()


def test_vocab_not_single_token_named(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "gpt2"))
    mdir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_head=2, n_embd=16)).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    ks.write_dataset(tmp_path / "data", [1, 2, 2999, 4] * 4, 1, sizes=(4, 4, 4))
    with pytest.raises(MechprobeError, match="not a single known token.*2999"):
        finetune_gpt2.main(
            ["--model", str(mdir), "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "r")]
        )


def test_no_validation_before_validate_after_but_checkpoints(tmp_path):
    """run_loop(validate_after=5): validation at the eval steps after step 5 and at the last; the
    checkpoint is written at every eval step, validated or not."""

    class Trainer:
        step, total, elapsed, best = 0, 10, 0.0, 2.0  # best 2.0: no accuracy beats it, nothing to save
        history = {"train": [], "val": []}
        model = None

        def train_step(self, ids, mask, answers, use_bf16, weights=None):
            self.step += 1
            return 0.5

        def state(self, settings):
            saved.append(self.step)
            return {"step": self.step}

    class Task:
        def epoch_batches(self, epoch):
            return [None] * 4

        def batch(self, idx):
            return None, None, None

        def accuracy(self, model, split):
            return 0.5

    saved = []
    tr = Trainer()
    training.run_loop(tr, Task(), None, tmp_path, {}, False, eval_every=2, validate_after=5)
    assert [s for s, _ in tr.history["val"]] == [6, 8, 10]
    assert saved == [2, 4, 6, 8, 10] and (tmp_path / "checkpoint.pt").exists()
