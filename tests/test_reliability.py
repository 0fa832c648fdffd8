"""Runs that are stopped or shared: SIGTERM and SIGHUP end a run as Ctrl-C does, and results are
readable by colleagues (the umask decides, not mkstemp's 0600)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mechprobe.runs import write_json

from .conftest import ROOT
from .test_finetune import args


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stopped_run_says_interrupted_and_unlocks(tmp_path, sig, code):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mechprobe.finetune_gpt2",
        *args(tmp_path, "run", "--max-steps", "100000", "--threads", "1"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        st = out / "status.json"
        while time.time() < deadline and not (st.exists() and json.loads(st.read_text())["status"] == "running"):
            time.sleep(0.2)
        time.sleep(1.0)  # well inside the run
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == code, err
    assert json.loads((out / "status.json").read_text())["status"] == "interrupted"
    assert not (out / ".lock").exists() and f"interrupted (signal {int(sig)})" in err
    assert (out / ".mechprobe-run").read_text().strip() == "finetune_gpt2"  # the driver's name, also under -m


def test_results_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_a_prompt_longer_than_the_context_is_refused_before_any_forward(tmp_path):
    """A LLaMA with 64 positions given prompts of 100+ tokens: a clear error, not a silent result."""
    from mechprobe import probing_proofwriter
    from mechprobe.tiny import tiny_llama_dir
    from mechprobe.utils import MechprobeError

    model = tiny_llama_dir(tmp_path / "tiny", ["Bob is big. If someone is big then they are red. True False"])
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 64}))
    argv = ["--data", str(tmp_path / "pw"), "--model", str(model), "--out-dir", str(tmp_path / "o"), "--limit", "8"]
    with pytest.raises(MechprobeError, match=r"prompt \d+ has \d+ tokens, more than the model's 64 positions"):
        probing_proofwriter.run(probing_proofwriter.parser().parse_args(argv + ["--n-demos", "2"]))


def test_a_run_with_three_questions_ends_cleanly(tmp_path):
    """LIMIT=3 (one question qualifies for the knockout, too few for folds): no traceback."""
    from mechprobe import probing_proofwriter

    argv = ["--data", str(tmp_path / "pw"), "--model", "tiny", "--out-dir", str(tmp_path / "o"), "--limit", "3"]
    res = probing_proofwriter.run(
        probing_proofwriter.parser().parse_args(argv + ["--n-demos", "1", "--null-draws", "0"])
    )
    assert res["n_items"] == 3
    assert "undefined" in res["knockout"] or res["knockout"]["n_prompts"] >= 2


def test_seeds_devices_and_logic_llm_records_are_checked(tmp_path):
    from mechprobe import probing_proofwriter
    from mechprobe.proofwriter import read_logic_llm
    from mechprobe.utils import MechprobeError, check_device

    p = probing_proofwriter.parser()
    base = ["--data", "x", "--model", "tiny", "--out-dir", "o"]
    for bad in ("-1", "4294967296"):
        with pytest.raises(SystemExit):
            p.parse_args(base + ["--seeds", bad])
    with pytest.raises(MechprobeError, match="device=gpu: expected cpu, cuda, cuda:N or auto"):
        check_device("gpu")
    f = tmp_path / "dev.json"
    for content, msg in (
        (b"[\xff\xfe]", r"byte 1: not UTF-8 text"),
        (b"[1, 2]", r"item 0: expected an object with id, context, question, answer"),
        (
            b'[{"id": "a", "context": ["x"], "question": "q", "answer": "A"}]',
            r"item 0: field 'context' must be a string",
        ),
    ):
        f.write_bytes(content)
        with pytest.raises(MechprobeError, match=msg):
            read_logic_llm(f)


def test_a_run_never_clears_a_folder_it_does_not_own(tmp_path):
    """OUT_DIR = a model folder, or another script's run: refused before anything is removed."""
    from mechprobe.runs import run_folder
    from mechprobe.utils import MechprobeError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(MechprobeError, match=r"model: holds config.json, model.safetensors that no run of mechprobe"):
        with run_folder(model, outputs=("config.json",), owner="probing_gpt2"):
            pass
    assert (model / "config.json").read_text() == '{"model_type": "gpt2"}' and not (model / ".lock").exists()
    run = tmp_path / "ft"
    with run_folder(run, outputs=("config.json", "results.json"), owner="finetune_gpt2"):
        write_json(run / "config.json", {"lr": 1})
        write_json(run / "results.json", {"acc": 1})
    with pytest.raises(MechprobeError, match=r"ft: holds a run of finetune_gpt2, not of probing_gpt2"):
        with run_folder(run, outputs=("config.json",), owner="probing_gpt2"):
            pass
    assert json.loads((run / "results.json").read_text()) == {"acc": 1}
    with run_folder(run, outputs=("config.json", "results.json"), owner="finetune_gpt2"):  # its own: cleared, rerun
        assert not (run / "results.json").exists()
    legacy = tmp_path / "legacy"  # a folder written before the owner file: its config.json's command says
    legacy.mkdir()
    write_json(legacy / "config.json", {"provenance": {"command": ["/x/mechprobe/finetune.py", "--lr", "1"]}})
    write_json(legacy / "status.json", {"status": "complete"})
    with pytest.raises(MechprobeError, match="holds a run of finetune_gpt2"):  # finetune.py: the driver's old name
        with run_folder(legacy, owner="causal_gpt2"):
            pass
    (legacy / ".mechprobe-run").write_text("finetune\n")  # an owner file of the old name: the same driver's
    with run_folder(legacy, owner="finetune_gpt2"):
        pass


