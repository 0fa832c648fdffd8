"""Bad input, interrupted and concurrent runs: a clear error naming the input, or a right result."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mechprobe import arc, corruptions, finetune_gpt2, probing_gpt2
from mechprobe import ksmallest as ks
from mechprobe import proofwriter as pw
from mechprobe.runs import run_folder
from mechprobe.tiny import tiny_llama_dir
from mechprobe.utils import MechprobeError, iter_jsonl

from .test_finetune import args
from .test_proofwriter import theory_line


def cli_error(capsys, fn, argv):
    """Run a CLI main whose argparse rejects argv: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        fn(argv)
    return e.value.code, capsys.readouterr().err


# 1 ------------------------------------------------------------ unknown tokens
def test_numbers_mapped_to_unk_are_refused():
    tok = ks.build_word_tokenizer(range(10))  # knows 0..9 only
    with pytest.raises(MechprobeError, match=r"maps the numbers \[50, 77\] to its unknown token '<unk>'"):
        ks.encode_records(tok, [ks.make_record([1, 50, 2, 77], 1)])
    with pytest.raises(MechprobeError, match="2 of 3 numbers are not a single known token.*50, 77"):
        ks.check_vocab_tokens(tok, [5, 50, 77])
    with pytest.raises(MechprobeError, match="answer 50 is not a single known token"):
        ks.answer_token_id(tok, 50)


# 2 ------------------------------------------------------------ subsets as large as the data
def test_subset_size_not_below_the_items_is_refused():
    items = [{"useful": [1, 0], "step": [0, -1]}] * 10
    feats = [np.zeros((2, 3, 1))] * 10
    ok = np.ones(10, bool)
    with pytest.raises(MechprobeError, match=r"subset_size=10: .*fewer than the 10 items"):
        corruptions.subset_study(items, feats, [feats], ok, ok, list(range(10)), 5, 10, 0, 2, 3)


# 3, 8, 12 ------------------------------------------------------------ resume
def test_resume_with_other_settings_names_them_and_writes_nothing(tmp_path):
    finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2"))
    config = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(
        MechprobeError,
        match=r"settings differ from the checkpoint.s \(max_steps=4 -> 8; lr=0.003 -> 0.01\).*restart=True",
    ):
        finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "8", "--eval-every", "2", "--lr", "1e-2"))
    with pytest.raises(MechprobeError, match=r"n_embd=16 -> 32"):
        finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2", "--n-embd", "32"))
    assert (tmp_path / "run" / "config.json").read_text() == config  # untouched
    res = finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "6", "--eval-every", "2", "--restart"))
    assert res["steps"] == 6 and json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 6


def test_leftover_tmp_files_removed_and_garbage_checkpoint_named(tmp_path):
    finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "2", "--eval-every", "2"))
    out = tmp_path / "run"
    (out / ".checkpoint.pt.abc123.tmp.pt").write_bytes(b"x" * 1000)  # what kill -9 during a save leaves
    (out / ".best.tmp").mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (out / "status.json").write_text('{"status": "failed"}')  # not a complete run: the rerun resumes
    with pytest.raises(MechprobeError, match=r"checkpoint\.pt: unreadable checkpoint.*restart=True"):
        finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "2", "--eval-every", "2"))
    finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "2", "--eval-every", "2", "--restart"))
    assert not [f.name for f in out.iterdir() if ".tmp" in f.name]


# 4 ------------------------------------------------------------ meta.json against the records
def test_meta_k_disagreeing_with_records(tmp_path):
    ks.write_dataset(tmp_path / "d", list(range(20)), 1, sizes=(8, 4, 4))
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    (tmp_path / "d" / "meta.json").write_text(json.dumps({**meta, "k": 2}))
    with pytest.raises(MechprobeError, match=r"train\.jsonl:1: k=1, but .*meta\.json says k=2"):
        finetune_gpt2.main(args(tmp_path, "r", "--data-dir", str(tmp_path / "d"), "--k", "2", "--max-steps", "1"))


