"""Run folders: atomic writes (with the umask's permissions), provenance, the lock of a dataset being
generated, and the one-run-per-folder contract (run_folder: lock, owner marker, status.json)."""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .utils import LOG_FORMAT, MechprobeError, get_logger


def umask():
    """The process's umask (read without changing it for longer than two calls)."""
    m = os.umask(0)
    os.umask(m)
    return m


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it onto `path` only on success, with the
    permissions a plain open() would give (0666 less the umask; mkstemp makes its files 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable, allow_nan=False)
            f.write("\n")


def write_jsonl(path, rows):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r, default=_jsonable) + "\n")


def sha256_file(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git(*args):
    """stdout of a git command in the package's folder, or None."""
    import subprocess

    try:
        r = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _git_state():
    """(the checkout's commit, whether tracked files changed since it), None where unknown."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, None if status is None else bool(status.strip())


def provenance(data_files=()):
    """Where a run's numbers come from: package versions, git commit, command line, data hashes."""
    import platform

    versions = {"python": platform.python_version()}
    for pkg in ("mechprobe", "torch", "transformers", "tokenizers", "numpy", "scikit-learn", "safetensors"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            pass
    commit, dirty = _git_state()
    files = {}
    for f in data_files:
        f = Path(f)
        if f.is_file():
            files[str(f)] = sha256_file(f)
    return {
        "versions": versions,
        "git_commit": commit,
        "git_modified": dirty,  # tracked files changed since that commit: the code is not exactly the commit's
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "data_sha256": files,
    }


def write_config(out, settings, data_files=(), **extra):
    """config.json: the run's settings, `extra` (e.g. device, dtype, threads) and its provenance."""
    cfg = {
        **(vars(settings) if isinstance(settings, argparse.Namespace) else dict(settings)),
        **extra,
        "provenance": provenance(data_files),
    }
    write_json(Path(out) / "config.json", cfg)
    return cfg


def save_figure(fig, path, pdf=False):
    """Save a matplotlib figure atomically as PNG (and PDF beside it when asked). The project's figures
    are made with layout="constrained"; bbox_inches="tight" (which draws the figure twice: 0.33 s
    instead of 0.25 s for a three-panel figure) only for a figure without a layout engine."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tight = {} if fig.get_layout_engine() is not None else {"bbox_inches": "tight"}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, **tight)
    if pdf:
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf", **tight)
    plt.close(fig)


@contextmanager
def data_lock(folder):
    """Hold `<parent>/.<name>.lock` (an exclusive flock) while a dataset folder is checked and
    generated: a second run generating the same folder waits, then finds the finished data."""
    import fcntl

    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fh = open(folder.parent / f".{folder.name}.lock", "w")  # noqa: SIM115 - closed below
    except OSError:  # a read-only place: nothing can be generated there, so nothing to wait for
        yield folder
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            get_logger().info("waiting for another run that generates %s", folder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def defining_settings(a, keys):
    """{key: a.key} for the settings that define a run (`keys`), tuples as lists, as config.json records
    them (finished_run, a checkpoint's settings)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(a, k)) for k in keys)}


def finished_run(out, settings):
    """The results.json of a complete run in `out` whose config.json holds these `settings` (a dict of
    the settings that define the run), else None: rerunning a finished run leaves it alone."""
    out = Path(out)
    try:
        status = json.loads((out / "status.json").read_text()).get("status")
        config = json.loads((out / "config.json").read_text())
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError, AttributeError):
        return None
    same = all(json.dumps(config.get(k), sort_keys=True) == json.dumps(v, sort_keys=True) for k, v in settings.items())
    return results if status == "complete" and same else None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(out):
    """Create out/.lock holding this pid; a lock of a live other process is an error, a dead one's is
    taken over. Returns the lock's path."""
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            other = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            other = 0
        if other and other != os.getpid() and _pid_alive(other):
            raise MechprobeError(
                f"{out}: another run (pid {other}) is writing into this folder; wait for it or choose another out_dir"
            ) from None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return lock


OWNER = ".mechprobe-run"  # names the driver whose runs a folder holds


# drivers whose module had another name: their folders stay theirs
RENAMED = {
    "finetune": "finetune_gpt2",
    "attnvisual": "attnvisual_gpt2",
    "causal": "causal_gpt2",
    "corrupt": "corrupt_proofwriter",
}


def _folder_owner(out):
    """The driver whose run the folder holds: its OWNER file, or for a folder written before that file
    existed, the module in its config.json's command line (None: no mechprobe run there)."""
    if (out / OWNER).exists():
        name = (out / OWNER).read_text().strip() or None
        return RENAMED.get(name, name)
    if (out / "status.json").exists() and (out / "config.json").exists():
        try:
            cmd = json.loads((out / "config.json").read_text()).get("provenance", {}).get("command") or []
        except (OSError, ValueError, AttributeError):
            cmd = []
        if cmd:
            return RENAMED.get(Path(str(cmd[0])).stem, Path(str(cmd[0])).stem)
    return None


def _check_owner(out, owner):
    """Refuse a folder that holds another driver's run, a model, or files no run wrote; then mark it."""
    other = _folder_owner(out)
    if other is None and any(out.iterdir()):
        weights = (".safetensors", ".bin", ".gguf")
        foreign = [f.name for f in out.iterdir() if f.name == "config.json" or f.suffix in weights]
        if foreign:
            raise MechprobeError(
                f"{out}: holds {', '.join(sorted(foreign)[:3])} that no run of mechprobe wrote (a model folder?); "
                "choose another out_dir: a run clears its folder's earlier results"
            )
    if other is not None and other != owner:
        raise MechprobeError(f"{out}: holds a run of {other}, not of {owner}; choose another out_dir")
    (out / OWNER).write_text(owner + "\n")


def _try_status(out, status):
    """Write status.json, or, when that fails too (a full disk), leave it: the error that stopped the
    run is the one to report."""
    try:
        write_json(out / "status.json", status)
    except OSError:
        pass


def _owned_lock(out, owner):
    """_take_lock, then (with an owner) _check_owner; the lock is released when the folder is refused."""
    lock = _take_lock(out)
    if owner is not None:
        try:
            _check_owner(out, owner)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
    return lock


def _clear(out, outputs, keep):
    """Remove leftovers of interrupted writes (.*.tmp*) and an earlier run's `outputs` (names or glob
    patterns; `keep` stays)."""
    for f in out.iterdir():
        if f.name.startswith(".") and ".tmp" in f.name:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    for pattern in outputs:
        for f in out.glob(pattern):
            if f.name not in keep and f.is_file():
                f.unlink()


@contextmanager
def run_folder(out, outputs=(), keep=(), owner=None):
    """Own an output folder for one run: all-or-nothing outputs, one run at a time.

    * `out` must be a folder (created if missing); a file there is an error.
    * A lock (`.lock`, holding the pid): a second run into the same folder stops at once naming
      the other's pid; a lock left by a dead process is taken over.
    * Leftovers of interrupted writes (`.*.tmp*`) and the stale `outputs` of an earlier run (names or
      globs; never `keep`, e.g. a checkpoint) are removed at the start: no older file beside this run's.
    * `owner` (the driver's name): a folder holding another driver's run (its `.mechprobe-run`
      file), a model or files no run wrote is refused before anything is removed.
    * `run.log` holds the run's log lines.
    * `status.json` says "running" (with the run's id and pid) until the run ends, then "complete",
      or "failed" / "interrupted": a reader can tell whether the folder holds a finished run.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MechprobeError(f"{out}: is a file; out_dir must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = _owned_lock(out, owner)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        _clear(out, outputs, keep)
        write_json(
            out / "status.json",
            {"status": "running", "run_id": run_id, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
        )
        fh = logging.FileHandler(out / "run.log", mode="w")
        fh.setFormatter(LOG_FORMAT)
        fh.stream.write(
            f"[{time.strftime('%H:%M:%S')}] run {run_id} into {out}: {' '.join(sys.argv)}\n"
        )  # run.log only
        get_logger().addHandler(fh)
        try:
            yield run_id
        except KeyboardInterrupt:
            _try_status(out, {"status": "interrupted", "run_id": run_id})
            raise
        except BaseException as e:
            _try_status(out, {"status": "failed", "run_id": run_id, "error": str(e)[:500]})
            raise
        write_json(
            out / "status.json",
            {"status": "complete", "run_id": run_id, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        )
    finally:
        for h in list(get_logger().handlers):
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (out / "run.log").resolve():
                get_logger().removeHandler(h)
                h.close()
        lock.unlink(missing_ok=True)
