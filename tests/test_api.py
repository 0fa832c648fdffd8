"""The public API: the README's "Probe your own model on your own data" code, run as written."""

import json
import os
import re
import subprocess
import sys

import pytest

from mechprobe import Item, read_items
from mechprobe import proofwriter as pw
from mechprobe.proofwriter_gen import generate
from mechprobe.utils import MechprobeError

from .conftest import ROOT


def readme_code():
    text = (ROOT / "README.md").read_text()
    sec = text[text.index("## Probe your own model on your own data") :]
    return re.search(r"```python\n(.*?)```", sec, re.S).group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    from mechprobe.tiny import word_tokenizer

    folder = generate(tmp_path / "pw", max_depth=1, sizes=(0, 0, 12), seed=0)
    items = pw.read_meta(folder / "meta-test.jsonl")[:40]
    with open(tmp_path / "my_items.jsonl", "w") as f:
        for it in items:
            f.write(
                json.dumps({k: it[k] for k in ("statements", "question", "answer", "useful", "step", "depth")}) + "\n"
            )
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer([s for it in items for s in it["statements"] + [it["question"]]])
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "models" / "my-llm")
    tok.save_pretrained(tmp_path / "models" / "my-llm")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(readme_code(), scope)  # noqa: S102 - the README's code, as written
    res = scope["result"]
    saved = json.loads((tmp_path / "runs" / "mine" / "probe_results.json").read_text())
    assert saved["n_items"] == len(items) and res.s_p1 == saved["subsets"]["all"]["s_p1"]["mean"]
    assert len(saved["subsets"]["all"]["s_p1"]["per_seed"]) == 3 and "depth=1" in saved["subsets"]
    assert (tmp_path / "runs" / "mine" / "probe_by_layer.png").stat().st_size > 1000
    # the same settings and provenance as a script run
    assert saved["settings"]["seeds"] == [0, 1, 2] and saved["settings"]["folds"] == 2
    assert saved["settings"]["query_pool"] == "mean" and saved["model"].endswith("my-llm")
    assert len(saved["model_fingerprint"]) == 64 and "git_modified" in saved["provenance"]
    assert saved["provenance"]["versions"]["torch"]
    # P2 is never pooled over depths: "all" reads P2 from its depth >= 1 items only, as "depth=1" does
    if "mean" in saved["subsets"]["depth=1"].get("f1_p2", {}):
        assert saved["subsets"]["all"]["n_items"] > saved["subsets"]["depth=1"]["n_items"]
        assert "interval95" in saved["subsets"]["all"]["null"]["s_p1"]


def test_items_from_dicts_and_datasets(tmp_path):
    rows = [
        {
            "statements": ["A is b.", "C is d."],
            "question": "A is b.",
            "answer": "True",
            "useful": [True, False],
            "step": [0, -1],
        }
    ]
    assert Item.from_dict(rows[0]).useful == [True, False]
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(rows * 3)
    from mechprobe.api import as_items

    assert [it.statements for it in as_items(ds)] == [rows[0]["statements"]] * 3


def test_item_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "items.jsonl"
    good = {"statements": ["A is b."], "question": "A is b.", "answer": "True", "useful": [True], "step": [0]}
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "step": [0, 1]}) + "\n")
    with pytest.raises(MechprobeError, match=r"items\.jsonl:2: field 'step' must be a list of 1 integers"):
        read_items(f)
    f.write_text(json.dumps({**good, "useful": [False]}) + "\n")
    with pytest.raises(MechprobeError, match=r"items\.jsonl:1: statements \[0\]: a useful statement needs a step >= 0"):
        read_items(f)


def test_import_changes_no_environment_and_adds_only_a_null_handler():
    code = (
        "import os, logging; before = dict(os.environ); import mechprobe; "
        "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
        "h = logging.getLogger('mechprobe').handlers; assert [type(x).__name__ for x in h] == ['NullHandler'], h; "
        "assert callable(mechprobe.probe) and mechprobe.Capture._fields == ('rows', 'logits')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT / "src")},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_every_public_name_is_the_documented_object_even_after_its_submodule_is_imported():
    """`from mechprobe import capture` is the function, also once mechprobe.capture was imported."""
    import importlib
    import pkgutil
    import types

    import mechprobe

    for m in pkgutil.iter_modules(mechprobe.__path__):  # every library module and driver
        importlib.import_module(f"mechprobe.{m.name}")
    for name in mechprobe.__all__:
        obj = getattr(mechprobe, name)
        if name == "ksmallest":
            assert isinstance(obj, types.ModuleType)
            continue
        assert not isinstance(obj, types.ModuleType), name
        if name in mechprobe._API:
            assert obj is getattr(importlib.import_module(f"mechprobe.{mechprobe._API[name]}"), name), name
    from mechprobe import capture

    assert callable(capture) and capture.__name__ == "capture"


def test_a_model_equal_to_its_control_is_said(tmp_path):
    """A model built as control seed 0 is: its S against that control is 0 by construction, said in a warning."""
    from mechprobe import probe
    from mechprobe.models import random_control
    from mechprobe.tiny import llama_from_config, word_tokenizer

    folder = generate(tmp_path / "pw", max_depth=1, sizes=(0, 0, 6), seed=1)
    items = pw.read_meta(folder / "meta-test.jsonl")[:20]
    tok = word_tokenizer([s for it in items for s in it["statements"] + [it["question"]]])
    model = random_control(llama_from_config(tok, 2, 32, 4, 2, 64, 0, 512), seed=0)
    res = probe(model, tok, items, seeds=[0, 1], null_draws=0).results
    assert any("equal those of the random-init control of seed 0" in w for w in res["warnings"]), res["warnings"]
    assert res["subsets"]["all"]["s_p1"]["per_seed"][0] == 0.0
