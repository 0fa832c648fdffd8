"""Small shared helpers: the project's error, logging and progress lines, seeding, reading JSON and
JSONL, the device and thread checks."""

import json
import logging
import random
import sys
import time
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