def test_a_complete_finetune_is_left_alone(tmp_path, caplog):
    """Rerunning a finished run with the same settings changes nothing; RESTART=1 trains it again."""
    import logging

    from mechprobe import finetune_gpt2

    run = args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2", "--target-acc", "0.01")
    first = finetune_gpt2.main(run)
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run").iterdir() if f.is_file()}
    with caplog.at_level(logging.INFO, logger="mechprobe"):
        again = finetune_gpt2.main(run)
    assert again == first and "holds a complete run with these settings" in caplog.text
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run").iterdir() if f.is_file()} == before
    finetune_gpt2.main(run + ["--restart"])
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns != before["results.json"]


def test_two_runs_generating_one_data_folder_share_it(tmp_path):
    """Two processes that generate the same missing ProofWriter folder at once: one generates, the
    other waits and reads the finished data; nothing half-written is left."""
    code = (
        "import sys; from mechprobe.proofwriter import load_items; "
        "items = load_items(sys.argv[1], generate=True, pool=False)[0]; print(len(items))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    folder = tmp_path / "pw"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(folder)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert outs[0][0] == outs[1][0] and int(outs[0][0]) > 0
    assert not [f for f in folder.rglob("*") if ".tmp" in f.name]
    assert sorted(f.name for f in (folder / "CWA" / "depth-1").iterdir()) == [
        "meta-dev.jsonl",
        "meta-test.jsonl",
        "meta-train.jsonl",
    ]


def test_a_place_where_no_lock_can_be_written_is_read_without_one(tmp_path):
    from mechprobe.runs import data_lock

    (tmp_path / "afile").write_text("x")  # its "folder" cannot hold a lock file (as a read-only one)
    with data_lock(tmp_path / "afile" / "d") as f:
        assert f == tmp_path / "afile" / "d"


def test_operating_system_errors_are_one_line(tmp_path):
    """OUT_DIR below a file, in a place no one can write (/proc), through a symlink loop, a full disk:
    one line naming the path, exit 2."""
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "afile" / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechprobe.finetune_gpt2",
            *args(tmp_path, "x", "--max-steps", "1")[:-2],
            "--out-dir",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]  # after the run's own log lines
    assert last.startswith("error: ") and "afile/run: Not a directory" in last, p.stderr

    for bad, says in ((Path("/proc/mechprobe-run"), "/proc/mechprobe-run"), (tmp_path / "loop" / "run", "loop")):
        if says == "loop":  # a symlink loop
            (tmp_path / "loop").symlink_to(tmp_path / "loop")
        argv = [*args(tmp_path, "x", "--max-steps", "1")[:-2], "--out-dir", str(bad)]
        p = subprocess.run(
            [sys.executable, "-m", "mechprobe.finetune_gpt2", *argv], env=env, capture_output=True, text=True
        )
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and "Traceback" not in p.stderr and last.startswith("error: ") and says in last, (
            p.stderr
        )

    from mechprobe.cli import run_main

    def full():
        raise OSError(28, "No space left on device", str(tmp_path / "runs" / "results.json"))

    with pytest.raises(SystemExit) as e:
        run_main(full)
    assert e.value.code == 2


