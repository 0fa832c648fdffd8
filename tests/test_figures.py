"""Every figure of a small LLM run keeps its text on the canvas, and large head maps stay readable."""

import matplotlib
import matplotlib.text
import numpy as np
import pytest

from mechprobe import plots


@pytest.fixture
def checked(monkeypatch):
    """Wrap plots.save_figure: before saving, every visible text of the figure must lie inside it."""
    seen = {}
    real = plots.save_figure

    def check(fig, path, pdf=False):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        W, H = fig.bbox.width, fig.bbox.height
        tight = fig.get_tightbbox(r).transformed(fig.dpi_scale_trans)  # everything drawn, in pixels
        out = []
        if tight.x0 < -1 or tight.y0 < -1 or tight.x1 > W + 1 or tight.y1 > H + 1:
            for t in fig.findobj(matplotlib.text.Text):  # name the texts that leave the canvas
                b = t.get_window_extent(r)
                if (
                    t.get_visible()
                    and t.get_text().strip()
                    and (b.x0 < -1 or b.x1 > W + 1 or b.y0 < -1 or b.y1 > H + 1)
                ):
                    out.append(t.get_text()[:60])
            out = out or [f"drawn area {tight.bounds} outside {W} x {H}"]
        seen[path.name if hasattr(path, "name") else str(path)] = (out, (W, H))
        return real(fig, path, pdf)

    monkeypatch.setattr(plots, "save_figure", check)
    return seen


def test_every_figure_of_a_small_proofwriter_run_keeps_its_text_inside(tmp_path, checked):
    from mechprobe import probing_proofwriter

    probing_proofwriter.main(
        ["--data", str(tmp_path / "pw"), "--model", "tiny", "--out-dir", str(tmp_path / "o"), "--limit", "60"]
        + ["--n-demos", "1", "--knockout-items", "12", "--masking-items", "12", "--null-draws", "5"]
    )
    expected = {
        "accuracy_by_group.png",
        "probe_by_group.png",
        "probe_by_depth.png",
        "probe_by_layer.png",
        "probe_by_head.png",
        "selectivity.png",
        "knockout.png",
        "masking.png",
    }
    assert expected <= set(checked), set(checked)
    bad = {name: out for name, (out, _) in checked.items() if out}
    assert not bad, bad


def test_a_large_head_map_is_stacked_and_readable(tmp_path, checked):
    """A 30-layer, 9-head map (SmolLM2's size): panels stacked, not a 5,000-pixel strip."""
    rng = np.random.default_rng(0)
    hm = {k: rng.uniform(-0.3, 0.9, (30, 9)).tolist() for k in ("s_p1", "s_p2")}
    hm["entropy"] = rng.uniform(0, 1, (30, 9)).tolist()
    hm["null_high_p1"] = np.full((30, 9), 0.5).tolist()
    plots.head_map_figure(hm, tmp_path / "probe_by_head.png", "a model: per-head S")
    out, (W, H) = checked["probe_by_head.png"]
    assert not out and W < 2000 and H > 600, (out, W, H)
