"""Small shared helpers: errors, atomic writes, JSONL reading, seeding, logging."""

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class MechprobeError(Exception):
    """An error caused by the user's input; `main` prints it as one line and exits 2."""


LOG_FORMAT = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")


def get_logger(name="mechprobe"):
    """The package's logger: INFO and up, a NullHandler only (the CLIs attach a stream, runs a file)."""
    log = logging.getLogger(name)
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    return log


def cli_setup():
    """What a command line (not the library) sets: offline mode, log lines on stderr, quiet transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    log = get_logger()
    if not any(getattr(h, "_mechprobe_cli", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(LOG_FORMAT)
        h._mechprobe_cli = True
        log.addHandler(h)
    # transformers reads these when it is imported (on first use: a run served by the feature cache
    # never imports it); when it already is, its own switches
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        disable_progress_bars()


PROGRESS_EVERY = 30.0  # seconds between progress lines in the log


class _LoggedBar:
    """A tqdm bar (shown only on a terminal) that also writes a log line every PROGRESS_EVERY seconds:
    `<desc>: done/total <unit>s (rate/s, about N s left)`, so that a run's log shows long work."""

    def __init__(self, bar, desc, unit, every, total, initial):
        self.bar, self.desc, self.unit, self.every = bar, desc or "progress", unit or "it", every
        self.total, self.initial, self.done = total, initial, initial  # counted here: a disabled tqdm counts nothing
        self.t0 = self.last = time.time()

    def __iter__(self):
        for x in self.bar:
            yield x
            self._tick(1)

    def update(self, n=1):
        self.bar.update(n)
        self._tick(n)

    def _tick(self, n):
        self.done += n
        now = time.time()
        if now - self.last >= self.every:
            self.last = now
            done, total = self.done, self.total
            rate = (done - self.initial) / max(now - self.t0, 1e-9)
            left = f", about {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            units = self.unit + ("es" if self.unit.endswith("s") else "s")
            get_logger().info("%s: %d%s %s (%.2f/s%s)", self.desc, done, of, units, rate, left)

    def close(self):
        self.bar.close()

    def __getattr__(self, name):
        return getattr(self.bar, name)


def progress(iterable=None, every=PROGRESS_EVERY, **kw):
    """tqdm, shown only when stderr is a terminal (log files stay readable), plus a log line every
    `every` seconds with done/total and the rate (unless disabled)."""
    from tqdm import tqdm

    off = kw.pop("disable", False)
    bar = tqdm(iterable, disable=off or not sys.stderr.isatty(), dynamic_ncols=True, **kw)
    if off:
        return bar
    total = kw.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
    return _LoggedBar(bar, kw.get("desc"), kw.get("unit"), every, total, kw.get("initial", 0))


def seed_everything(seed):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def read_json(path, what="JSON file"):
    path = Path(path)
    if not path.exists():
        raise MechprobeError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MechprobeError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


MAX_LINE_BYTES = 4 << 20  # a JSONL record longer than this is refused (a tokenizer aborts on ~50 MB of text)


def iter_jsonl(path, on_error=None):
    """Yield (line_number, object) for each non-blank line; a bad line (not UTF-8, not JSON, longer than
    MAX_LINE_BYTES) raises naming file and line, or, given on_error(line_number, message), is reported
    to it and skipped."""
    path = Path(path)
    if not path.exists():
        raise MechprobeError(f"{path}: file not found")
    if path.is_dir():
        raise MechprobeError(f"{path}: is a folder; expected a JSONL file")
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if len(raw) > MAX_LINE_BYTES:
                msg = f"{path}:{i}: a line of {len(raw):,} bytes; expected records of at most {MAX_LINE_BYTES:,} bytes"
                if on_error is None:
                    raise MechprobeError(msg)
                on_error(i, msg)
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                msg = (
                    f"{path}:{i}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "expected UTF-8 JSON lines"
                )
                if on_error is None:
                    raise MechprobeError(msg) from None
                on_error(i, msg)
                continue
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}:{i}: malformed JSON line ({e.msg}); expected one JSON object per line"
                if on_error is None:
                    raise MechprobeError(msg) from None
                on_error(i, msg)


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


# ---------------------------------------------------------------- argument checks (argparse types)


def _typed(cast, ok, what):
    def check(text):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return v

    check.__name__ = what
    return check