def test_street_and_entailment_bank_gaps_are_named(tmp_path):
    """A STREET record that is a list, a unit that is not text, an empty answer list, unit ids that are
    not numbers; an EntailmentBank sentence id without a number: one line each, naming what is wrong."""
    from mechprobe import arc
    from mechprobe.utils import MechprobeError

    from .test_arc import STREET

    f = tmp_path / "reasoning_annotated_dev.jsonl"
    for record, msg in (
        ([1, 2], r":1: expected a JSON object, got list"),
        (dict(STREET, textual_logical_units={**STREET["textual_logical_units"], "2": ["b"]}), r"unit '2' is list"),
        (dict(STREET, answer=[]), r"'answer' is an empty list"),
        (dict(STREET, reasoning_graph_edges={"a": 1}), r"'reasoning_graph_edges' must be a list"),
        (dict(STREET, textual_logical_units={**STREET["textual_logical_units"], "x": "z"}), r"id 'x': expected a name"),
    ):
        f.write_text(json.dumps(record) + "\n")
        with pytest.raises(MechprobeError, match=msg):
            arc.read_street(f)
    assert arc._num("sent12") == 12
    with pytest.raises(MechprobeError, match=r"id 'sentA': expected a name with a number"):
        arc._num("sentA")


def test_lists_longer_than_a_gpt2s_positions_are_refused_before_any_forward(tmp_path):
    """A GPT-2 of 16 positions given lists of 20 numbers: one line naming the data and both lengths,
    from the probing, causal and visualisation drivers alike, before any forward pass."""
    from mechprobe import attnvisual_gpt2, causal_gpt2, data, probing_gpt2
    from mechprobe import ksmallest as ks
    from mechprobe.models import scratch_gpt2
    from mechprobe.utils import MechprobeError

    d = tmp_path / "d"
    data.main(["ksmallest", "--out", str(d), "--length", "20", "--vocab-size", "30", "--sizes", "4", "4", "4"])
    tok = ks.build_word_tokenizer(ks.load_meta(d)["vocab"])
    model = scratch_gpt2(len(tok), n_positions=16, n_layer=1, n_head=2, n_embd=16)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    want = r"each list's prompt has 2\d tokens, more than the model's 16 positions .*use shorter lists"
    common = ["--out-dir", str(tmp_path / "o"), "--threads", "1"]
    with pytest.raises(MechprobeError, match=want):
        probing_gpt2.main(["--models", str(tmp_path / "m"), "--data-dirs", str(d), *common])
    with pytest.raises(MechprobeError, match=want):
        causal_gpt2.main(["--model", str(tmp_path / "m"), "--data-dir", str(d), *common[:1], str(tmp_path / "c")])
    with pytest.raises(MechprobeError, match=want):
        attnvisual_gpt2.main(["--models", str(tmp_path / "m"), "--data-dir", str(d), "--out-dir", str(tmp_path / "v")])
    with pytest.raises(MechprobeError, match=r"example=4: expected a test list among the 4 read \(0 to 3\)"):
        attnvisual_gpt2.main(
            ["--models", str(tmp_path / "m"), "--data-dir", str(d), "--out-dir", str(tmp_path / "w")]
            + ["--example", "4"]
        )


def test_a_huge_record_or_statement_is_refused_before_tokenising(tmp_path):
    """A 5 MB JSONL line (a tokenizer aborts the process on ~50 MB) and a 200,000-character statement:
    one line naming the file and line, or the item and the statement, not a crash."""
    from mechprobe import proofwriter as pw
    from mechprobe.incontext import PromptBuilder, encode_items
    from mechprobe.tiny import word_tokenizer
    from mechprobe.utils import MechprobeError

    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps({"id": "x", "theory": "Bob is big. " * 450_000}) + "\n")
    with pytest.raises(
        MechprobeError, match=r"meta-test.jsonl:1: a line of 5,400,\d+ bytes; expected records of at most"
    ):
        pw.read_meta(f)
    item = {"id": "q1", "statements": ["Bob is big.", "big " * 50_000], "question": "Bob is big.", "answer": "True"}
    with pytest.raises(
        MechprobeError, match=r"items: question q1: statement 1 has 200,000 characters; expected at most"
    ):
        encode_items(word_tokenizer(["Bob is big"]), [item], [[]], PromptBuilder())