# 5, 11 ------------------------------------------------------------ numbers out of range
@pytest.mark.parametrize(
    "flag,value,msg",
    [
        ("--n-examples", "-5", "expected an integer >= 2"),
        ("--n-examples", "1", "expected an integer >= 2"),
        ("--folds", "1", "expected an integer >= 2"),
        ("--batch-size", "0", "expected an integer >= 1"),
    ],
)
def test_probe_numbers_out_of_range(capsys, tmp_path, flag, value, msg):
    code, err = cli_error(
        capsys, probing_gpt2.main, ["--models", "m", "--data-dirs", "d", "--out-dir", str(tmp_path / "o"), flag, value]
    )
    assert code == 2 and f"argument {flag}: '{value}': {msg}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "0"),
        ("--eval-every", "0"),
        ("--lr", "0"),
        ("--lr", "-1e-3"),
        ("--vocab-size", "0"),
        ("--sizes", "200 0 50"),
    ],
)
def test_finetune_numbers_out_of_range(capsys, tmp_path, flag, value):
    code, err = cli_error(capsys, finetune_gpt2.main, [*args(tmp_path), flag, *value.split()])
    assert code == 2 and f"argument {flag}" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "module,flag,value,msg",
    [
        ("finetune_proofwriter", "--lm-weight", "-1", "expected a number >= 0"),
        ("finetune_proofwriter", "--positive-steps", "-1", "expected an integer >= 0"),
        ("finetune_proofwriter", "--compile", "2", "invalid choice"),
        ("probing_gpt2", "--knockout", "2", "invalid choice"),
        ("probing_proofwriter", "--knockout-items", "-1", "expected an integer >= 0"),
        ("probing_proofwriter", "--view-items", "-2", "expected an integer >= 0"),
        ("probing_arc", "--head-map", "3", "invalid choice"),
    ],
)
def test_new_options_out_of_range(capsys, tmp_path, module, flag, value, msg):
    import importlib

    mod = importlib.import_module(f"mechprobe.{module}")
    base = {
        "finetune_proofwriter": ["--out-dir", str(tmp_path / "o")],
        "probing_gpt2": ["--models", "m", "--data-dirs", "d", "--out-dir", str(tmp_path / "o")],
        "probing_proofwriter": ["--data", "d", "--model", "tiny", "--out-dir", str(tmp_path / "o")],
        "probing_arc": ["--model", "tiny", "--out-dir", str(tmp_path / "o")],
    }[module]
    code, err = cli_error(capsys, mod.main, [*base, flag, value])
    assert code == 2 and f"argument {flag}" in err and msg in err
    assert not (tmp_path / "o").exists()


def test_zero_steps_and_duplicate_seeds(tmp_path):
    with pytest.raises(MechprobeError, match="nothing to train: max_steps=0 and epochs=0"):
        finetune_gpt2.main(args(tmp_path, "r", "--max-steps", "0", "--epochs", "0"))
    assert not (tmp_path / "r" / "config.json").exists()
    with pytest.raises(MechprobeError, match="seeds=0 0: a seed is repeated"):
        probing_gpt2.main(["--models", "m", "--data-dirs", "d", "--out-dir", str(tmp_path / "o"), "--seeds", "0", "0"])


def test_proofwriter_answer_maybe_refused(tmp_path):
    line = theory_line()
    line["questions"]["Q1"]["answer"] = "maybe"
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps(line) + "\n")
    with pytest.raises(
        MechprobeError, match=r"meta-test\.jsonl:1: question Q1: answer 'maybe': expected true, false or \"Unknown\""
    ):
        pw.read_meta(f)


# 6 ------------------------------------------------------------ the tiny model is keyed by its data
def test_tiny_model_never_reused_for_other_data(tmp_path):
    a = tiny_llama_dir(tmp_path / "tiny", ["The cat is red."], layers=1, hidden=16)
    b = tiny_llama_dir(tmp_path / "tiny", ["Bob is kind."], layers=1, hidden=16)
    assert a != b and tiny_llama_dir(tmp_path / "tiny", ["The cat is red."], layers=1, hidden=16) == a
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(b)
    assert tok.unk_token_id not in tok("Bob is kind .")["input_ids"]


# 7 ------------------------------------------------------------ failed generation leaves nothing
def test_failed_generation_leaves_no_dataset(tmp_path):
    with pytest.raises(MechprobeError, match="sizes=200 0 50: expected three positive numbers"):
        ks.write_dataset(tmp_path / "d", list(range(20)), 1, sizes=(200, 0, 50))
    assert not (tmp_path / "d").exists()
    ks.write_dataset(tmp_path / "d", list(range(20)), 1, sizes=(4, 4, 4))  # a rerun with good sizes works
    assert (tmp_path / "d" / "meta.json").exists() and not list(tmp_path.glob(".d.tmp*"))


# 9, 10 ------------------------------------------------------------ stale outputs, concurrent runs
def test_interrupted_run_leaves_no_stale_result_and_says_so(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text('{"old": 1}')
    (out / "config.json").write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt):
        with run_folder(out, outputs=("results.json", "config.json", "plot.png")):
            (out / "plot.png").write_text("new")
            raise KeyboardInterrupt
    assert not (out / "results.json").exists() and not (out / "config.json").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    with run_folder(out, outputs=("plot.png",)):
        assert not (out / "plot.png").exists()
        assert json.loads((out / "status.json").read_text())["status"] == "running"
    assert json.loads((out / "status.json").read_text())["status"] == "complete"


