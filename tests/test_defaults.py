"""One home for each default: every `VAR=${VAR:-value}` of a script equals the default of the
module option it is passed to (so `python -m mechprobe.<module>` runs the script's experiment)."""

import re

import pytest

from .conftest import ROOT

SCRIPTS = sorted(p.name for p in ROOT.glob("run_*.sh"))


def script_defaults(text):
    return {m.group(1): m.group(2).strip("\"'") for m in re.finditer(r"^(\w+)=\$\{\1:-([^}]*)\}", text, re.M)}


def passed_options(text):
    """{VAR: --option} for options given a variable in the python command line."""
    cmd = text[text.index("python -m mechprobe.") :].split("\necho")[0]
    out = {}
    for m in re.finditer(r'(--[\w-]+) "?\$(\w+)"?', cmd):
        out[m.group(2)] = m.group(1)
    for m in re.finditer(r"\$\{(\w+):\+(--[\w-]+)", cmd):
        out[m.group(1)] = m.group(2)
    for m in re.finditer(r'\[ "\$(\w+)" = 1 \](?: &&|; then) flags\+=\((--[\w-]+)\)', text):
        out.setdefault(m.group(1), m.group(2))
    return out


def module_of(text):
    return re.search(r"python -m mechprobe\.(\w+)", text).group(1)


def normalise(value, action):
    """The script's text value as the module would parse it."""
    if action.option_strings and action.nargs == 0:  # store_true flags: 1 / 0 in the scripts
        return value == "1"
    if value == "":
        return action.default if action.default in (None, "") else None
    parts = value.split()
    conv = action.type or str
    vals = [conv(x) for x in parts]
    return vals if action.nargs in ("+", "*") or isinstance(action.nargs, int) else vals[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_defaults_equal_module_defaults(script):
    import importlib

    text = (ROOT / script).read_text()
    mod = importlib.import_module(f"mechprobe.{module_of(text)}")
    actions = {o: a for a in mod.parser()._actions for o in a.option_strings}
    defaults, passed = script_defaults(text), passed_options(text)
    checked, differ = 0, []
    for var, opt in passed.items():
        if var not in defaults or opt not in actions:
            continue
        act = actions[opt]
        if act.required:
            continue  # the scripts give paths the modules require
        want = normalise(defaults[var], act)
        have = act.default
        if isinstance(have, tuple):
            have = list(have)
        if want != have and not (want is None and have in (None, "")):
            differ.append(f"{var}={defaults[var]!r} but {opt} defaults to {have!r}")
        checked += 1
    assert not differ, f"{script}: " + "; ".join(differ)
    assert checked >= 3, f"{script}: only {checked} variables checked"


def test_functions_are_at_most_50_lines():
    """The code habit of the library: a function longer than 50 lines is split into named steps."""
    import ast

    long = []
    for path in sorted((ROOT / "src" / "mechprobe").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
