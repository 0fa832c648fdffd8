"""Packed prompts (a theory's questions in one row) against the same prompts run apart."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechprobe.capture import pad_batch
from mechprobe.models import last_logits
from mechprobe.packing import common_prefix, pack
from mechprobe.training import Trainer
from mechprobe.utils import MechprobeError

from .conftest import tiny_llama

# two theories: A (prefix 1..6) with three questions, B with one; a duplicate prompt; a question that
# shares more than the statements with another ("Bob is big" / "Bob is not big")
A = [1, 2, 3, 4, 5, 6]
SEQS = [A + [7, 8, 9], A + [7, 10, 8, 9], [11, 12, 13, 14, 15], A + [16, 8, 9], A + [7, 8, 9]]
KEYS = ["A", "A", "B", "A", "A"]


def test_common_prefix_by_hand():
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps its last token
    assert common_prefix([[5, 6]]) == 1
    assert common_prefix([[1, 2], [3, 4]]) == 0


def test_layout_by_hand():
    p = pack(SEQS, KEYS, pad_id=0)
    assert p.ids.shape == (2, 6 + 3 + 4 + 3 + 3)  # A's row: the shared prefix 1..6 once, then each question's rest
    assert p.ids[0].tolist() == A + [7, 8, 9, 7, 10, 8, 9, 16, 8, 9, 7, 8, 9]
    assert p.positions[0].tolist() == list(range(6)) + [6, 7, 8, 6, 7, 8, 9, 6, 7, 8, 6, 7, 8]
    assert p.ids[1, :5].tolist() == [11, 12, 13, 14, 15] and p.ids[1, 5:].eq(0).all()
    T = p.ids.shape[1]
    assert p.last.tolist() == [8, 12, T + 4, 15, 18]
    seen = p.mask[0, 0] == 0  # (T, T): which keys each query sees
    assert seen[10].nonzero().flatten().tolist() == list(range(6)) + [9, 10]  # "10" of question 2
    assert seen[13].nonzero().flatten().tolist() == list(range(6)) + [13]  # "16" of question 4
    assert seen[1, 2:].sum() == 0 and seen[T - 1, T - 1]  # causal within the prefix


def test_packed_logits_and_losses_equal_the_prompts_run_apart():
    model = tiny_llama(vocab_size=20)
    p = pack(SEQS, KEYS, pad_id=0)
    ids, mask = pad_batch(SEQS, 0)
    with torch.no_grad():
        z = p.logits(model)
        torch.testing.assert_close(z[p.last], last_logits(model, ids, mask), atol=1e-5, rtol=1e-5)
        full = model(input_ids=ids, attention_mask=mask).logits
        terms = [-F.log_softmax(full[i, t], -1)[s[t + 1]] for i, s in enumerate(SEQS) for t in range(len(s) - 1)]
        assert p.lm_loss(z).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    answers = torch.tensor([3, 4, 5, 6, 7])
    ans = F.cross_entropy(last_logits(model, ids, mask), answers).item()
    apart = ans + 0.5 * torch.stack(terms).mean().item()  # the trainer's loss, run apart by hand
    packed = Trainer(tiny_llama(vocab_size=20), lr=0.0, weight_decay=0.0, warmup=1, total=10, dev="cpu", lm_weight=0.5)
    assert packed.train_step(p, None, answers, use_bf16=False) == pytest.approx(apart, rel=1e-5)
    plain = Trainer(tiny_llama(vocab_size=20), lr=0.0, weight_decay=0.0, warmup=1, total=10, dev="cpu")
    assert plain.train_step(ids, mask, answers, use_bf16=False) == pytest.approx(ans, rel=1e-5)


def test_packed_batches_hold_whole_theories(tmp_path):
    from mechprobe import reasoner as rs
    from mechprobe.proofwriter_gen import generate

    generate(tmp_path, 1, (30, 5, 5), (2, 4, 8), 0, 6)
    files = rs.split_files(tmp_path, {"depth": 1})
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    tok = rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"])
    task = rs.PromptTask(tok, splits, 12, 0)
    th = task.theory["train"]
    for epoch in (0, 1):
        batches = task.epoch_batches(epoch)
        assert sorted(int(i) for b in batches for i in b) == list(range(len(th)))  # each question once
        flat = np.concatenate([b.numpy() for b in batches])
        runs = np.flatnonzero(np.diff(th[flat])) + 1
        assert len(runs) + 1 <= len(set(th.tolist())) + len(batches)  # a theory's questions stay together
        where = {}
        for k, b in enumerate(batches):
            for t in set(th[b.numpy()].tolist()):
                where.setdefault(t, set()).add(k)
        assert max(len(v) for v in where.values()) <= 2  # cut at most once (6 questions, batches of 12)
    model = tiny_model(tok)  # predictions from packed rows equal each prompt's own last logits
    ids, mask = pad_batch(task.ids["val"], tok.pad_token_id)
    with torch.no_grad():
        apart = last_logits(model, ids, mask)[:, task.word_ids].argmax(-1).numpy()
    np.testing.assert_array_equal(task.predictions(model, "val"), apart)


def tiny_model(tok):
    from mechprobe import reasoner as rs

    return rs.build_model(tok, 2, 32, 2, seed=3)


@pytest.mark.parametrize("part", ["question", "statements"])
def test_next_token_loss_over_a_given_span_by_hand(part):
    """lm_from[i] = f: the loss predicts tokens f.. of prompt i (e.g. its question's); lm_to[i] = t: tokens
    1..t-1 (e.g. its statements'); each from the positions before."""
    model = tiny_llama(vocab_size=20)
    q = [6, 7, 1, 6, 9]  # where each prompt's own part starts (the third: a theory of its own)
    span = [(f, len(s)) if part == "question" else (1, f) for f, s in zip(q, SEQS)]
    kw = {"lm_from": q} if part == "question" else {"lm_to": q}
    p = pack(SEQS, KEYS, pad_id=0, **kw)
    assert len(p.lm_tgt) == sum(t - f for f, t in span)
    if part == "question":  # question 1 from its 7th token
        assert p.lm_tgt[:3].tolist() == [7, 8, 9] and p.lm_src[:3].tolist() == [5, 6, 7]
    else:  # question 1: its statements' tokens 2..6, from columns 0..4 of row A
        assert p.lm_tgt[:5].tolist() == [2, 3, 4, 5, 6] and p.lm_src[:5].tolist() == [0, 1, 2, 3, 4]
    with torch.no_grad():
        z = p.logits(model)
        full = model(input_ids=pad_batch(SEQS, 0)[0], attention_mask=pad_batch(SEQS, 0)[1]).logits
    terms = [
        -F.log_softmax(full[i, t], -1)[s[t + 1]]
        for i, s in enumerate(SEQS)
        for t in range(span[i][0] - 1, span[i][1] - 1)
    ]
    assert p.lm_loss(z).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_recall_segment_by_hand_and_against_the_tokens_run_apart():
    """A recall segment after A's questions sees A's first V tokens and itself, at positions V..; its
    loss is the next-token loss of prefix[:V] + segment run alone; the prompts' logits do not change."""
    model = tiny_llama(vocab_size=20)
    seg, V = [17, 18, 19, 17], 4
    plain, p = pack(SEQS, KEYS, pad_id=0), pack(SEQS, KEYS, pad_id=0, recall={"A": (seg, V)})
    assert p.ids[0, 19:23].tolist() == seg and p.positions[0, 19:23].tolist() == [4, 5, 6, 7]
    assert p.recall_tgt.tolist() == seg[1:] and p.recall_src.tolist() == [19, 20, 21]
    seen = p.mask[0, 0] == 0
    assert seen[21].nonzero().flatten().tolist() == [0, 1, 2, 3, 19, 20, 21]
    assert plain.recall_src is None and plain.recall_loss(None) is None
    one = pack(SEQS, KEYS, pad_id=0, recall={"A": ([17], V)})  # a single token predicts nothing: left out
    assert one.recall_src is None and torch.equal(one.ids, plain.ids) and torch.equal(one.mask, plain.mask)
    with torch.no_grad():
        z = p.logits(model)
        T = p.ids.shape[1]
        torch.testing.assert_close(z[p.last], plain.logits(model)[plain.last].to(z.dtype), atol=1e-5, rtol=1e-5)
        alone = model(input_ids=torch.tensor([A[:V] + seg])).logits[0]
        terms = [-F.log_softmax(alone[V + t], -1)[seg[t + 1]] for t in range(len(seg) - 1)]
        assert p.recall_loss(z).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
        assert p.last[[0, 1, 3, 4]].max() < 19 and p.last[2] == T + 4  # the recall segment is no prompt
    answers = torch.tensor([3, 4, 5, 6, 7])
    base = Trainer(tiny_llama(vocab_size=20), lr=0.0, weight_decay=0.0, warmup=1, total=10, dev="cpu").train_step(
        plain, None, answers, False
    )
    tr = Trainer(tiny_llama(vocab_size=20), lr=0.0, weight_decay=0.0, warmup=1, total=10, dev="cpu", recall_weight=0.5)
    assert tr.train_step(p, None, answers, False) == pytest.approx(base + 0.5 * p.recall_loss(z).item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"recall segment of 'A' sees 7 tokens: expected 1..6"):
        pack(SEQS, KEYS, pad_id=0, recall={"A": (seg, 7)})


def test_recall_segments_restate_the_theorys_facts(tmp_path):
    from mechprobe import reasoner as rs
    from mechprobe.proofwriter_gen import generate

    generate(tmp_path, 1, (12, 3, 3), (2, 4, 8), 0, 6)
    files = rs.split_files(tmp_path, {"depth": 1})
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    tok = rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"])
    task = rs.PromptTask(tok, splits, 12, 0, recall=True)
    batch = task.epoch_batches(0)[0]
    p = task.pad("train", batch)
    T, th = p.ids.shape[1], task.theory["train"][batch.numpy()]
    for r, t in enumerate(dict.fromkeys(th.tolist())):
        it = splits["train"][int(batch[th.tolist().index(t)])]
        facts = it["statements"][: it["facts"]]
        assert 0 < it["facts"] <= len(it["statements"]) and all(not f.startswith("If ") for f in facts)
        left, c = [tok(f, add_special_tokens=False)["input_ids"] for f in facts], 0
        seg = p.ids[r, p.recall_src[p.recall_src // T == r][0] % T :][: sum(map(len, left))]
        while left:  # the segment is the facts' tokens, one fact after another, each fact once
            k = next(k for k, f in enumerate(left) if seg[c : c + len(f)].tolist() == f)
            c += len(left.pop(k))
        assert c == len(seg)
    assert task.pad("val", np.arange(4)).recall_src is None  # no recall in evaluation


def test_compiled_training_step_equals_the_eager_one(monkeypatch):
    """COMPILE=1: the compiled forward is the same function, so a step (packed batch with a recall
    segment, fp32) gives the eager loss and the same updated weights; the saved model is the plain
    module. Without a C++ compiler on a CPU it stops with one line."""
    import shutil

    if not any(map(shutil.which, ("g++", "c++", "clang++"))):
        pytest.skip("no C++ compiler for torch.compile on a CPU")
    p = pack(SEQS, KEYS, pad_id=0, recall={"A": ([17, 18, 19, 17], 4)})
    answers = torch.tensor([3, 4, 5, 6, 7])
    eager = Trainer(
        tiny_llama(vocab_size=20), lr=1e-3, weight_decay=0.0, warmup=1, total=10, dev="cpu", recall_weight=0.5
    )
    comp = Trainer(
        tiny_llama(vocab_size=20),
        lr=1e-3,
        weight_decay=0.0,
        warmup=1,
        total=10,
        dev="cpu",
        recall_weight=0.5,
        compile=True,
    )
    assert comp.forward is not comp.model and type(comp.model).__name__ == "LlamaForCausalLM"
    for _ in range(2):
        assert comp.train_step(p, None, answers, False) == pytest.approx(
            eager.train_step(p, None, answers, False), rel=1e-5
        )
    for (name, a), b in zip(eager.model.state_dict().items(), comp.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(
        MechprobeError,
        match=r"^compile=1 needs a C\+\+ compiler on a CPU \(g\+\+, c\+\+ or clang\+\+ on PATH\); use compile=0$",
    ):
        Trainer(tiny_llama(vocab_size=20), lr=1e-3, weight_decay=0.0, warmup=1, total=10, dev="cpu", compile=True)
