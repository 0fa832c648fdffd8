"""The hand-wired lookup (wired.py): a calibration of the instrument, where the mechanism is known."""

import json

import numpy as np
import pytest
import torch

from mechprobe import reasoner as rs
from mechprobe import wired
from mechprobe.incontext import PromptBuilder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("wired") / "data"
    rs.ensure_data(d, rs.data_config(1, (40, 30, 30), (4, 8), 8, 0))
    files = rs.split_files(d, json.loads((d / "meta.json").read_text()))
    return d, {s: rs.read_questions(f) for s, f in files.items()}


def test_position_heads_attend_to_their_offset_from_the_start():
    """Layer 0's head h puts 0.99 of its attention on the token h+1 back on average, 0.9+ at every
    position (from h+1 on), whatever the tokens, and head 3 does not; a model without biases is refused."""
    from mechprobe.tiny import llama_from_config

    tok = rs.build_tokenizer(
        [{"statements": ["Bob is big.", "If someone is big then they are red."], "question": "Bob is red."}]
    )
    model = llama_from_config(tok, 2, 128, 4, 4, 512, bias=True)
    wired.init_position_heads(model, 3)
    ids = torch.randint(4, len(tok), (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        att = model.eval()(input_ids=ids, output_attentions=True).attentions[0]  # (B, H, T, T)
    for h in range(4):
        t = torch.arange(h + 1, 300)
        on_offset = att[:, h, t, t - (h + 1)]  # (B, T - h - 1)
        if h < 3:
            assert on_offset.mean() > 0.99 and on_offset.min() > 0.9, (h, on_offset.mean(), on_offset.min())
        else:
            assert on_offset.mean() < 0.5
    with pytest.raises(ValueError, match="with q/k biases"):
        wired.init_position_heads(llama_from_config(tok, 1, 32, 2, 2, 64), 1)


def test_the_lookup_says_whether_the_fact_is_there(data):
    """At the attribute a of a depth-0 question "E is a." or "E is not a.", before any training: the
    match head attends to the fact's "."; layer 1's MLP output on its "not found" direction e is, by
    hand, |down column| * sum_j (w_j . h)^2 over the 16 code directions w_j (the +/- unit pairs' gate
    rows; h: the MLP's normalised input) and equals not_found's signal times that column's norm; it
    tells the stated facts from the unprovable questions whose two words both occur (AUC > 0.98)."""
    _, splits = data
    items = [it for s in splits.values() for it in s]
    tok = rs.build_tokenizer(items)
    model = wired.build(tok)
    found = [it for it in items if it["depth"] == 0 and it["strategy"] in ("proof", "inv-proof")][:40]
    hard = [it for it in items if rs.is_hard(it) and it["depth"] == 0][:40]
    mlp, cap = model.model.layers[1].mlp, {}
    hook = mlp.register_forward_hook(lambda m, i, o: cap.update(h=i[0][0], out=o[0]))
    col = mlp.down_proj.weight[:, 0].detach()
    e, W = col / col.norm(), mlp.gate_proj.weight[: wired.FOUND_UNITS : 2].detach()  # (D,), (16, D)
    signal = {True: [], False: []}
    for is_found, its in ((True, found), (False, hard)):
        prompts = wired.encode(tok, its)
        sig = wired.not_found(model, prompts)
        for p, s in zip(prompts, sig):
            with torch.no_grad():
                model(input_ids=torch.tensor([p["ids"]]))
            t = p["attribute"]
            by_hand = col.norm() * ((cap["h"][t] @ W.T) ** 2).sum()
            assert (cap["out"][t] @ e).item() == pytest.approx(by_hand.item(), rel=1e-3, abs=1e-6)
            assert (cap["out"][t] @ e).item() == pytest.approx(s * col.norm().item(), rel=1e-3, abs=1e-6)
            signal[is_found].append(s)
        if is_found:
            assert all(p["gold"] is not None for p in prompts)
            assert wired.gold_attention(model, prompts).mean() > 0.9
    hook.remove()
    assert len(signal[True]) > 20 and len(signal[False]) > 10, {k: len(v) for k, v in signal.items()}
    pos, neg = np.array(signal[True]), np.array(signal[False])
    assert (pos[:, None] < neg[None]).mean() > 0.98, (pos, neg)
    from mechprobe.tiny import llama_from_config

    with pytest.raises(ValueError, match="needs 4 heads of hidden/4 dimensions"):
        wired.init_wired_lookup(llama_from_config(tok, 2, 32, 2, 2, 64, bias=True))
    with pytest.raises(ValueError, match="beyond the 16 code ones: got 16"):
        wired.build(tok, hidden=64)


def test_fit_threshold_by_hand():
    signal = np.array([0.1, 0.2, 0.9, 1.5, 0.3])
    unprovable = np.array([False, False, True, True, True])
    assert wired.fit_threshold(signal, unprovable) == pytest.approx(0.25)  # 5/5 right above 0.25
    assert wired.fit_threshold(np.array([1.0, 1.0]), np.array([True, True])) == pytest.approx(0.0)


def test_calibration_run_reads_the_known_mechanism(data, tmp_path):
    """The calibration driver: the verdict answers the depth-0 test questions; blocking the attribute's
    attention to the asked fact changes nearly every verdict, to a random other fact few, and from
    layer 2 on (after the lookup) none; the saved model loads and gives the same signal."""
    from mechprobe import calibrate_wired
    from mechprobe.models import load_model, load_tokenizer

    d, splits = data
    res = calibrate_wired.main(["--data-dir", str(d), "--out-dir", str(tmp_path / "w"), "--threads", "1"])
    assert res == json.loads((tmp_path / "w" / "calibration.json").read_text())
    assert res["verdict_accuracy"] > 0.95 and res["gold_attention"] > 0.9
    k = res["knockout_changed"]
    assert k["asked fact, all layers"] > 0.9 and k["random other fact, all layers"] < 0.3
    assert k["asked fact, layers >= 2"] == 0.0
    model, tok = load_model(tmp_path / "w" / "model", device="cpu"), load_tokenizer(tmp_path / "w" / "model")
    prompts = wired.encode(tok, splits["test"][:20])
    rebuilt = wired.build(rs.build_tokenizer(splits["train"] + splits["val"] + splits["test"]))
    np.testing.assert_allclose(wired.not_found(model, prompts), wired.not_found(rebuilt, prompts), rtol=1e-4, atol=1e-5)
    assert PromptBuilder().build(splits["test"][0], [])[0].endswith("True or False?")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["seed"] == 0 and "provenance" in cfg and cfg["params"] > 0
