"""An offline, self-contained HTML view of where chosen prompts' queries attend.

One file, nothing fetched at view time: inline styles and script, the numbers inline as JSON.
For each example the prompt's tokens are coloured by the query's attention
    w[t] = a[l, h, t]        (pooled over the query positions as the probe pools them)
for the layer and head chosen in two selectors ("mean" averages over layers or heads), scaled by
the largest weight shown apart from the first token (real LLMs park much of their attention on it,
an attention sink; its share is written beside the legend), or on an absolute 0-1 scale (a third
selector; a link can choose them: `attention_view.html#ex=0&layer=1&head=mean&scale=absolute`).
Long prompts wrap inside the page.
The gold useful statements are boxed in green with their step
(gold s0, s1, ...); the statements the probe predicts useful are underlined in dashed orange with
its predicted step (probe s0, ...). The gold answer and the model's answer are shown above.
"""

import json
import os
from pathlib import Path

import numpy as np

from .utils import MechprobeError


def token_texts(text, offsets):
    """Each token's text with the whitespace before it (from the offset mapping); special tokens ''."""
    out, prev = [], 0
    for s, e in offsets:
        if e <= s:
            out.append("")
            continue
        out.append(text[prev:e] if s >= prev else text[s:e])
        prev = e
    return out


def example(title, tokens, attention, statements, answer=None, prediction=None, queries=()):
    """One example of the view.

    tokens: T strings; attention: (L, H, T) weights of the (pooled) query; statements: dicts with
    span [start, end) token range, useful (bool), step (int, -1 = none), and optionally pred_step
    (int, -1 = predicted not useful; None = no prediction); queries: token positions of the query."""
    a = np.asarray(attention, dtype=float)
    if a.ndim != 3 or a.shape[2] != len(tokens):
        raise MechprobeError(f"view {title!r}: attention must be (layers, heads, {len(tokens)} tokens), got {a.shape}")
    for s in statements:
        lo, hi = s["span"]
        if not 0 <= lo < hi <= len(tokens):
            raise MechprobeError(f"view {title!r}: statement span {s['span']} outside the {len(tokens)} tokens")
    return {
        "title": str(title),
        "tokens": [str(t) for t in tokens],
        "attention": np.round(a, 5).tolist(),
        "statements": [
            {
                "span": [int(s["span"][0]), int(s["span"][1])],
                "useful": bool(s.get("useful", False)),
                "step": int(s.get("step", -1)),
                "pred_step": None if s.get("pred_step") is None else int(s["pred_step"]),
            }
            for s in statements
        ],
        "answer": None if answer is None else str(answer),
        "prediction": None if prediction is None else str(prediction),
        "queries": [int(q) for q in queries],
    }


STYLE = """
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 18px; margin: 0 0 8px 0; }
#controls { margin: 8px 0; display: flex; gap: 16px; flex-wrap: wrap; align-items: center; }
#meta { margin: 6px 0 10px 0; font-size: 14px; }
#tokens { font-family: ui-monospace, monospace; font-size: 16px; line-height: 2.6; max-width: 1100px;
  overflow-wrap: anywhere; }
.tok { white-space: pre-wrap; padding: 2px 0; }
.query { outline: 2px solid #1f5fbf; }
.stmt { display: inline; position: relative; padding: 3px 1px; border-radius: 3px; }
.gold { border: 2px solid #1a9641; }
.pred { text-decoration: underline dashed #f08c00 3px; text-underline-offset: 6px; }
.badge { font-size: 10px; vertical-align: super; margin: 0 2px; font-family: system-ui, sans-serif; }
.badge.g { color: #1a9641; } .badge.p { color: #c06000; }
#legend { font-size: 13px; margin-top: 14px; color: #555; }
#scale { display: inline-block; width: 160px; height: 12px; vertical-align: middle;
  background: linear-gradient(to right, rgba(214,39,40,0), rgba(214,39,40,1)); border: 1px solid #ccc; }
"""

