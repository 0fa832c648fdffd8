"""Command-line helpers of the drivers: argument types, --help with every default, the threads option,
what every run checks first, and run_main (one-line errors in the command line's words, signals)."""

import argparse
import logging
import os
import sys
from pathlib import Path

from .runs import run_folder
from .utils import LOG_FORMAT, MechprobeError, check_device, distinct_seeds, get_logger, set_threads


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


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the run folder says "interrupted" and is unlocked."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _stop(signum, frame):
    raise Stopped(signum)


def _long_options(fn):
    """{dest: (its first --option, the action)} of the driver's parser (the parser() of fn's module);
    {} for a function without one."""
    make = getattr(sys.modules.get(fn.__module__), "parser", None)
    if make is None:
        return {}
    out = {}
    for a in make()._actions:
        opts = [o for o in a.option_strings if o.startswith("--")]
        if opts:
            out[a.dest] = (opts[0], a)
    return out


def cli_names(msg, fn):
    """A library error in the command line's words: each `name=` of a parameter that is an option of the
    driver's parser (its module's parser()) becomes `--name=` (`restart=True` of a flag: `--restart`),
    as the scripts pass them (DATA_DIR -> --data-dir)."""
    import re

    flags = _long_options(fn)

    def name(m):
        if m.group(1) not in flags:
            return m.group(0)
        opt, a = flags[m.group(1)]
        return opt if a.nargs == 0 and m.group(2) in ("True", "1") else f"{opt}={m.group(2)}"

    return re.sub(r"(?<![\w.-])([a-z][a-z0-9_]*)=(\S*)", name, msg)


def unread_environment(fn, argv, environ):
    """Variables a script does not read, set in the environment as if it did (FOLDS=3 bash run_x.sh): the
    `NAME`s of the driver's options (NAME = the option's name, upper case) that are set while that option
    is not on the command line. Checked only under a script (MECHPROBE_SCRIPT set): a silently ignored
    setting would be a wrong result."""
    if not environ.get("MECHPROBE_SCRIPT"):
        return []
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    return [
        (dest.upper(), environ[dest.upper()], opt)
        for dest, (opt, a) in _long_options(fn).items()
        if environ.get(dest.upper()) and not given & set(a.option_strings)
    ]


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
