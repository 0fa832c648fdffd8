"""Attention knockout: is the reasoning tree used? Block the query positions' attention to chosen
statements inside the forward, and measure what the answer loses.

For the chosen layers l, every (query q, key t) entry with q in the query set Q_b and t in the
blocked key set K_b of prompt b gets -inf added to its attention mask:
    A[l, h, q, t] = softmax_t( q_q . k_t / sqrt(d) + m_qt + (-inf if q in Q_b and t in K_b) )
so a blocked key gets weight 0 and the rest of the row renormalises. No weight changes. The
edit is a forward pre-hook on each chosen layer's attention module that rewrites its
`attention_mask` argument, so it acts the same under the rows attention function (capture.py),
eager attention (the hook method) and SDPA.

A study (knockout_study) compares conditions, each a set of statements per prompt:
nothing; the gold useful statements; the statements the probe predicts useful; as many
not-useful statements drawn at random (one draw per seed). For each condition and each layer
window (layers >= l; l = 0 is all layers) it reports, over the prompts:
  accuracy       argmax of the scored tokens == gold
  changed        share of prompts whose argmax differs from the unablated model's
  margin_drop    mean of  m_0 - m,  m = z_gold - max_{j != gold} z_j  over the scored tokens
                 (m_0 without knockout)
"""

from contextlib import contextmanager

import numpy as np
import torch

from .capture import pad_batch, pad_queries
from .models import attention_modules, logits_at, model_device
from .utils import MechprobeError, get_logger, progress

log = get_logger()


