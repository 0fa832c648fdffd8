"""Cached features: a rerun that changes only the probe does no forward pass; anything that
changes the features misses."""

import pytest

from mechprobe import llmprobe, probing_proofwriter
from mechprobe.cache import control_recipe, model_fingerprint

from .conftest import tiny_llama


def forbid(*a, **k):
    raise AssertionError("a forward pass / a control was built although the cache holds the features")


def test_rerun_with_other_folds_uses_the_cache(tmp_path, monkeypatch, caplog):
    args = [
        "--data",
        str(tmp_path / "pw"),
        "--model",
        "tiny",
        "--limit",
        "40",
        "--seeds",
        "0",
        "1",
        "--n-demos",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--view-items",
        "0",
    ]
    first = probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "a")])
    assert len(list((tmp_path / "cache").glob("[!k]*.safetensors"))) == 3  # the model and two controls
    n_stores = 1 + 4  # knockout: one store of rows per layer set (the unablated pass, 4 windows)
    assert len(list((tmp_path / "cache").glob("ko-*.safetensors"))) == n_stores
    monkeypatch.setattr(llmprobe, "run_items", forbid)
    monkeypatch.setattr(llmprobe, "random_control", forbid)
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "forward", forbid)  # nor a knockout pass
    caplog.clear()
    again = probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "b")])
    assert again["knockout"] == first["knockout"]
    monkeypatch.undo()
    monkeypatch.setattr(llmprobe, "run_items", forbid)
    monkeypatch.setattr(llmprobe, "random_control", forbid)
    assert "feature cache: hit" in caplog.text and "miss" not in caplog.text
    for key in ("s_p1", "s_p2", "f1_p1", "control_f1_p2"):
        assert again["subsets"]["all"][key] == first["subsets"]["all"][key]  # identical features, identical scores
    assert again["accuracy"] == first["accuracy"]
    other = probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "c"), "--folds", "3"])
    assert other["subsets"]["all"]["s_p1"]["n_seeds"] == 2
    with pytest.raises(AssertionError, match="forward pass"):  # --no-cache captures again
        probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "d"), "--no-cache"])
    with pytest.raises(AssertionError, match="forward pass"):  # other prompts: a miss
        probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "e"), "--n-demos", "1"])


def test_keys_follow_weights_and_recipes():
    a, b = tiny_llama(seed=0), tiny_llama(seed=1)
    assert model_fingerprint(a) == model_fingerprint(tiny_llama(seed=0)) != model_fingerprint(b)
    assert control_recipe(a, 0, None) == control_recipe(b, 0, None)  # same config: the same control
    assert control_recipe(a, 0, None) != control_recipe(a, 1, None) != control_recipe(a, 0, 1)
