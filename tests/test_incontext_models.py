import json

import numpy as np
import pytest
import torch

from mechprobe.incontext import PromptBuilder, answer_ids, encode_items, pick_demos, run_items
from mechprobe.models import load_model, random_control
from mechprobe.tiny import tiny_llama_dir, word_tokenizer
from mechprobe.utils import MechprobeError

from .conftest import shared_path

ITEMS = [
    {
        "id": f"i{j}",
        "statements": ["The cat is red.", "If someone is red then they are big.", "Bob is kind."],
        "question": "The cat is big.",
        "answer": "True",
        "useful": [True, True, False],
        "step": [0, 1, -1],
        "depth": 1,
        "group": 3,
    }
    for j in range(3)
]


def test_prompt_spans_point_at_statements():
    b = PromptBuilder()
    text, spans, q = b.build(ITEMS[0], ITEMS[1:])
    assert [text[a:e] for a, e in spans] == ITEMS[0]["statements"]
    assert text[q[0] : q[1]] == "The cat is big."
    assert text.endswith("The cat is big. True or False?")
    assert text.count("True or False? True\n\n") == 2


def test_llama_tokenizer_answer_ids_and_spans():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "llama"))
    assert tok(" True", add_special_tokens=False)["input_ids"] == [29871, 5852]
    assert answer_ids(tok, ["True", "False"]) == [5852, 7700]
    enc = encode_items(tok, ITEMS[:1], [ITEMS[1:]], PromptBuilder())[0]
    assert enc["ids"][0] == 1  # BOS
    for (s, e), st in zip(enc["spans"], ITEMS[0]["statements"]):
        assert tok.decode(enc["ids"][s:e]).strip() == st
    assert tok.decode([enc["ids"][i] for i in enc["query"]]).strip() == "The cat is big."


def test_gpt2_tokenizer_spans():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "gpt2"))
    enc = encode_items(tok, ITEMS[:1], [[]], PromptBuilder())[0]
    assert [tok.decode(enc["ids"][s:e]).strip() for s, e in enc["spans"]] == ITEMS[0]["statements"]
    assert answer_ids(tok, ["True", "False"]) == [6407, 10352]


def test_answer_word_missing_errors():
    tok = word_tokenizer(["a b c"], extra=())
    with pytest.raises(MechprobeError, match="answer word 'True' has no token"):
        answer_ids(tok, ["True"])


def test_pick_demos_one_shared_set_never_the_item():
    items = [{"id": str(i)} for i in range(10)]
    demos = pick_demos(items, 4, seed=0)
    assert all(len(d) == 4 and all(x["id"] != it["id"] for x in d) for it, d in zip(items, demos))
    sets = [tuple(x["id"] for x in d) for d in demos]
    common = max(set(sets), key=sets.count)
    assert sets.count(common) == 6  # the 4 items in the shared set get a substitute
    assert all(len(set(s) & set(common)) == 3 for s in sets if s != common)  # one demonstration replaced
    pool = [{"id": f"p{i}"} for i in range(5)]
    assert len({tuple(x["id"] for x in d) for d in pick_demos(items, 4, 1, pool)}) == 1  # a separate pool: one set
    with pytest.raises(MechprobeError, match="6 demonstrations asked for, but the pool holds 5 items"):
        pick_demos(items, 6, 0, pool)
    with pytest.raises(MechprobeError, match="never its own demonstration"):
        pick_demos(items[:4], 4, 0)


