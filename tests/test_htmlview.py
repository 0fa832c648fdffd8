"""The offline attention view: the data it embeds, its checks, and (when Chromium is installed)
that a real browser renders the tokens with their attention colours."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from mechprobe import htmlview
from mechprobe.utils import MechprobeError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def planted_view(path):
    """Two examples; in example 0 the query puts weight 0.9 on token 2 at layer 1, head 0."""
    tokens = [" Alpha", " beta", " gamma", " delta", " </script>", " eps", " ?"]
    att = np.full((2, 2, 7), 0.01)
    att[1, 0, 2] = 0.9
    st = [
        {"span": (0, 2), "useful": True, "step": 0, "pred_step": 0},
        {"span": (2, 4), "useful": False, "step": -1, "pred_step": 1},
        {"span": (4, 6), "useful": True, "step": 1, "pred_step": -1},
    ]
    ex = [
        htmlview.example("first", tokens, att, st, "True", "False", queries=[6]),
        htmlview.example("second", tokens[:3], np.ones((2, 2, 3)) / 3, [], None, None),
    ]
    return htmlview.write_view(path, ex, "planted <view>")


def test_view_embeds_the_numbers_and_fetches_nothing(tmp_path):
    p = planted_view(tmp_path / "v.html")
    text = p.read_text()
    assert "http" not in text.replace("http-equiv", "")  # no script, style or font from the network
    data = json.loads(re.search(r'id="data">(.*?)</script>', text, re.S).group(1))
    assert data["examples"][0]["attention"][1][0][2] == 0.9
    assert data["examples"][0]["tokens"][4] == " </script>"  # escaped inside the script tag, intact after parsing
    assert "<title>planted &lt;view&gt;</title>" in text
    assert not list(tmp_path.glob(".*tmp*"))


def test_view_checks_its_input():
    with pytest.raises(MechprobeError, match=r"attention must be \(layers, heads, 3 tokens\), got \(2, 4\)"):
        htmlview.example("x", ["a", "b", "c"], np.ones((2, 4)), [])
    with pytest.raises(MechprobeError, match=r"statement span \[2, 5\] outside the 3 tokens"):
        htmlview.example("x", ["a", "b", "c"], np.ones((1, 1, 3)), [{"span": [2, 5], "useful": True, "step": 0}])
    with pytest.raises(MechprobeError, match="at least one example"):
        htmlview.render([], "t")


def test_token_texts_keep_the_spaces():
    text = "Bob is big. Is Bob big?"
    offsets = [(0, 0), (0, 3), (4, 6), (7, 10), (10, 11), (12, 14), (15, 18), (19, 22), (22, 23)]
    toks = htmlview.token_texts(text, offsets)
    assert toks[0] == "" and "".join(toks) == text
    assert toks[2] == " is"


def chromium(*args, timeout=60):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_view_renders_tokens_and_colours_in_headless_chromium(tmp_path):
    from PIL import Image

    p = planted_view(tmp_path / "v.html")
    prof = f"--user-data-dir={tmp_path / 'profile'}"
    dom = chromium(prof, "--dump-dom", p.as_uri()).stdout
    assert 'data-rendered="7"' in dom  # the script ran and drew the 7 tokens of example 0
    for t in ("Alpha", "gamma", "&lt;/script&gt;", "gold s1", "probe s1"):
        assert t in dom
    assert "background-color: rgb(214, 39, 40)" in dom  # the largest weight at full colour
    assert "rgba(214, 39, 40, 0.043)" in dom  # 0.01 / ((3 * 0.01 + 0.9) / 4): the mean over layers and heads
    assert "layer 1</option>" in dom and "head 1</option>" in dom  # the selectors
    shot = tmp_path / "shot.png"
    chromium(prof, f"--screenshot={shot}", "--window-size=900,400", p.as_uri())
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    red = (r > 180) & (g < 110) & (b < 110)  # a strongly attended token's background
    assert red.sum() > 100, "no attention colour on the page"
    assert (img.sum(-1) < 200).sum() > 200, "no dark text on the page"
    assert ((r > 200) & (g > 200) & (b > 200)).mean() > 0.5  # and the page is not one colour


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_long_prompt_wraps_inside_the_page_and_the_sink_is_set_apart(tmp_path):
    """An ARC-sized prompt (2,000 tokens, long unbroken words, newlines) stays within a 1,200-pixel
    window; the first token's large weight is left out of the colour scale and its share is said."""
    tokens = ["<s>"] + [
        (" " if i % 7 else "") + "x" * (3 + i % 11) + ("\n\n" if i % 97 == 0 else "") for i in range(2000)
    ]
    att = np.full((1, 1, len(tokens)), 0.3 / len(tokens))
    att[0, 0, 0], att[0, 0, 5] = 0.5, 0.2
    ex = htmlview.example("long", tokens, att, [{"span": (1, 40), "useful": True, "step": 0}], queries=[1999])
    p = htmlview.write_view(tmp_path / "long.html", [ex], "long prompt")
    prof = f"--user-data-dir={tmp_path / 'profile'}"
    dom = chromium(prof, "--window-size=1200,800", "--dump-dom", p.as_uri()).stdout
    width = int(re.search(r'data-width="(\d+)"', dom).group(1))
    assert width <= 1200, width
    assert re.search(r'<div id="sink">the first token takes 0.500 of the attention', dom)
    assert "background-color: rgb(214, 39, 40)" in dom  # token 5 (0.2) is the top of the scale, not the sink
    dom_abs = chromium(prof, "--window-size=1200,800", "--dump-dom", p.as_uri() + "#scale=absolute").stdout
    assert "rgba(214, 39, 40, 0.2)" in dom_abs and '<div id="sink"></div>' in dom_abs
