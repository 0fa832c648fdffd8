"""One home for each default: the scripts hold the variables a user edits, empty unless set, and pass
only those that are set (and any other option) to their module, whose parser holds every default."""

import importlib
import re

import pytest

from .conftest import ROOT

SCRIPTS = sorted(p.name for p in ROOT.glob("run_*.sh"))


def variables(text):
    """{VAR: its value when unset} of the `VAR=${VAR:-value}` lines."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\w+)=\$\{\1:-([^}]*)\}", text, re.M)}


def passed(text):
    """{VAR: --option} of the options the script passes a variable to."""
    out = {m.group(2): m.group(1) for m in re.finditer(r'opt (--[\w-]+) "\$(\w+)"', text)}
    out.update(
        {m.group(1): m.group(2) for m in re.finditer(r'\[ -z "\$(\w+)" \] \|\| args\+=\((--[\w-]+) \$\1\)', text)}
    )
    out.update({m.group(1): m.group(2) for m in re.finditer(r'\[ "\$(\w+)" != 1 \] \|\| args\+=\((--[\w-]+)\)', text)})
    return out


def module_of(text):
    return importlib.import_module("mechprobe." + re.findall(r"^python -m mechprobe\.(\w+)", text, re.M)[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_write_no_default_and_pass_what_is_set(script):
    """Every variable is empty unless set and reaches an option of its module; a script holds at most 15
    (the rest pass through as options: "$@"); the module runs with its own defaults (no required option),
    and its module is named like the script."""
    text = (ROOT / script).read_text()
    have, given = variables(text), passed(text)
    assert have and all(v == "" for v in have.values()), {k: v for k, v in have.items() if v}
    assert set(have) == set(given), set(have) ^ set(given)
    assert len(have) <= 15 and '"$@"' in text
    mod = module_of(text)
    assert mod.__name__ == "mechprobe." + script[4:-3]
    actions = {o: a for a in mod.parser()._actions for o in a.option_strings}
    assert set(given.values()) <= set(actions), set(given.values()) - set(actions)
    assert not [a.dest for a in actions.values() if a.required]


def test_functions_are_at_most_50_lines():
    """The code habit of the library: a function longer than 50 lines is split into named steps."""
    import ast

    long = []
    for path in sorted((ROOT / "src" / "mechprobe").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