def test_tiny_model_dir_loads_and_runs(tmp_path):
    texts = [s for it in ITEMS for s in it["statements"] + [it["question"]]]
    path = tiny_llama_dir(tmp_path / "m", texts, layers=2, hidden=32)
    model = load_model(path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = encode_items(tok, ITEMS, pick_demos(ITEMS, 1, 0), PromptBuilder())
    feats, scores = run_items(model, enc, answer_ids(tok, ["True", "False"]), batch_size=2)
    assert feats[0].shape == (3, 2, 1) and scores.shape == (3, 2)
    # batched == one at a time
    f1, s1 = run_items(model, enc[:1], answer_ids(tok, ["True", "False"]), batch_size=1)
    np.testing.assert_allclose(f1[0], feats[0], atol=1e-5)
    np.testing.assert_allclose(s1[0], scores[0], atol=1e-4)


def test_random_control_same_architecture_new_weights(tmp_path):
    path = tiny_llama_dir(tmp_path / "m", ["a b"], layers=3, hidden=32)
    model = load_model(path)
    ctl = random_control(model, seed=1)
    assert ctl.config.to_dict()["num_hidden_layers"] == 3 and type(ctl) is type(model)
    w, c = model.model.layers[0].self_attn.q_proj.weight, ctl.model.layers[0].self_attn.q_proj.weight
    assert w.shape == c.shape and not torch.equal(w, c)
    torch.testing.assert_close(random_control(model, seed=1).model.layers[0].self_attn.q_proj.weight, c)
    assert random_control(model, seed=1, num_layers=1).config.num_hidden_layers == 1


def test_load_model_errors(tmp_path):
    path = tiny_llama_dir(tmp_path / "m", ["a b"], layers=1, hidden=32)
    with pytest.raises(MechprobeError, match="dtype 'int3' not supported"):
        load_model(path, dtype="int3")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(MechprobeError, match="8-bit loading needs the bitsandbytes package"):
            load_model(path, load_in_8bit=True)
    m = load_model(path, dtype="bfloat16")
    assert next(m.parameters()).dtype == torch.bfloat16 and m.config._attn_implementation == "eager"


def test_probing_proofwriter_end_to_end(tmp_path):
    from mechprobe import probing_proofwriter

    probing_proofwriter.main(
        [
            "--data",
            str(tmp_path / "pw"),
            "--generate",
            "--model",
            "tiny",
            "--out-dir",
            str(tmp_path / "out"),
            "--limit",
            "40",
            "--seeds",
            "0",
            "--n-demos",
            "1",
        ]
    )
    saved = json.loads((tmp_path / "out" / "probe_results.json").read_text())
    assert saved["n_items"] == 40 and 0 <= saved["accuracy"] <= 1
    assert "s_p1" in saved["subsets"]["all"] and "depth=1" in saved["subsets"]
    for f in ("accuracy_by_group.png", "probe_by_depth.png", "probe_by_layer.png", "config.json"):
        assert (tmp_path / "out" / f).stat().st_size > 100


def test_probing_proofwriter_logic_llm_says_needs_proofs(tmp_path):
    from mechprobe import probing_proofwriter

    src = shared_path("data", "proofwriter", "processed", "logic_llm", "dev.json")
    res = probing_proofwriter.main(
        [
            "--data",
            str(src),
            "--model",
            "tiny",
            "--out-dir",
            str(tmp_path / "o"),
            "--limit",
            "12",
            "--n-demos",
            "1",
            "--seeds",
            "0",
        ]
    )
    assert "needs the useful statements" in res["probe"]["undefined"]
    assert res["answer_words"] == ["True", "False", "Unknown"] and res["n_items"] == 12


def test_probing_proofwriter_missing_data(tmp_path):
    from mechprobe import probing_proofwriter

    with pytest.raises(MechprobeError, match="no CWA/depth-N/ folder.*generate=True"):
        probing_proofwriter.main(
            ["--data", str(tmp_path / "none"), "--no-generate", "--model", "tiny", "--out-dir", str(tmp_path / "o")]
        )


def test_statement_not_found_names_file_line_question():
    tok = word_tokenizer(["The cat is red ."])
    item = dict(ITEMS[0], statements=["The cat is red.", ""], useful=[True, False], step=[0, -1], line=7)
    with pytest.raises(MechprobeError, match=r"meta-test\.jsonl:7: question i0: statement 1 .*maps to no token"):
        encode_items(tok, [item], [[]], PromptBuilder(), "meta-test.jsonl")