@contextmanager
def knockout(model, query_mask, key_mask, layers=None, offset=0):
    """While active, the positions of query_mask (B, T) bool do not attend to those of key_mask
    (B, T) bool, in `layers` (None: all). Every forward inside must have these B prompts of T tokens,
    or, with offset P > 0, their last T - P tokens run on a cache of the first P (prefix.py; the
    queries must then lie among those last T - P)."""
    mods = attention_modules(model)
    layers = list(range(len(mods))) if layers is None else sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < len(mods)]
    if bad:
        raise MechprobeError(f"knockout layers {bad} do not exist (the model has {len(mods)} layers)")
    qm, km = _checked_masks(query_mask, key_mask, offset)
    B, T = qm.shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()[offset:]  # (T - P, T) key t visible from query q
    blocked = (qm[:, offset:, None] & km[:, None, :])[:, None]  # (B, 1, Tq, Tk)
    on_device = {}  # the blocked entries on each device the layers run on
    Tq = T - offset

    def pre_hook(module, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        if h is None or h.shape[0] != B or h.shape[1] != Tq:
            raise MechprobeError(
                f"knockout was set for {B} prompts of {Tq} tokens; the forward has {tuple(h.shape[:2])}"
            )
        m = kwargs.get("attention_mask")
        blk = on_device.setdefault(h.device, blocked.to(h.device))
        if m is None:  # SDPA's causal shortcut: build the causal mask it stands for
            m = torch.zeros(B, 1, Tq, T, dtype=h.dtype, device=h.device).masked_fill(
                ~causal.to(h.device), float("-inf")
            )
        if m.shape[-1] > T:  # a key axis longer than the prompt (static cache): extend with False
            blk = torch.nn.functional.pad(blk, (0, m.shape[-1] - T))
        m = m.expand(B, *m.shape[1:])
        kwargs["attention_mask"] = m & ~blk if m.dtype == torch.bool else m.masked_fill(blk, float("-inf"))
        return args, kwargs

    handles = []
    try:
        for l in layers:
            handles.append(mods[l][1].register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _checked_masks(query_mask, key_mask, offset):
    """The two masks as bool tensors, checked: both (B, T), no query in the cached first `offset`
    tokens, no query left with no key to see."""
    qm, km = torch.as_tensor(query_mask, dtype=torch.bool), torch.as_tensor(key_mask, dtype=torch.bool)
    if qm.shape != km.shape or qm.dim() != 2:
        raise MechprobeError(f"query_mask {tuple(qm.shape)} and key_mask {tuple(km.shape)} must both be (B, T)")
    if offset and qm[:, :offset].any():
        raise MechprobeError(f"knockout queries lie in the first {offset} tokens, which run from a cache")
    starved = starved_queries(qm, km)
    if starved.any():
        b, q = starved.nonzero()[0].tolist()
        raise MechprobeError(f"knockout would block every key of query position {q} in prompt {b}")
    return qm, km


def starved_queries(query_mask, key_mask):
    """(B, T) bool: the query positions that would see no key at all (under the causal mask) once
    the keys of key_mask are blocked from them."""
    T = query_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return query_mask & ~(causal & ~key_mask[:, None, :]).any(-1)


@contextmanager
def fast_attention(model):
    """SDPA attention for the duration (no (T, T) weight matrix is built; the knockout's mask edit
    acts on it the same), back to the model's own implementation after; unchanged where the model
    has no SDPA path."""
    old = getattr(model.config, "_attn_implementation", None)
    try:
        model.set_attn_implementation("sdpa")
        switched = old != "sdpa"
    except Exception:  # noqa: BLE001 - a model without SDPA keeps its attention
        switched = False
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(old)


def key_masks(prompts, knocked, T):
    """(B, T) bool key mask: the token spans of the knocked statements of each prompt."""
    km = torch.zeros(len(prompts), T, dtype=torch.bool)
    for b, (p, ks) in enumerate(zip(prompts, knocked)):
        for s in ks:
            a, e = p["spans"][s]
            km[b, a:e] = True
    return km


@torch.no_grad()
def knockout_scores(model, prompts, knocked, layers, scored=None, batch_size=64, cache=None, model_id=None, stats=None):
    """Scores (N, W) at each prompt's last token with the knocked statements blocked from its
    queries in `layers` (knocked: statement indices per prompt; layers None: no knockout).

    prompts: dicts with "ids" (token ids), "spans" (statement token ranges [start, end)),
    "queries" (the query positions), optionally "key" (cache.prompt_key). scored: the token ids
    scored (W of them; None: all, W = V); batch_size 0: sized to the free memory (incontext.auto_batch_size);
    "answer": (N, 1), the mean log-probability of the prompt's answer tokens (its "target" range).
    cache: a cache.FeatureCache (with model_id, the model's fingerprint) that keeps each prompt's row
    per knocked set, so that only prompts not seen with these knocked statements are run.
    Prompts that share their first tokens run only the rest on the prefix's cache (prefix.py)."""
    if cache is not None and cache.enabled:
        return _cached_scores(model, prompts, knocked, layers, scored, batch_size, cache, model_id, stats)
    from . import prefix
    from .incontext import auto_batch_size
    from .models import resolve

    model = resolve(model)  # a models.ModelFolder is loaded only when a pass must run
    batch_size = auto_batch_size(model, max(len(p["ids"]) for p in prompts), batch_size)
    dev = model_device(model)
    model.eval()
    out = [None] * len(prompts)
    groups = prefix.model_groups(model, [p["ids"] for p in prompts], [min(p["queries"]) for p in prompts])
    for g in groups:
        pkv = prefix.prefix_kv(model, prompts[g.members[0]]["ids"][: g.prefix]) if g.prefix else None
        order = sorted(g.members, key=lambda i: len(prompts[i]["ids"]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            z = _batch_scores(model, [prompts[i] for i in idx], [knocked[i] for i in idx], layers, scored, dev, pkv)
            for b, i in enumerate(idx):
                out[i] = z[b]
    return torch.stack(out)


def _batch_scores(model, batch, knocked, layers, scored, dev, pkv=None):
    """knockout_scores of one batch of prompts (right-padded): (b, W) rows, NaN for a prompt whose
    every key the knocked statements would block. pkv: a prefix.PrefixKV of the first P tokens that
    every prompt of the batch starts with (only the rest runs)."""
    ids, mask = pad_batch([p["ids"] for p in batch], 0)
    T = ids.shape[1]
    P = pkv.length if pkv is not None else 0
    qm = torch.zeros(len(batch), T, dtype=torch.bool)
    for b, p in enumerate(batch):
        qm[b, list(p["queries"])] = True
    km = key_masks(batch, knocked, T) if layers is not None else torch.zeros_like(qm)
    starved = starved_queries(qm, km).any(1)  # left out of the condition (a NaN row)
    km[starved] = False
    if isinstance(scored, str):  # "answer": the positions that predict each answer token
        pos = pad_queries([range(p["target"][0] - 1, p["target"][1] - 1) for p in batch])
    else:
        pos = (mask.sum(1) - 1)[:, None]  # the last token
    pos_ok = pos >= 0
    sids, smask, spos = ids[:, P:].to(dev), mask[:, P:].to(dev), (pos.clamp(min=P) - P)  # the part that runs
    with fast_attention(model):
        if not km.any():
            z = logits_at(model, sids, smask, spos, pkv).float().cpu()  # (b, P, V)
        else:
            with knockout(model, qm, km, layers, offset=P):
                z = logits_at(model, sids, smask, spos, pkv).float().cpu()
    if isinstance(scored, str):  # mean log-probability of each prompt's answer tokens
        nxt = ids.gather(1, (pos.clamp(min=0) + 1).clamp(max=T - 1))  # (b, P) the tokens predicted
        lp = z.log_softmax(-1).gather(2, nxt[:, :, None])[:, :, 0]
        z = ((lp * pos_ok).sum(1) / pos_ok.sum(1))[:, None]
    else:
        z = z[:, 0] if scored is None else z[:, 0, scored]
    z[starved] = float("nan")
    return z


def _cached_scores(model, prompts, knocked, layers, scored, batch_size, cache, model_id, stats):
    """knockout_scores through the cache's store of rows: only the prompts not seen with their knocked
    statements run (and are added to the store); stats counts the prompts run and asked."""
    from .cache import knockout_row_key, knockout_store_key, prompt_key

    k = knockout_store_key(model_id, None if layers is None else list(layers), scored)
    store = cache.get_rows(k)
    rk = [knockout_row_key(p.get("key") or prompt_key(p), ks) for p, ks in zip(prompts, knocked)]
    miss = [i for i, r in enumerate(rk) if r not in store]
    if miss:
        z = knockout_scores(model, [prompts[i] for i in miss], [knocked[i] for i in miss], layers, scored, batch_size)
        store.update(zip((rk[i] for i in miss), z.numpy()))
        cache.put_rows(k, store, {"what": "knockout", "layers": layers})
    if stats is not None:  # prompts run / prompts asked, summed over the calls
        stats["run"], stats["asked"] = stats.get("run", 0) + len(miss), stats.get("asked", 0) + len(prompts)
    return torch.from_numpy(np.stack([store[r] for r in rk]))


def margins(z, gold):
    """z (N, W) scores, gold (N,) index into W: z_gold - max_{j != gold} z_j."""
    g = z.gather(1, gold[:, None])[:, 0]
    other = z.scatter(1, gold[:, None], float("-inf")).max(1).values
    return g - other


def conditions(useful, predicted, seeds):
    """{name: statement indices per prompt}: nothing, gold useful, probe-predicted useful, and for
    each seed as many not-useful statements as there are useful ones, drawn at random (all the
    not-useful ones when there are fewer)."""
    out = {
        "nothing": [[] for _ in useful],
        "gold useful": [list(np.flatnonzero(u)) for u in useful],
        "probe-predicted useful": [list(np.flatnonzero(p)) for p in predicted],
    }
    for seed in seeds:
        rng = np.random.default_rng(seed)
        draw = []
        for u in useful:
            u = np.asarray(u, bool)
            pool = np.flatnonzero(~u)
            draw.append(sorted(rng.choice(pool, size=min(int(u.sum()), len(pool)), replace=False).tolist()))
        out[f"random not useful (seed {seed})"] = draw
    return out


def layer_windows(n_layers, max_windows=8):
    """Windows layers >= l, for l = 0 (all layers) and evenly spaced starts (at most max_windows)."""
    step = max(1, -(-n_layers // max_windows))
    return [list(range(l, n_layers)) for l in range(0, n_layers, step)]


METRICS = ("accuracy", "changed", "margin_drop")  # scored answers (a gold index among the scored tokens)
LOGPROB_METRICS = ("logprob_drop",)  # free-text answers (scored="answer")


def knockout_study(
    model, prompts, gold, conds, windows, scored=None, batch_size=64, desc=None, subsets=None, cache=None
):
    """Accuracy, answer-change share and margin drop per condition and window (module docstring).

    gold: (N,) index of the gold answer among the scored tokens; with scored="answer" (free-text
    answers: each prompt has "target", the token range of its answer) gold is None and the one
    metric is logprob_drop, the drop of the answer tokens' mean log-probability. subsets: optional
    {name: prompt indices}, each summarised like the whole. Returns {"metrics", "base", "windows":
    [first layer of each window], "n_prompts", "conditions": {name: {"knocked_per_prompt": mean,
    <metric>: [per window]}}, "random not useful": mean and std over the seeds' draws, "subsets":
    {name: the same for its prompts}}. cache: a cache.FeatureCache keeping every pass."""
    from .cache import model_fingerprint

    free = isinstance(scored, str) and scored == "answer"
    metrics = LOGPROB_METRICS if free else METRICS
    mid = None
    if cache is not None and cache.enabled:
        from .cache import prompt_key

        mid = model_fingerprint(model)
        prompts = [{**p, "key": prompt_key(p)} for p in prompts]  # hashed once for every pass
    stats = {}
    z0 = knockout_scores(model, prompts, [[] for _ in prompts], None, scored, batch_size, cache, mid, stats)
    if free:
        m0 = z0[:, 0]
    else:
        gold = torch.as_tensor(gold, dtype=torch.long)
        m0, p0 = margins(z0, gold), z0.argmax(1)
    bar = progress(total=len(conds) * len(windows), desc=desc, unit="pass", disable=desc is None)
    run = lambda knocked, w: knockout_scores(model, prompts, knocked, w, scored, batch_size, cache, mid, stats)  # noqa: E731
    per = _condition_metrics(run, conds, windows, m0, None if free else p0, None if free else gold, bar)
    if stats:
        hit = stats["asked"] - stats["run"]
        log.info("knockout cache: %d of %d prompt passes from the cache, %d run", hit, stats["asked"], stats["run"])

    args = (per, conds, windows, metrics, m0, None if free else p0, None if free else gold, free)
    out = _summary(range(len(prompts)), *args)
    if subsets:
        out["subsets"] = {name: _summary(idx, *args) for name, idx in subsets.items() if len(idx)}
    return out


def _condition_metrics(run, conds, windows, m0, p0, gold, bar):
    """{condition: one (windows, N) array per metric}: each condition's knocked statements blocked in
    each window (run(knocked, window) -> scores (N, W)), against the unablated margins m0 and answers
    p0 (gold None: free-text answers, the log-probability drop). A prompt whose every key the
    condition would block (a NaN row) gets NaN."""
    per = {}
    for name, knocked in conds.items():
        rows = []
        for w in windows:
            z = run(knocked, w)
            skip = z.isnan().any(1)
            nan = torch.full_like(m0, float("nan"))
            if gold is None:
                vals = (m0 - z[:, 0],)
            else:
                p = z.nan_to_num(0.0).argmax(1)
                vals = ((p == gold).float(), (p != p0).float(), m0 - margins(z, gold))
            rows.append(tuple(torch.where(skip, nan, v) for v in vals))
            bar.update(1)
        per[name] = [torch.stack(x).numpy() for x in zip(*rows)]
    bar.close()
    return per


def _summary(idx, per, conds, windows, metrics, m0, p0, gold, free):
    """One summary of knockout_study over the prompts idx (see knockout_study's return value)."""
    idx = np.asarray(idx, dtype=int)
    base = (
        {"answer_logprob": float(m0[idx].mean())}
        if free
        else {"accuracy": float((p0 == gold)[idx].float().mean()), "margin": float(m0[idx].mean())}
    )
    res = {
        "metrics": list(metrics),
        "n_prompts": len(idx),
        "base": base,
        "windows": [w[0] for w in windows],
        "conditions": {},
    }
    for name, arrays in per.items():
        skipped = np.isnan(arrays[0][:, idx]).sum(1)
        res["conditions"][name] = {"knocked_per_prompt": float(np.mean([len(conds[name][i]) for i in idx]))}
        for key, arr in zip(metrics, arrays):
            res["conditions"][name][key] = _mean(arr[:, idx])
        if skipped.any():  # prompts whose every key the condition would block
            res["conditions"][name]["skipped_prompts"] = skipped.tolist()
    rand = [r for n, r in res["conditions"].items() if n.startswith("random not useful")]
    if rand:
        res["random not useful"] = {
            key: {
                "mean": _nan_none(np.nanmean(_arr([r[key] for r in rand]), 0)),
                "std": _nan_none(np.nanstd(_arr([r[key] for r in rand]), 0)),
            }
            for key in metrics
        }
    return res


def _arr(rows):
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)


def _nan_none(a):
    return [None if np.isnan(v) else float(v) for v in a]


def _f(v):
    return "n/a" if v is None else f"{v:.3f}"


def _mean(a):
    """Mean over prompts (axis 1) of the prompts the condition applied to; None where none did."""
    n = (~np.isnan(a)).sum(1)
    tot = np.nansum(a, 1)
    return [float(t / c) if c else None for t, c in zip(tot, n)]


def summary_lines(study):
    """One log line per condition at the all-layers window (and at the others' mean for random)."""
    metrics = study.get("metrics", METRICS)
    base = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in study["base"].items())
    lines = [f"knockout, all layers ({study['n_prompts']} prompts, unablated: {base}):"]
    for name, r in study["conditions"].items():
        if name.startswith("random not useful"):
            continue
        vals = ", ".join(f"{k.replace('_', ' ')} {_f(r[k][0])}" for k in metrics)
        left = f" ({r['skipped_prompts'][0]} prompts left out: every key knocked)" if "skipped_prompts" in r else ""
        lines.append(f"  {name:<24} {r['knocked_per_prompt']:5.1f} statements: {vals}{left}")
    rnd = study.get("random not useful")
    if rnd:
        parts = [f"{key.replace('_', ' ')} {_f(rnd[key]['mean'][0])}±{_f(rnd[key]['std'][0])}" for key in rnd]
        lines.append("  random not useful (seeds)         " + ", ".join(parts))
    return lines
