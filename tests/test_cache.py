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
    feats = [f for f in (tmp_path / "cache").glob("*.safetensors") if not f.name.startswith(("ko-", "enc-", "mask-"))]
    assert len(feats) == 3  # the model and two controls
    n_stores = 1 + 4  # knockout: one store of rows per layer set (the unablated pass, 4 windows)
    assert len(list((tmp_path / "cache").glob("ko-*.safetensors"))) == n_stores
    # masking: one store per distinct set of masked heads (the rerun below reads them all, no forward pass)
    assert len(list((tmp_path / "cache").glob("mask-*.safetensors"))) >= 2
    monkeypatch.setattr(llmprobe, "run_items", forbid)
    monkeypatch.setattr(llmprobe, "random_control", forbid)
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "forward", forbid)  # nor a knockout pass
    caplog.clear()
    again = probing_proofwriter.main([*args, "--out-dir", str(tmp_path / "b")])
    assert again["knockout"] == first["knockout"] and again["masking"] == first["masking"]
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


def test_a_rerun_served_by_the_cache_loads_no_model(tmp_path):
    """A rerun with other folds (the knockout keeps its own, --knockout-folds) is served whole by the
    cache: in a fresh process it imports no transformers and loads neither the model nor the tokenizer."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    args = ["--data", str(tmp_path / "pw"), "--limit", "40", "--seeds", "0", "1", "--n-demos", "0"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--view-items", "2", "--knockout-items", "16"]
    probing_proofwriter.main([*args, "--model", "tiny", "--out-dir", str(tmp_path / "a")])
    folder = next((tmp_path / "a").glob("tiny_llama*"))  # the same model as a plain folder
    code = "import sys; from mechprobe.probing_proofwriter import main; main(sys.argv[1:]); "
    code += "print('transformers imported:', 'transformers' in sys.modules)"
    src = str(Path(__file__).resolve().parents[1] / "src")
    run = subprocess.run(
        [sys.executable, "-c", code, *args, "--model", str(folder), "--folds", "3", "--out-dir", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "transformers imported: False" in run.stdout
    log = (tmp_path / "b" / "run.log").read_text()
    assert "feature cache: miss" not in log and "loading the model" not in log
    assert "hit for 40 encoded prompts" in log and "hit for the view's attention" in log
    assert "knockout cache: " in log and ", 0 run" in log
    assert (tmp_path / "b" / "attention_view.html").exists() and (tmp_path / "b" / "knockout.png").exists()
    a, b = (json.loads((tmp_path / d / "probe_results.json").read_text()) for d in "ab")
    assert a["knockout"] == b["knockout"] and a["accuracy"] == b["accuracy"]
    assert a["subsets"]["all"]["s_p1"] != b["subsets"]["all"]["s_p1"]  # the probe did run on other folds


def test_encoded_prompts_round_trip(tmp_path):
    """The stored prompts (ids, statement spans, queries, text with non-ASCII characters, offsets) come
    back equal, empty fields included."""
    from mechprobe.cache import FeatureCache

    enc = [
        {
            "ids": [1, 5, 7],
            "spans": [(1, 2), (2, 3)],
            "query": [2],
            "text": "a é b",
            "offsets": [(0, 0), (0, 1), (2, 3)],
        },
        {"ids": [3], "spans": [], "query": [], "text": "", "offsets": [(0, 0)]},
    ]
    c = FeatureCache(tmp_path)
    assert c.get_prompts("enc-x", "prompts") is None
    c.put_prompts("enc-x", enc, [11, 12])
    assert c.get_prompts("enc-x", "prompts") == (enc, [11, 12])


def test_folder_fingerprint_sees_a_change_of_one_small_tensor(tmp_path):
    """A model folder's key (ModelFolder.fingerprint, no loading) changes when only a layer norm's
    weights change, and not when the folder is copied elsewhere."""
    import shutil

    import torch

    from mechprobe.models import ModelFolder

    model = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    with torch.no_grad():
        model.model.norm.weight[3] += 0.5  # one value of a 32-value tensor
    model.save_pretrained(tmp_path / "b")
    fa, fb, fc = (ModelFolder(tmp_path / d).fingerprint() for d in ("a", "b", "copy"))
    assert fa == fc != fb
