"""The probe on in-context statement items (ProofWriter, ARC): the study the LLM drivers run (their
command-line options: llmcli.py).

For each item the queries are the question's tokens and the keys each statement's tokens
(features: see features.py). Accuracy compares the next-token scores of the answer words.
Results are given for all items, per group (number of statements) and per proof depth.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import plots
from .cache import (
    FeatureCache,
    control_recipe,
    knockout_row_key,
    masking_store_key,
    model_fingerprint,
    prompt_key,
    prompts_entry_key,
)
from .cache import key as cache_key
from .features import statement_entropy, token_spans
from .incontext import answer_ids, encode_items, run_items
from .models import (
    DTYPES,
    ModelFolder,
    TokenizerFolder,
    check_device,
    locate,
    model_device,
    num_layers,
    random_control,
    resolve,
    resolve_tokenizer,
)
from .probing import ProbeData, head_map, predicted_useful, run_probe, selectivity
from .utils import MechprobeError, get_logger

log = get_logger()


@dataclass
class ProbeSettings:
    """How the probe runs on in-context items (the library's settings; the drivers build one from their
    arguments: llmcli.probe_settings).

    seeds: one random-init control, fold split and demonstration draw per seed (distinct).
    folds: cross-validation folds, grouped by item (>= 2).
    query_pool: pooling over the question's tokens, the same for model and control: mean | max | last.
    normalize: none | max (divide each item's statements x layers matrix by its maximum).
    batch_size: prompts per forward (0: sized to the free memory).
    control_layers: build the control with this many layers and compare only those (0: all).
    cache_dir: where captured features are kept (cache.py); "" keeps none.
    head_map: 1 = capture per-head features and add the per-head map (S_P1 / S_P2 of each head).
    knockout_folds: folds of the out-of-fold P1 predictions whose statements the knockout blocks (its
        own setting, not `folds`: a rerun that changes only the probe's folds reuses every knockout pass).
    null_draws: bootstrap draws over items for each S's interval, null and p-value (null.py; 0: none).
    """

    seeds: tuple = (0, 1, 2)
    folds: int = 2
    query_pool: str = "mean"
    normalize: str = "none"
    batch_size: int = 0
    control_layers: int = 0
    cache_dir: str = ""
    head_map: int = 1
    knockout_folds: int = 2
    null_draws: int = 50


def load(model, texts_for_tiny, out, dtype="float32", device="cpu", load_in_8bit=False, trust_remote_code=False):
    """(tokenizer, model, path) of a local model folder, a .gguf file, a packaged model's short name
    ("smollm2"; models.locate), "reasoner" (the trained ProofWriter reasoner), or "tiny" for a tiny
    random LLaMA with a word tokenizer built from `texts_for_tiny` (in `out`, keyed by its vocabulary).
    The tokenizer and the model are a TokenizerFolder and a ModelFolder, loaded on first use
    (models.resolve): a run that the feature cache serves whole loads neither."""
    if model == "tiny":
        from .tiny import tiny_llama_dir

        path = tiny_llama_dir(Path(out) / "tiny_llama", texts_for_tiny)
        log.info("using a tiny random LLaMA built in %s (a pipeline check: its scores are near chance)", path)
    else:
        path = locate(model)
    if device != "auto":
        check_device(device)
    return TokenizerFolder(path), ModelFolder(path, dtype, device, load_in_8bit, trust_remote_code), str(path)


def model_info(model):
    """{"model_dtype", "model_device", "model_fingerprint"} for config.json, without loading a ModelFolder
    (its fingerprint: a .gguf file's sha256, or a folder's config and sampled weight bytes)."""
    if isinstance(model, ModelFolder):
        fp = {"model_path": model.path, "model_fingerprint": model.fingerprint()}
        if not model.loaded:  # the dtype asked for (8-bit: see load_in_8bit)
            return {"model_dtype": str(DTYPES[model.dtype]), "model_device": str(model.device()), **fp}
    else:
        fp = {"model_fingerprint": model_fingerprint(model)}
    p = next(resolve(model).parameters())
    return {"model_dtype": str(p.dtype), "model_device": str(p.device), **fp}


def encode(st, tok, items, demos, builder, words, source):
    """(encoded prompts (incontext.encode_items), answer-word ids): from the feature cache when it
    holds them for this tokenizer's files, items, demonstrations, template and answer words (then the
    tokenizer is not even loaded), else encoded and stored."""
    cache = FeatureCache(st.cache_dir, bool(st.cache_dir) and isinstance(tok, TokenizerFolder))
    k = None
    if cache.enabled:
        k = prompts_entry_key(tok.fingerprint(), items, demos, builder, words, source)
        hit = cache.get_prompts(k, f"{len(items)} encoded prompts")
        if hit is not None:
            return hit
    t = resolve_tokenizer(tok)
    wid = answer_ids(t, words, builder.answer_lead) if words else []
    enc = encode_items(t, items, demos, builder, source)
    if k is not None:
        cache.put_prompts(k, enc, wid, {"what": "encoded prompts", "n_prompts": len(enc)})
    return enc, wid


def compared_layers(st, model):
    """Layers the model is probed on: all (None), or the first st.control_layers ones."""
    if not st.control_layers:
        return None
    L = num_layers(model)
    if st.control_layers > L:
        raise MechprobeError(f"control_layers={st.control_layers} exceeds the model's {L} layers")
    return list(range(st.control_layers))


def features(st, model, enc, word_ids, layers=None, desc="model", model_id=None, build=None, heads=False):
    """(features per prompt (S, L, 1), answer-word scores) of `model` on the encoded prompts, from the
    feature cache when st.cache_dir holds them (no forward pass), else captured and stored.
    A control passes model=None, its recipe as model_id and build() to make it on a miss.

    With st.head_map the capture is per head, (S, L, H) unnormalised, and the probe's features are
    its head average (head_average: equal to capturing the average); heads=True then also returns
    the per-head features (normalised per prompt as asked) as a third value (None without head_map)."""
    cache = FeatureCache(st.cache_dir, bool(st.cache_dir))
    per_head = bool(st.head_map)
    norm = "none" if per_head else st.normalize
    settings = {"query_pool": st.query_pool, "normalize": norm, "per_head": per_head, "layers": layers}
    k = cache_key(model_id or model_fingerprint(model), enc, word_ids, settings)
    hit = cache.get(k, desc)
    if hit is not None:
        feats, scores = hit
    else:
        if model is not None:
            check_context(model, enc)  # before any forward pass
        m = resolve(model) if model is not None else build()
        feats, scores = run_items(m, enc, word_ids, st.batch_size, st.query_pool, norm, per_head, layers, desc)
        cache.put(k, feats, scores, {"what": desc, **settings, "n_prompts": len(enc)})
    avg = head_average(feats, st.normalize) if per_head else feats
    if not heads:
        return avg, scores
    return avg, scores, ([_normalise(f, st.normalize) for f in feats] if per_head else None)


def check_context(model, enc):
    """A clear error before any forward pass when the longest prompt exceeds the model's context."""
    from .models import check_positions

    longest = max(range(len(enc)), key=lambda i: len(enc[i]["ids"]))
    check_positions(
        model, len(enc[longest]["ids"]), f"prompt {longest}", "use fewer demonstrations (n_demos=), fewer statements"
    )


def _normalise(f, normalize):
    return f / f.max() if normalize == "max" and f.max() > 0 else f


def head_average(feats, normalize="none"):
    """Per-head features [(S, L, H)] -> the probe's head-averaged ones [(S, L, 1)], normalised as asked."""
    return [_normalise(f.mean(-1, keepdims=True), normalize) for f in feats]


def control_features(st, model, enc, word_ids, heads=False):
    """Features of the prompts under one random-init control per seed (same architecture,
    first st.control_layers layers only when set); a control is built only when the cache misses.
    heads=True: a list of (features, per-head features) instead (see features)."""
    feats = []
    for s in st.seeds:
        n = st.control_layers or None
        recipe = "control:" + control_recipe(model, s, n)
        build = lambda s=s, n=n: random_control(resolve(model), seed=s, num_layers=n)  # noqa: E731
        f = features(st, None, enc, word_ids, desc=f"control seed {s}", model_id=recipe, build=build, heads=heads)
        feats.append((f[0], f[2]) if heads else f[0])
    return feats


def probe_device(model):
    """Where the kNN runs: the model's GPU when it has one, else the CPU."""
    dev = model.device() if isinstance(model, ModelFolder) else model_device(model)
    return str(dev) if dev.type == "cuda" else "cpu"


def _probe_subset(st, feats, ctl_feats, items, idx, model, name):
    """run_probe on the items `idx` (the subset `name`): P1 over all of them, P2 over those of depth
    >= 1 (or without a depth): P2 is never pooled with depth-0 items."""
    if len(idx) < 4:
        return {"probe": {"undefined": f"only {len(idx)} items"}}
    lab = ([items[i]["useful"] for i in idx], [items[i]["step"] for i in idx])
    deep = [items[i].get("depth") is None or items[i]["depth"] >= 1 for i in idx]
    data = ProbeData([feats[i] for i in idx], *lab, p2_examples=deep)
    ctls = [ProbeData([cf[i] for i in idx], *lab, p2_examples=deep) for cf in ctl_feats]
    return run_probe(data, ctls, st.seeds, st.folds, device=probe_device(model), null_draws=st.null_draws, name=name)


def probe_items(st, tok, model, items, demos, builder, words, source, by=("group", "depth"), statement_type=None):
    """Accuracy and probing results (settings `st`, a ProbeSettings) over all items, per depth and
    per (group, depth); by=("depth",) for per-depth subsets only. With st.head_map, the per-head map
    (probing.head_map) and, given statement_type (statement text -> its surface type), the control-task
    selectivity (probing.selectivity), both on the items of depth >= 1 (where P2 is defined).
    Returns (results, the model's features per item, its answer-word scores)."""
    t0 = time.time()
    enc, wid = encode(st, tok, items, demos, builder, words, source)
    log.info("%d prompts, %d-%d tokens", len(enc), min(len(e["ids"]) for e in enc), max(len(e["ids"]) for e in enc))
    layers = compared_layers(st, model)
    feats, scores, head_feats = features(st, model, enc, wid, layers=layers, desc="model", heads=True)
    gold = np.array([words.index(it["answer"]) if it["answer"] in words else -1 for it in items])
    correct = (scores.argmax(1) == gold) if words else None

    def acc(idx):
        ok = [i for i in idx if gold[i] >= 0]
        return float(correct[ok].mean()) if words and ok else None

    res = {
        "n_items": len(items),
        "answer_words": words,
        "answer_token_ids": wid,
        "accuracy": acc(range(len(items))),
        "prompt_tokens": {"min": min(len(e["ids"]) for e in enc), "max": max(len(e["ids"]) for e in enc)},
    }
    has_tree = all(it.get("useful") is not None for it in items)
    if not has_tree:
        res["probe"] = {
            "undefined": f"{source} has no proof trees: the probe needs the useful statements and their steps (use "
            "the original ProofWriter release or generated data)"
        }
        log.info(res["probe"]["undefined"])
    ctl = control_features(st, model, enc, wid, heads=True) if has_tree else []
    res["warnings"] = same_as_control(feats, [c[0] for c in ctl], st.seeds)
    subsets = item_subsets(items, by)
    if words:  # does the probe read the tree better where the model answers right?
        subsets["answered right"] = [i for i in range(len(items)) if gold[i] >= 0 and correct[i]]
        subsets["answered wrong"] = [i for i in range(len(items)) if gold[i] >= 0 and not correct[i]]
    res["subsets"] = {}
    for name, idx in subsets.items():
        res["subsets"][name] = {"n_items": len(idx), "accuracy": acc(idx)}
        if has_tree:
            res["subsets"][name].update(_probe_subset(st, feats, [c[0] for c in ctl], items, idx, model, name))
    if has_tree:
        res.update(_deep_analyses(st, items, feats, head_feats, ctl, statement_type, probe_device(model)))
    res["seconds"] = round(time.time() - t0, 1)
    return res, feats, scores


def same_as_control(feats, ctl_feats, seeds):
    """Warnings (also logged) for a control whose features equal the model's on every item: the model
    is that random initialisation (e.g. built after torch.manual_seed(seed)), and its S is 0 by
    construction, not a finding."""
    out = []
    for s, cf in zip(seeds, ctl_feats):
        if all(np.array_equal(a, b) for a, b in zip(feats, cf)):
            out.append(
                f"the model's features equal those of the random-init control of seed {s}: the model is that "
                "random initialisation, so its S against it is 0 by construction"
            )
            log.warning("warning: %s", out[-1])
    return out


def item_subsets(items, by=("group", "depth")):
    """{name: item indices}: "all", then per value of by[1] ("depth=1") and per (by[0], by[1]) pair
    ("group=4,depth=1"; groups are never pooled over depths); with one key, per value of it."""
    groups = {"all": list(range(len(items)))}
    if len(by) == 2:
        known = [it for it in items if it.get(by[1]) is not None]
        for d in sorted({it[by[1]] for it in known}):
            groups[f"{by[1]}={d}"] = [i for i, it in enumerate(items) if it.get(by[1]) == d]
        for g in sorted({it[by[0]] for it in known}):
            for d in sorted({it[by[1]] for it in known if it[by[0]] == g}):
                groups[f"{by[0]}={g},{by[1]}={d}"] = [
                    i for i, it in enumerate(items) if it[by[0]] == g and it[by[1]] == d
                ]
    else:
        for v in sorted({it[by[0]] for it in items if it.get(by[0]) is not None}):
            groups[f"{by[0]}={v}"] = [i for i, it in enumerate(items) if it.get(by[0]) == v]
    return groups


def _deep_analyses(st, items, feats, head_feats, ctl, statement_type, dev):
    """The per-head map (with each head's attention entropy) and the control-task selectivity, on the
    items of depth >= 1 (all items when none has a depth): {"head_map": ..., "selectivity_p1": ...}."""
    out = {}
    deep = [i for i, it in enumerate(items) if (it.get("depth") or 0) >= 1] or list(range(len(items)))
    if len(deep) < 4:
        return out
    lab = ([items[i]["useful"] for i in deep], [items[i]["step"] for i in deep])
    if head_feats is not None:
        hm = head_map(
            ProbeData([head_feats[i] for i in deep], *lab),
            [ProbeData([c[1][i] for i in deep], *lab) for c in ctl],
            st.seeds,
            st.folds,
            dev,
        )
        ent = statement_entropy([head_feats[i] for i in deep])  # (L, H), beside the map
        out["head_map"] = {**hm, "items": len(deep), "entropy": None if ent is None else ent.tolist()}
    if statement_type is not None:
        types = [statement_type(s) for i in deep for s in items[i]["statements"]]
        sel = selectivity(ProbeData([feats[i] for i in deep], *lab), types, st.seeds, st.folds, dev)
        out.update(sel)
        log.info(
            "selectivity (F1 real - F1 control task, depth >= 1): P1 %s, P2 %s",
            fmt(sel["selectivity_p1"]),
            fmt(sel["selectivity_p2"]),
        )
    return out


def knockout_items(st, tok, model, items, demos, builder, words, source, feats, n_items=1024):
    """Knockout study (knockout.py) on at most n_items items with a tree (a seeded sample): the
    question and answer positions (question tokens to the prompt's end) are blocked from the gold
    useful statements, from those the P1 probe predicts useful (out-of-fold on st.knockout_folds
    folds of the first seed, all layers), from as many not-useful statements drawn per seed, or
    from every statement (does the answer depend on the theory at all?); in layers >= l. Summarised over all of them and
    per depth. With answer words (ProofWriter): accuracy, changed answers, margin drop; without
    (ARC: the answer is text at the prompt's end), the drop of its tokens' mean log-probability."""
    from . import knockout as ko

    free = not words
    keep = [
        i
        for i, it in enumerate(items)
        if (free or it["answer"] in words)
        and it.get("useful") is not None
        and any(it["useful"])
        and not all(it["useful"])
    ]
    if len(keep) < st.knockout_folds:
        return {
            "undefined": f"{len(keep)} item(s) with both useful and not-useful statements"
            + ("" if free else " and a gold answer word")
            + f": the probe's out-of-fold predictions need at least {st.knockout_folds}"
        }
    data = ProbeData([feats[i] for i in keep], [items[i]["useful"] for i in keep], [items[i]["step"] for i in keep])
    pred = predicted_useful(data, st.knockout_folds, st.seeds[0], probe_device(model))
    if len(keep) > n_items:
        pick = np.sort(np.random.default_rng(st.seeds[0]).choice(len(keep), n_items, replace=False))
        keep, pred = [keep[j] for j in pick], [pred[j] for j in pick]
    sel = [items[i] for i in keep]
    enc, wid = encode(st, tok, sel, [demos[i] for i in keep], builder, words, source)
    prompts = _knockout_prompts(enc, sel, source, free)
    conds = ko.conditions([it["useful"] for it in sel], pred, st.seeds)
    conds["all statements"] = [list(range(len(it["statements"]))) for it in sel]  # does it read the theory at all?
    depths = sorted({it["depth"] for it in sel if it.get("depth") is not None})
    subsets = {f"depth={d}": [j for j, it in enumerate(sel) if it.get("depth") == d] for d in depths}
    return ko.knockout_study(
        model,
        prompts,
        None if free else [words.index(it["answer"]) for it in sel],
        conds,
        ko.layer_windows(num_layers(model) if st.control_layers else feats[0].shape[1]),  # no config read
        scored="answer" if free else wid,
        batch_size=st.batch_size,
        desc="knockout",
        subsets=subsets,
        cache=FeatureCache(st.cache_dir, bool(st.cache_dir)),
    )


def masking_items(st, tok, model, items, demos, builder, words, source, entropy, n_items=128, shares=(0.02, 0.05, 0.1)):
    """Head masking (masking.py): accuracy on a seeded sample of at most n_items questions with a
    growing share of the model's heads masked, at random (one draw per seed) and by each head's
    entropy of the question's attention over the statements (`entropy` (L, H), the head map's),
    lowest and highest first (masking.pruning_curves). Returns its result with "base" (nothing
    masked) and "n_items"."""
    import torch

    from .knockout import knockout_scores
    from .masking import mask_heads, pruning_curves

    keep = [i for i, it in enumerate(items) if it["answer"] in words]
    if len(keep) > n_items:
        keep = sorted(np.random.default_rng(st.seeds[0]).choice(keep, n_items, replace=False).tolist())
    sel = [items[i] for i in keep]
    enc, wid = encode(st, tok, sel, [demos[i] for i in keep], builder, words, source)
    prompts = [{"ids": e["ids"], "spans": e["spans"], "queries": e["query"]} for e in enc]
    gold = torch.tensor([words.index(it["answer"]) for it in sel])
    cache = FeatureCache(st.cache_dir, bool(st.cache_dir))
    base_id, rk = model_fingerprint(model), [knockout_row_key(prompt_key(p), []) for p in prompts]

    def accuracy(heads):
        """Accuracy with `heads` masked; each prompt's scores kept in the cache per head set."""
        k = masking_store_key(base_id, heads, wid)
        store = cache.get_rows(k) if cache.enabled else {}
        if not all(r in store for r in rk):
            m = resolve(model)
            with mask_heads(m, heads):
                z = knockout_scores(m, prompts, [[] for _ in prompts], None, scored=wid, batch_size=st.batch_size)
            store = {**store, **dict(zip(rk, z.numpy()))}
            cache.put_rows(k, store, {"what": "masking", "n_heads": len(heads)})
        z = torch.from_numpy(np.stack([store[r] for r in rk]))
        return float((z.argmax(1) == gold).float().mean())

    res = pruning_curves(accuracy, {"statement": np.asarray(entropy)}, shares, st.seeds)
    res.update(
        {"base": accuracy([]), "n_items": len(sel), "entropy": "of the question's attention over the statements"}
    )
    return res


def _knockout_prompts(enc, items, source, free):
    """The knockout's prompts: token ids, statement spans, the blocked queries (question tokens to the
    prompt's end) and, for free-text answers (ARC: the answer ends the prompt), its token range."""
    prompts = [{"ids": e["ids"], "spans": e["spans"], "queries": range(e["query"][0], len(e["ids"]))} for e in enc]
    if free:
        for p, e, it in zip(prompts, enc, items):
            a = e["text"].rindex(it["answer"])
            where = f"{source}: {it['id']} (answer)"
            ((t0, t1),) = token_spans(e["offsets"], [(a, a + len(it["answer"]))], e["text"], where)
            p["target"] = (max(t0, 1), t1)
    return prompts


def view_items(st, tok, model, items, demos, builder, words, source, feats, n=4):
    """HTML-view examples (htmlview.example) of the first n items: the prompt's tokens coloured by the
    question's attention (pooled over the question tokens as the probe pools them), the gold tree and
    the probe's out-of-fold tree (probing.oof_tree over all items with a tree)."""
    from . import htmlview
    from .probing import oof_tree

    n = min(n, len(items))
    if n == 0:
        return []
    has_tree = [i for i, it in enumerate(items) if it.get("useful") is not None and any(it["useful"])]
    trees = {}
    if len(has_tree) >= 4:
        data = ProbeData(
            [feats[i] for i in has_tree], *zip(*[(items[i]["useful"], items[i]["step"]) for i in has_tree])
        )
        trees = dict(zip(has_tree, oof_tree(data, st.folds, st.seeds[0], probe_device(model))))
    enc, wid = encode(st, tok, items[:n], demos[:n], builder, words, source)
    atts, last = view_attention(st, model, enc, wid)
    out = []
    for j, (it, e) in enumerate(zip(items[:n], enc)):
        pred = trees.get(j)
        stmts = [
            {
                "span": sp,
                "useful": bool(it["useful"][k]) if it.get("useful") is not None else False,
                "step": int(it["step"][k]) if it.get("step") is not None else -1,
                "pred_step": None if pred is None else int(pred[k]),
            }
            for k, sp in enumerate(e["spans"])
        ]
        guess = words[int(last[j].argmax())] if wid else None
        out.append(
            htmlview.example(
                f"{it['id']} (depth {it.get('depth')})",
                htmlview.token_texts(e["text"], e["offsets"]),
                atts[j],
                stmts,
                it.get("answer"),
                guess,
                queries=e["query"],
            )
        )
    return out


def view_attention(st, model, enc, wid):
    """Per prompt the question's attention over its tokens, pooled over the question tokens as the probe
    pools them, (L, H, T) arrays, and the answer-word scores (n, W): from the feature cache when it
    holds them, else captured (one forward) and stored."""
    from .capture import capture, pad_batch, pad_queries
    from .features import pool_queries

    cache = FeatureCache(st.cache_dir, bool(st.cache_dir))
    k = cache_key(model_fingerprint(model), enc, wid, {"view": st.query_pool})
    hit = cache.get(k, "the view's attention")
    if hit is not None:  # stored as (T, L, H) per prompt: concatenated over the tokens
        return [f.transpose(1, 2, 0) for f in hit[0]], hit[1]
    m = resolve(model)
    ids, mask = pad_batch([e["ids"] for e in enc], 0)
    rows, last = capture(m, ids, mask, pad_queries([e["query"] for e in enc]), return_logits=True)
    atts = [
        pool_queries(rows[j][:, :, :, : len(e["ids"])], st.query_pool, len(e["query"])).float().numpy()
        for j, e in enumerate(enc)
    ]  # (L, H, T)
    scores = last[:, wid].numpy() if wid else np.zeros((len(enc), 1), np.float32)
    cache.put(k, [a.transpose(2, 0, 1) for a in atts], scores, {"what": "view", "query_pool": st.query_pool})
    return atts, scores


def report_knockout(study, out, title):
    """Log the knockout summary (all items and each depth) and plot knockout.png: a row of panels for
    all items, then one per depth."""
    from .knockout import summary_lines

    if "undefined" in study:
        log.info("knockout: undefined (%s)", study["undefined"])
        return
    for line in summary_lines(study):
        log.info(line)
    for name, sub in study.get("subsets", {}).items():
        for line in summary_lines(sub):
            log.info("%s %s", name, line)
    rows = [("all items", study)] + list(study.get("subsets", {}).items())
    plots.knockout_figure(rows, Path(out) / "knockout.png", title)


def fmt(s, null=None):
    """mean±std over seeds, and with a null (null.bootstrap) its 95% interval over items and p-value."""
    if not isinstance(s, dict):
        return "-"
    if "mean" not in s:
        return "undef."
    out = f"{s['mean']:.3f}±{s['std']:.3f}"
    if null and "interval95" in null:
        out += f" [{null['interval95'][0]:.2f}, {null['interval95'][1]:.2f}] p={null['p_value']:.3f}"
    return out


def _plot_by_depth(res, out, title):
    """probe_by_depth.png and accuracy_by_depth.png from the per-depth subsets ("depth=d")."""
    subs = [(n.split("=", 1)[1], s) for n, s in res["subsets"].items() if n.startswith("depth=") and "," not in n]
    if subs and "s_p1" in subs[0][1]:
        plots.probe_by_k(
            [{**s, "label": v} for v, s in subs], Path(out) / "probe_by_depth.png", label_key="label", xlabel="depth"
        )
    if subs and subs[0][1]["accuracy"] is not None:
        plots.accuracy_bars(
            [v for v, _ in subs],
            [s["accuracy"] for _, s in subs],
            [s["n_items"] for _, s in subs],
            Path(out) / "accuracy_by_depth.png",
            xlabel="depth",
            title=title,
        )


def report(res, out, title, key="group"):
    """Log a table, write plots of accuracy and S_P1/S_P2 by depth and by `key` for each depth."""
    for name, sub in res["subsets"].items():
        acc = "-" if sub["accuracy"] is None else f"{sub['accuracy']:.3f}"
        null = sub.get("null", {})
        log.info(
            "%-22s n=%-5d acc=%s  S_P1=%s  S_P2=%s",
            name,
            sub["n_items"],
            acc,
            fmt(sub.get("s_p1"), null.get("s_p1")),
            fmt(sub.get("s_p2"), null.get("s_p2")),
        )
    log.info("(S_P2 of a subset that mixes depths is over its items of depth >= 1 only)")
    _plot_by_depth(res, out, f"{title}: in-context accuracy")
    per = {}  # depth -> [(group, subset)]
    for n, s in res["subsets"].items():
        if n.startswith(key + "=") and ",depth=" in n:
            g, d = n[len(key) + 1 :].split(",depth=")
            per.setdefault(int(d), []).append((int(g), s))
    if per:
        plots.by_group_per_depth(
            per, Path(out) / f"probe_by_{key}.png", Path(out) / f"accuracy_by_{key}.png", key, f"{title}: accuracy"
        )
    if "selectivity_p1" in res:
        plots.selectivity_figure(res, Path(out) / "selectivity.png", f"{title}: control-task selectivity (depth >= 1)")
    if "head_map" in res:
        hm = res["head_map"]
        for key in ("top_p1", "top_p2"):
            log.info("top heads by %s: %s", key[4:].upper(), ", ".join(f"L{l}H{h} {v:.3f}" for l, h, v in hm[key]))
        plots.head_map_figure(
            hm, Path(out) / "probe_by_head.png", f"{title}: per-head S vs the same head of the controls (depth >= 1)"
        )
    if "s_p1" in res["subsets"]["all"]:
        plots.probe_curves(
            [{**res["subsets"]["all"], "label": "all items (S_P2: depth >= 1)"}],
            Path(out) / "probe_by_layer.png",
            label_key="label",
            label_fmt="{}",
        )