def test_a_cache_dir_that_cannot_be_written_ends_in_one_line(tmp_path, monkeypatch):
    """CACHE_DIR below a file, in a place no one can write (/proc), or on a full disk: one line naming
    the path and the error (exit 2), status.json failed, no result file."""
    from mechprobe import probing_proofwriter
    from mechprobe.cli import run_main

    (tmp_path / "afile").write_text("x")
    base = ["--model", "tiny", "--data", str(tmp_path / "pw"), "--limit", "3", "--n-demos", "1", "--seeds", "0"]
    base += ["--null-draws", "0", "--threads", "1", "--knockout-items", "0", "--masking-items", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for cache, says in ((tmp_path / "afile" / "cache", "afile/cache: Not a directory"), ("/proc/mechprobe", "/proc")):
        out = tmp_path / f"o{len(says)}"
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "mechprobe.probing_proofwriter",
                *base,
                "--out-dir",
                str(out),
                "--cache-dir",
                str(cache),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and "Traceback" not in p.stderr and last.startswith("error: ") and says in last, (
            p.stderr
        )
        assert json.loads((out / "status.json").read_text())["status"] == "failed"
        assert not (out / "probe_results.json").exists()

    import safetensors.numpy

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "cache" / "x.safetensors"))

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    out = tmp_path / "full"
    argv = [*base, "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    monkeypatch.setattr(sys, "argv", ["probing_proofwriter", *argv])
    with pytest.raises(SystemExit) as e:
        run_main(probing_proofwriter.main)
    assert e.value.code == 2
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert not (out / "probe_results.json").exists()


def test_generated_theories_never_go_into_a_folder_holding_other_data(tmp_path):
    """--data naming a folder with other files and no CWA/ folder: refused (nothing written), as the k-th
    smallest generator refuses; an empty folder is generated into."""
    from mechprobe.proofwriter import load_items
    from mechprobe.utils import MechprobeError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(
        MechprobeError, match=r"mine: holds notes.txt but no CWA/depth-N/ folder; .*new or empty folder"
    ):
        load_items(tmp_path / "mine", generate=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    assert load_items(tmp_path / "empty", generate=True)


def test_unused_generation_settings_are_not_recorded_as_used(tmp_path, caplog):
    """A finetune on existing lists of 16 numbers asked for LENGTH 20 and VOCAB_SIZE 99: config.json
    records the lists it used (16, the data's vocabulary) and the log says the others apply only when
    generating."""
    import logging

    from mechprobe import finetune_gpt2

    finetune_gpt2.main(args(tmp_path, "a", "--max-steps", "1"))
    with caplog.at_level(logging.INFO, logger="mechprobe"):
        finetune_gpt2.main(args(tmp_path, "b", "--max-steps", "1", "--length", "20", "--vocab-size", "99"))
    a, b = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("a", "b"))
    assert b["length"] == a["length"] == 16 and b["vocab_size"] == a["vocab_size"] != 99
    assert "apply only when generating" in caplog.text


def test_a_run_killed_mid_training_and_rerun_equals_a_clean_run(tmp_path):
    """kill -9 after the first checkpoint of a finetune, then the same command again: it resumes and its
    results equal those of a run never interrupted (all but the seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    common = ["--max-steps", "300", "--eval-every", "20"]
    cmd = [sys.executable, "-m", "mechprobe.finetune_gpt2"]
    subprocess.run([*cmd, *args(tmp_path, "clean", *common)], env=env, check=True, capture_output=True, timeout=300)
    killed = args(tmp_path, "killed", *common)
    p = subprocess.Popen([*cmd, *killed], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, t0 = tmp_path / "killed" / "checkpoint.pt", time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    p.kill()
    p.wait()
    status = json.loads((tmp_path / "killed" / "status.json").read_text())["status"]
    assert status == "running"  # killed mid-run: nothing marked it otherwise
    subprocess.run([*cmd, *killed], env=env, check=True, capture_output=True, timeout=300)
    clean, resumed = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("clean", "killed"))
    for r in (clean, resumed):
        r.pop("train_seconds")
    assert resumed == clean and resumed["steps"] == 300


def test_two_runs_sharing_one_feature_cache_give_the_results_of_one_alone(tmp_path):
    """Two probing runs at once into one CACHE_DIR (different OUT_DIRs), and a run without the cache:
    the same results (all but the seconds)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    base = [sys.executable, "-m", "mechprobe.probing_proofwriter", "--model", "tiny", "--data", str(tmp_path / "pw")]
    base += ["--limit", "6", "--n-demos", "1", "--seeds", "0", "1", "--null-draws", "0", "--threads", "1"]
    base += ["--knockout-items", "0", "--masking-items", "0", "--view-items", "0"]
    subprocess.run([*base, "--out-dir", str(tmp_path / "alone"), "--no-cache"], env=env, check=True, timeout=300)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    runs = [subprocess.Popen([*base, *cache, "--out-dir", str(tmp_path / o)], env=env) for o in ("a", "b")]
    assert [p.wait(timeout=300) for p in runs] == [0, 0]
    res = {o: json.loads((tmp_path / o / "probe_results.json").read_text()) for o in ("alone", "a", "b")}
    for r in res.values():
        r.pop("seconds")
        r.pop("model", None)
    assert res["a"] == res["b"] == res["alone"]