SCRIPT = """
const DATA = JSON.parse(document.getElementById('data').textContent);
const ex = document.getElementById('ex'), ly = document.getElementById('layer'), hd = document.getElementById('head');
const sc = document.getElementById('scale_mode');
DATA.examples.forEach((e, i) => ex.add(new Option(e.title, i)));
function fill(sel, n, name) {
  const keep = sel.value; sel.innerHTML = '';
  sel.add(new Option('mean over ' + name + 's', 'mean'));
  for (let i = 0; i < n; i++) sel.add(new Option(name + ' ' + i, String(i)));
  if ([...sel.options].some(o => o.value === keep)) sel.value = keep;
}
function weights(e) {
  const A = e.attention, L = A.length, H = A[0].length, T = e.tokens.length;
  const ls = ly.value === 'mean' ? [...Array(L).keys()] : [Number(ly.value)];
  const hs = hd.value === 'mean' ? [...Array(H).keys()] : [Number(hd.value)];
  const w = new Array(T).fill(0);
  for (const l of ls) for (const h of hs) for (let t = 0; t < T; t++) w[t] += A[l][h][t] / (ls.length * hs.length);
  return w;
}
function badge(parent, cls, text) {
  const b = document.createElement('span'); b.className = cls; b.textContent = text; parent.appendChild(b);
}
function render() {
  const e = DATA.examples[Number(ex.value)];
  fill(ly, e.attention.length, 'layer'); fill(hd, e.attention[0].length, 'head');
  const w = weights(e);
  const mx = sc.value === 'absolute' ? 1 : Math.max(...w.slice(1), 1e-12);
  const meta = document.getElementById('meta');
  meta.textContent = (e.answer !== null ? 'gold answer: ' + e.answer : '') +
    (e.prediction !== null ? '    model answer: ' + e.prediction : '');
  document.getElementById('scale-max').textContent = mx.toFixed(3);
  document.getElementById('sink').textContent = sc.value === 'absolute' ? '' :
    'the first token takes ' + w[0].toFixed(3) + ' of the attention and is left out of the scale';
  const box = document.getElementById('tokens'); box.innerHTML = '';
  const owner = new Array(e.tokens.length).fill(-1);
  e.statements.forEach((s, j) => { for (let t = s.span[0]; t < s.span[1]; t++) owner[t] = j; });
  let t = 0;
  while (t < e.tokens.length) {
    let parent = box;
    const j = owner[t];
    if (j >= 0) {
      const s = e.statements[j];
      parent = document.createElement('span');
      parent.className = 'stmt' + (s.useful ? ' gold' : '') + (s.pred_step !== null && s.pred_step >= 0 ? ' pred' : '');
      box.appendChild(parent);
    }
    do {
      const sp = document.createElement('span');
      sp.className = 'tok' + (e.queries.includes(t) ? ' query' : '');
      sp.textContent = e.tokens[t];
      sp.style.backgroundColor = 'rgba(214,39,40,' + Math.min(1, w[t] / mx).toFixed(3) + ')';
      sp.title = 'token ' + t + ': weight ' + w[t].toFixed(4);
      parent.appendChild(sp);
      t++;
    } while (j >= 0 && t < e.tokens.length && owner[t] === j);
    if (j >= 0) {
      const s = e.statements[j];
      if (s.useful) badge(parent, 'badge g', 'gold s' + s.step);
      if (s.pred_step !== null && s.pred_step >= 0) badge(parent, 'badge p', 'probe s' + s.pred_step);
    }
  }
  document.body.dataset.rendered = String(e.tokens.length);
  document.body.dataset.width = String(document.documentElement.scrollWidth);
}
ex.onchange = render; ly.onchange = render; hd.onchange = render; sc.onchange = render;
// a link may choose the view: attention_view.html#ex=0&layer=1&head=mean
const want = Object.fromEntries(location.hash.slice(1).split('&').filter(x => x).map(x => x.split('=')));
if (want.ex) ex.value = want.ex;
if (want.scale) sc.value = want.scale;
render();
if (want.layer) ly.value = want.layer;
if (want.head) hd.value = want.head;
if (want.layer || want.head) render();
"""


def render(examples, title):
    """The HTML text of a view of `examples` (dicts from example())."""
    if not examples:
        raise MechprobeError("the attention view needs at least one example")
    data = json.dumps({"title": title, "examples": examples}).replace("</", "<\\/")
    esc = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc}</title><style>{STYLE}</style></head>
<body>
<h1>{esc}</h1>
<div id="controls">
  <label>example <select id="ex"></select></label>
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <label>colour scale <select id="scale_mode"><option value="relative">largest weight shown (first token apart)</option>
    <option value="absolute">absolute, 0 to 1</option></select></label>
</div>
<div id="meta"></div>
<div id="tokens"></div>
<div id="legend">0 <span id="scale"></span> <span id="scale-max"></span>: attention of the query (blue outline)
to each token &nbsp;|&nbsp; <span style="border:2px solid #1a9641;padding:0 3px">gold useful</span> (step)
&nbsp;|&nbsp; <span style="text-decoration:underline dashed #f08c00 3px">probe's useful</span> (predicted step)
<div id="sink"></div></div>
<script type="application/json" id="data">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def write_view(path, examples, title):
    """Write the view to `path` atomically (a temporary file renamed); returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(render(examples, title), encoding="utf-8")
    tmp.replace(path)
    return path


def list_examples(tok, ids, rows, records, trees, logits, n):
    """The first n lists for the HTML view: numbers coloured by the last token's attention."""
    out = []
    for i in range(min(n, len(records))):
        toks = [(" " if j else "") + tok.decode([int(t)]).strip() for j, t in enumerate(ids[i])]  # the prompt's words
        st = [
            {"span": (t, t + 1), "useful": bool(records[i]["useful"][t]), "step": records[i]["step"][t], "pred_step": p}
            for t, p in enumerate(trees[i])
        ]
        pred = tok.decode([int(logits[i].argmax())]).strip()
        out.append(example(f"list {i}", toks, rows[i], st, records[i]["answer"], pred, queries=[len(toks) - 1]))
    return out
