"""Runs that are stopped or shared: SIGTERM and SIGHUP end a run as Ctrl-C does, and results are
readable by colleagues (the umask decides, not mkstemp's 0600)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mechprobe.utils import write_json

from .conftest import ROOT
from .test_finetune import args


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stopped_run_says_interrupted_and_unlocks(tmp_path, sig, code):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mechprobe.finetune",
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
    assert (out / ".mechprobe-run").read_text().strip() == "finetune"  # the driver's name, also under -m


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
    with pytest.raises(MechprobeError, match="DEVICE=gpu: expected cpu, cuda, cuda:N or auto"):
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
    from mechprobe.utils import MechprobeError, run_folder

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(MechprobeError, match=r"model: holds config.json, model.safetensors that no run of mechprobe"):
        with run_folder(model, outputs=("config.json",), owner="probing_gpt2"):
            pass
    assert (model / "config.json").read_text() == '{"model_type": "gpt2"}' and not (model / ".lock").exists()
    run = tmp_path / "ft"
    with run_folder(run, outputs=("config.json", "results.json"), owner="finetune"):
        write_json(run / "config.json", {"lr": 1})
        write_json(run / "results.json", {"acc": 1})
    with pytest.raises(MechprobeError, match=r"ft: holds a run of finetune, not of probing_gpt2"):
        with run_folder(run, outputs=("config.json",), owner="probing_gpt2"):
            pass
    assert json.loads((run / "results.json").read_text()) == {"acc": 1}
    with run_folder(run, outputs=("config.json", "results.json"), owner="finetune"):  # its own: cleared, rerun
        assert not (run / "results.json").exists()
    legacy = tmp_path / "legacy"  # a folder written before the owner file: its config.json's command says
    legacy.mkdir()
    write_json(legacy / "config.json", {"provenance": {"command": ["/x/mechprobe/finetune.py", "--lr", "1"]}})
    write_json(legacy / "status.json", {"status": "complete"})
    with pytest.raises(MechprobeError, match="holds a run of finetune"):
        with run_folder(legacy, owner="causal"):
            pass


def test_a_complete_finetune_is_left_alone(tmp_path, caplog):
    """Rerunning a finished run with the same settings changes nothing; RESTART=1 trains it again."""
    import logging

    from mechprobe import finetune

    run = args(tmp_path, "run", "--max-steps", "4", "--eval-every", "2", "--target-acc", "0.01")
    first = finetune.main(run)
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run").iterdir() if f.is_file()}
    with caplog.at_level(logging.INFO, logger="mechprobe"):
        again = finetune.main(run)
    assert again == first and "holds a complete run with these settings" in caplog.text
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run").iterdir() if f.is_file()} == before
    finetune.main(run + ["--restart"])
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
    from mechprobe.utils import data_lock

    (tmp_path / "afile").write_text("x")  # its "folder" cannot hold a lock file (as a read-only one)
    with data_lock(tmp_path / "afile" / "d") as f:
        assert f == tmp_path / "afile" / "d"


def test_operating_system_errors_are_one_line(tmp_path):
    """OUT_DIR below a file, a read-only place, a full disk: one line naming the path, exit 2."""
    (tmp_path / "afile").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "afile" / "run"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mechprobe.finetune",
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

    from mechprobe.utils import run_main

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