positive_int = _typed(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
seed_int = _typed(int, lambda v: 0 <= v < 2**32, "a seed from 0 to 4294967295")
at_least_two = _typed(int, lambda v: v >= 2, "an integer >= 2")
positive_float = _typed(float, lambda v: v > 0, "a number > 0")
nonneg_float = _typed(float, lambda v: v >= 0, "a number >= 0")
share = _typed(float, lambda v: 0 <= v <= 1, "a number between 0 and 1")


def distinct_seeds(seeds):
    if len(set(seeds)) != len(seeds):
        raise MechprobeError(
            f"seeds={' '.join(map(str, seeds))}: a seed is repeated; give distinct seeds (the spread over seeds "
            "would be wrong)"
        )
    return seeds


def set_threads(n):
    """torch intra- and inter-op threads and numba's (the kNN's compiled loops) (0: the defaults,
    all cores). Two torch processes on the same cores slow each other down many times over: give
    each a share of the cores."""
    import torch

    if n:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # only settable before any parallel work started
            pass
        try:
            import numba

            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        except ImportError:  # the kNN's torch path needs no thread setting of its own
            pass
    return torch.get_num_threads()


def check_device(device):
    """A clear error for a CUDA device on a machine without one."""
    import torch

    if not (str(device) in ("cpu", "auto") or str(device).startswith(("cuda", "mps", "xpu"))):
        raise MechprobeError(f"device={device}: expected cpu, cuda, cuda:N or auto")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise MechprobeError(
            f"device={device}: this machine has no CUDA GPU (torch.cuda.is_available() is False); use device=cpu"
        )
    return device


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help that shows every option's default, also of options without a help text."""

    def _format_action(self, action):
        if not action.help and action.option_strings and action.default not in (None, argparse.SUPPRESS, False, ""):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def add_threads_arg(p):
    p.add_argument(
        "--threads",
        type=nonneg_int,
        default=0,
        help="torch threads (0: all cores); lower it when another job shares the cores",
    )


def prepare(a):
    """What every run checks and sets first: the device (unless "auto"), torch's threads (a.threads
    becomes the number in use), distinct seeds where there are seeds, an out_dir that is no file.
    Returns the output folder."""
    if a.device != "auto":
        check_device(a.device)
    a.threads = set_threads(a.threads)
    if getattr(a, "seeds", None) is not None:
        distinct_seeds(list(a.seeds))
    out = Path(a.out_dir)
    if out.exists() and not out.is_dir():
        raise MechprobeError(f"{out}: is a file; out_dir must be a folder")
    return out


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


def run_driver(a, outputs, run):
    """prepare(a), then run(a) inside run_folder(a.out_dir, outputs), owned by run's module (the
    driver); returns its results."""
    prepare(a)
    with run_folder(a.out_dir, outputs, owner=driver_name(run)):
        return run(a)


def driver_name(fn):
    """The name of the driver module that defines fn ("probing_proofwriter"), also when it runs as
    `python -m mechprobe.probing_proofwriter` (then its module is __main__, its spec says the name)."""
    mod = sys.modules.get(fn.__module__)
    spec = getattr(mod, "__spec__", None)
    return (spec.name if spec is not None and spec.name else fn.__module__).rsplit(".", 1)[-1]


# ---------------------------------------------------------------- run folders


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


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the run folder says "interrupted" and is unlocked."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def cli_names(msg, fn):
    """A library error in the command line's words: each `name=` of a parameter that is an option of the
    driver's parser (its module's parser()) becomes `--name=` (`restart=True` of a flag: `--restart`),
    as the scripts pass them (DATA_DIR -> --data-dir)."""
    import re

    make = getattr(sys.modules.get(fn.__module__), "parser", None)
    if make is None:
        return msg
    flags = {a.dest: a for a in make()._actions if any(o.startswith("--") for o in a.option_strings)}

    def name(m):
        a = flags.get(m.group(1))
        if a is None:
            return m.group(0)
        opt = next(o for o in a.option_strings if o.startswith("--"))
        return opt if a.nargs == 0 and m.group(2) in ("True", "1") else f"{opt}={m.group(2)}"

    return re.sub(r"(?<![\w.-])([a-z][a-z0-9_]*)=(\S*)", name, msg)


def unread_environment(fn, argv, environ):
    """Variables a script does not read, set in the environment as if it did (FOLDS=3 bash run_x.sh): the
    `NAME`s of the driver's options (NAME = the option's name, upper case) that are set while that option
    is not on the command line. Checked only under a script (MECHPROBE_SCRIPT set): a silently ignored
    setting would be a wrong result."""
    make = getattr(sys.modules.get(fn.__module__), "parser", None)
    if make is None or not environ.get("MECHPROBE_SCRIPT"):
        return []
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    out = []
    for a in make()._actions:
        opts = [o for o in a.option_strings if o.startswith("--")]
        if opts and environ.get(a.dest.upper()) and not given & set(a.option_strings):
            out.append((a.dest.upper(), environ[a.dest.upper()], opts[0]))
    return out


def run_main(fn):
    """Run a CLI main; user errors print one line (no traceback) and exit with status 2; Ctrl-C,
    SIGTERM and SIGHUP end the run as interrupted (status.json says so, the lock is released; exit
    130, 143, 129). After a finished run the process ends at once (outputs are closed and renamed by
    then, streams and log handlers flushed): the interpreter's own teardown would spend 0.5-1 s
    freeing torch's modules."""
    import signal

    cli_setup()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    unread = unread_environment(fn, sys.argv[1:], os.environ)
    if unread:
        name, value, opt = unread[0]
        print(
            f"error: {name}={value} is set, but {os.environ['MECHPROBE_SCRIPT']} does not read {name}: pass {opt} "
            f"{value} after the script's name (its variables are at its top; --help lists every option)",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        fn()
    except MechprobeError as e:
        print(f"error: {cli_names(str(e), fn)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only or missing folder, a symlink loop: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (operating system error {e.errno})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print("interrupted" + (f" (signal {e.signum})" if isinstance(e, Stopped) else ""), file=sys.stderr)
        sys.exit(128 + e.signum if isinstance(e, Stopped) else 130)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)
