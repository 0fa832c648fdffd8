"""The command lines: --help works, and user errors end in one line naming what is wrong (exit 2)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT / "src"),
    "HF_HUB_OFFLINE": "1",
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
}  # scripts call this python
MODULES = [
    "data",
    "finetune_gpt2",
    "probing_gpt2",
    "attnvisual_gpt2",
    "causal_gpt2",
    "finetune_proofwriter",
    "probing_proofwriter",
    "probing_arc",
    "corrupt_proofwriter",
    "calibrate_wired",
    "proofwriter_gen",
]


def run(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, cwd=kw.get("cwd", ROOT), timeout=300
    )


@pytest.mark.parametrize("module", MODULES)
def test_help(module):
    r = run(f"mechprobe.{module}", "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_missing_model_is_one_line(tmp_path):
    r = run(
        "mechprobe.finetune_gpt2",
        "--model",
        str(tmp_path / "nope"),
        "--data-dir",
        str(tmp_path / "d"),
        "--out-dir",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines == [
        f"error: {tmp_path / 'nope'}: model directory not found (expected a local folder written by save_pretrained)"
    ]
    assert not (tmp_path / "o").exists()


def test_missing_data_dir_is_one_line(tmp_path):
    r = run(
        "mechprobe.causal_gpt2",
        "--model",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "none"),
        "--out-dir",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_script_reports_not_found_model(tmp_path):
    r = subprocess.run(
        ["bash", str(ROOT / "run_probing_gpt2.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, "MODELS": str(tmp_path / "m"), "DATA_DIRS": str(tmp_path / "d"), "OUT_DIR": str(tmp_path / "o")},
    )
    assert r.returncode == 2 and "model directory not found" in r.stderr


def test_progress_writes_log_lines_when_not_a_terminal(caplog):
    """Long work shows in the log (done/total and the rate) even when stderr is not a terminal."""
    import logging

    from mechprobe.utils import get_logger, progress

    get_logger()
    with caplog.at_level(logging.INFO, logger="mechprobe"):
        bar = progress(total=10, desc="capture", unit="prompt", every=0.0)
        for _ in range(4):
            bar.update(2)
        bar.close()
        assert list(progress(range(3), desc="loop", every=0.0)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert "capture: 8/10 prompts" in lines[3] and "/s" in lines[3], lines
    assert lines[-1].startswith("loop: 3/3 its"), lines
    with caplog.at_level(logging.INFO, logger="mechprobe"):
        caplog.clear()
        progress(total=5, desc="quiet", disable=True).update(5)
    assert not caplog.records


def test_a_setting_the_script_does_not_read_is_refused(tmp_path):
    """FOLDS=3 bash run_probing_gpt2.sh: FOLDS is an option of the module but not a variable of the
    script: one line that says so and names the option (no run with the setting silently ignored); a
    variable the script reads, or the option after the script's name, runs."""
    env = {**ENV, "FOLDS": "3", "OUT_DIR": str(tmp_path / "o"), "MODELS": str(tmp_path / "none")}
    r = subprocess.run(
        ["bash", str(ROOT / "run_probing_gpt2.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: FOLDS=3 is set, but run_probing_gpt2.sh does not read FOLDS: pass --folds 3 after the script's name "
        "(its variables are at its top; --help lists every option)"
    ]
    r = subprocess.run(
        ["bash", str(ROOT / "run_probing_gpt2.sh"), "--folds", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2 and "not found" in r.stderr and "FOLDS" not in r.stderr  # past the check: the model


def test_library_errors_are_said_in_the_command_lines_words():
    """cli_names: a `name=` that is an option of the driver becomes `--name=`, a flag's `name=True` the
    flag alone; names that are no option (or parts of paths and words) are left as they are."""
    from mechprobe import finetune_gpt2, probing_proofwriter
    from mechprobe.cli import cli_names

    msg = "max_steps=0 and epochs=0; restart=True starts over; seeds=0 0 repeated; x.k=1 and no_such=2"
    assert cli_names(msg, finetune_gpt2.main) == (
        "--max-steps=0 and --epochs=0; --restart starts over; seeds=0 0 repeated; x.k=1 and no_such=2"
    )
    assert cli_names("folds=1: at least 2; n_demos=3", probing_proofwriter.main) == "--folds=1: at least 2; --n-demos=3"
    assert cli_names("folds=1", len) == "folds=1"  # a function of a module without parser()