def test_second_run_into_the_same_folder_stops_naming_the_first(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / ".lock").write_text(str(other.pid))
        with pytest.raises(MechprobeError, match=f"another run \\(pid {other.pid}\\) is writing into this folder"):
            finetune_gpt2.main(args(tmp_path, "o", "--max-steps", "1"))
    finally:
        other.kill()
        other.wait()
    finetune_gpt2.main(args(tmp_path, "o", "--max-steps", "1"))  # the lock of a dead process is taken over
    assert not (tmp_path / "o" / ".lock").exists()


def test_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "o").write_text("x")
    with pytest.raises(MechprobeError, match="o: is a file; out_dir must be a folder"):
        finetune_gpt2.main(args(tmp_path, "o", "--max-steps", "1"))
    (tmp_path / "d").write_text("x")
    with pytest.raises(MechprobeError, match="d: is a file"):
        finetune_gpt2.main(args(tmp_path, "r", "--data-dir", str(tmp_path / "d"), "--max-steps", "1"))


# 12, 13 ------------------------------------------------------------ bytes, devices
def test_non_utf8_line_named(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(MechprobeError, match=r"x\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        list(iter_jsonl(f))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path):
    with pytest.raises(MechprobeError, match="device=cuda: this machine has no CUDA GPU"):
        finetune_gpt2.main(args(tmp_path, "r", "--device", "cuda", "--max-steps", "1"))
    from mechprobe.models import load_model

    with pytest.raises(MechprobeError, match="device=cuda:1: this machine has no CUDA GPU"):
        load_model(tmp_path, device="cuda:1")


# 14, 15 ------------------------------------------------------------ malformed ARC / ProofWriter records
EB = {
    "id": "q1",
    "question": "Why?",
    "answer": "because",
    "proof": "sent1 & sent2 -> hypothesis;",
    "depth_of_proof": 1,
    "meta": {"triples": {"sent1": "a", "sent2": "b"}},
}


@pytest.mark.parametrize(
    "change,msg",
    [
        ({"question": None}, "missing field 'question'"),
        ({"answer": None}, "missing field 'answer'"),
        ({"depth_of_proof": "two"}, "depth_of_proof must be an integer, got 'two'"),
        ({"meta": {"triples": ["a", "b"]}}, "meta.triples must be an object"),
    ],
)
def test_entailment_bank_bad_records(tmp_path, change, msg):
    r = {k: v for k, v in {**EB, **change}.items() if v is not None}
    f = tmp_path / "eb.jsonl"
    f.write_text(json.dumps(EB) + "\n" + json.dumps(r) + "\n")
    with pytest.raises(MechprobeError, match=rf"eb\.jsonl:2: .*{msg}"):
        arc.read_entailment_bank(f)


def test_empty_arc_files_and_street_list(tmp_path):
    f = tmp_path / "eb.jsonl"
    f.write_text("\n")
    with pytest.raises(MechprobeError, match="holds no record"):
        arc.read_entailment_bank(f)
    from .test_arc import STREET

    s = tmp_path / "reasoning_annotated_dev.jsonl"
    s.write_text(json.dumps(dict(STREET, textual_logical_units=["a is b", "b is c"])) + "\n")
    with pytest.raises(
        MechprobeError, match=r"reasoning_annotated_dev\.jsonl:1: .*'textual_logical_units' must be an object"
    ):
        arc.read_street(s)


def test_proofwriter_questions_as_list_or_string(tmp_path):
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps({**theory_line(), "questions": [{"question": "x"}]}) + "\n")
    with pytest.raises(
        MechprobeError, match=r"meta-test\.jsonl:1: field 'questions' must be an object keyed by id, got list"
    ):
        pw.read_meta(f)
    line = theory_line()
    line["questions"]["Q1"] = "The cat is big."
    f.write_text(json.dumps(line) + "\n")
    with pytest.raises(MechprobeError, match=r":1: question Q1: expected an object with question, answer"):
        pw.read_meta(f)


def test_skip_bad_skips_a_proof_naming_a_missing_statement(tmp_path):
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps(theory_line()) + "\n" + json.dumps(theory_line("[(((triple9) -> rule1))]")) + "\n")
    with pytest.raises(MechprobeError, match=r":2: question Q1: proof names \['triple9'\]"):
        pw.read_meta(f)
    assert len(pw.read_meta(f, skip_bad=True)) == 1


def test_scripts_have_skip_bad_and_threads():
    from mechprobe import corrupt_proofwriter, probing_proofwriter

    from .test_cli import ROOT

    for mod in (probing_proofwriter, corrupt_proofwriter):
        assert "--skip-bad" in mod.parser().format_help()
    for script in ROOT.glob("run_*.sh"):
        assert 'opt --threads "$THREADS"' in script.read_text(), script.name


# 16 ------------------------------------------------------------ threads recorded
def test_threads_logged_in_config(tmp_path):
    finetune_gpt2.main(args(tmp_path, "run", "--max-steps", "1"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["threads"] == 1  # TINY sets --threads 1
