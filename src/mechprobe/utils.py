"""Small shared helpers: errors, atomic writes, JSONL reading, seeding, logging."""
import json
import logging
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class MechprobeError(Exception):
    """An error caused by the user's input; `main` prints it as one line and exits 2."""


def get_logger(name="mechprobe"):
    log = logging.getLogger(name)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
    return log


def seed_everything(seed):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
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


def iter_jsonl(path, on_error=None):
    """Yield (line_number, object) for each non-blank line; a bad line raises naming file and line,
    or, given on_error(line_number, message), is reported to it and skipped."""
    path = Path(path)
    if not path.exists():
        raise MechprobeError(f"{path}: file not found")
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}:{i}: malformed JSON line ({e.msg}); expected one JSON object per line"
                if on_error is None:
                    raise MechprobeError(msg) from None
                on_error(i, msg)


def save_figure(fig, path, pdf=False):
    """Save a matplotlib figure atomically as PNG (and PDF beside it when asked)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    if pdf:
        with atomic_path(path.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf", bbox_inches="tight")
    plt.close(fig)


def run_main(fn):
    """Run a CLI main; user errors print one line (no traceback) and exit with status 2."""
    try:
        return fn()
    except MechprobeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
