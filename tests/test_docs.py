"""The repository describes the product: a short README that links its docs, and no tracked text
that narrates how the project was developed (that is what git log is for)."""

import re
import subprocess

import pytest

from .conftest import ROOT

S, R, I = "sess" + "ion", "ro" + "und", "iss" + "ue"  # spelt apart, so that this file does not match itself
HISTORY = re.compile(
    rf"\b{S}s?[ -]\d+"  # a numbered work period, alone or as an adjective, or a range of them
    rf"|\b(this|last|previous|earlier|next|first) ({R}|{S})\b"
    rf"|\b{R} \d+\b"
    rf"|\b{I} #?\d+"
    rf"|\bthis {R}'s\b",
    re.I,
)
TEXT = (".md", ".py", ".sh", ".txt", ".toml", ".cfg", ".yml", ".yaml", ".json", ".html")


def tracked_text_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in out.splitlines() if n.endswith(TEXT) or n in (".ci/run", ".gitignore")]
    return [ROOT / n for n in names if (ROOT / n).exists()]


def test_history_pattern_catches_narration():
    for text in (
        f"the {S}-17 default",
        f"{S.title()} 8's recipe",
        f"{S}s 8-14",
        f"this {R}",
        f"{I.title()} #10's targets",
    ):
        assert HISTORY.search(text), text
    for text in ("a session of work in git log", "round to 3 decimals", "the issue tracker"):
        assert not HISTORY.search(text), text


def test_no_tracked_file_narrates_development_history():
    bad = []
    for path in tracked_text_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_readme_is_short_and_its_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    for doc in ("method.md", "results.md", "reasoner.md", "benchmarks.md"):
        assert f"docs/{doc}" in text, doc
