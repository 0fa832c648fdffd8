"""The probe on in-context statement items (ProofWriter, ARC): shared driver and CLI options.

For each item the queries are the question's tokens and the keys each statement's tokens
(features: see features.py). Accuracy compares the next-token scores of the answer words.
Results are given for all items, per group (number of statements) and per proof depth.
"""

import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import plots
from .cache import DEFAULT_DIR as DEFAULT_CACHE
from .cache import FeatureCache, control_recipe, model_fingerprint
from .cache import key as cache_key
from .incontext import answer_ids, encode_items, run_items
from .models import attention_modules, load_model, load_tokenizer, model_device, random_control
from .probing import ProbeData, run_probe
from .utils import MechprobeError, add_threads_arg, at_least_two, get_logger, nonneg_int

log = get_logger()


def add_model_args(p, limit=0, seeds=(0, 1, 2), n_demos=4):
    """Model and probe options shared by the LLM drivers; `limit`, `seeds`, `n_demos`: the driver's defaults."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        required=True,
        help="local causal LM folder (LLaMA, Mistral, Qwen, GPT-2, ...), or 'tiny' for a tiny random LLaMA (CPU check)",
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (shard over all visible GPUs)")
    g.add_argument("--load-in-8bit", action="store_true", help="8-bit weights via bitsandbytes")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument(
        "--control-layers",
        type=nonneg_int,
        default=0,
        help="build the random-init control with only this many layers and compare only those layers (0: all)",
    )
    g = p.add_argument_group("probe")
    g.add_argument("--n-demos", type=nonneg_int, default=n_demos, help="in-context demonstrations")
    g.add_argument(
        "--limit", type=nonneg_int, default=limit, help="use only the first N items (0: all) - try a few first"
    )
    g.add_argument(
        "--seeds", type=int, nargs="+", default=list(seeds), help="random-init controls, fold splits, demonstrations"
    )
    g.add_argument("--folds", type=at_least_two, default=2)
    g.add_argument(
        "--query-pool",
        default="mean",
        choices=["mean", "max", "last"],
        help="pooling over the question tokens (same for model and control)",
    )
    g.add_argument("--normalize", default="none", choices=["none", "max"])
    g.add_argument("--batch-size", type=nonneg_int, default=0, help="prompts per batch (0: sized to the free memory)")
    add_threads_arg(g)
    g.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help="captured features are kept here, keyed by model, prompts and settings",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="capture again (and do not store) even when the cache holds the features",
    )
    g.add_argument("--out-dir", required=True)
    return p


@dataclass
class ProbeSettings:
    """How the probe runs on in-context items (the library's settings; drivers build one from their
    arguments with from_args).

    seeds: one random-init control, fold split and demonstration draw per seed (distinct).
    folds: cross-validation folds, grouped by item (>= 2).
    query_pool: pooling over the question's tokens, the same for model and control: mean | max | last.
    normalize: none | max (divide each item's statements x layers matrix by its maximum).
    batch_size: prompts per forward (0: sized to the free memory).
    control_layers: build the control with this many layers and compare only those (0: all).
    cache_dir: where captured features are kept (cache.py); "" keeps none.
    """

    seeds: tuple = (0, 1, 2)
    folds: int = 2
    query_pool: str = "mean"
    normalize: str = "none"
    batch_size: int = 0
    control_layers: int = 0
    cache_dir: str = ""

    @classmethod
    def from_args(cls, a):
        st = cls(**{f.name: getattr(a, f.name) for f in fields(cls) if hasattr(a, f.name)})
        st.cache_dir = "" if getattr(a, "no_cache", False) else getattr(a, "cache_dir", "")
        return st


def load(model, texts_for_tiny, out, dtype="float32", device="cpu", load_in_8bit=False, trust_remote_code=False):
    """(tokenizer, model, path): a local model folder, or "tiny" for a tiny random LLaMA with a word
    tokenizer built from `texts_for_tiny` (in `out`, keyed by its vocabulary)."""
    if model == "tiny":
        from .tiny import tiny_llama_dir

        path = tiny_llama_dir(Path(out) / "tiny_llama", texts_for_tiny)
        log.info("using a tiny random LLaMA built in %s (a pipeline check: its scores are near chance)", path)
    else:
        path = model
    m = load_model(path, dtype, device, load_in_8bit, trust_remote_code)
    return load_tokenizer(path), m, str(path)


def load_items_args(a):
    """proofwriter.load_items with the data options of the ProofWriter drivers."""
    from .proofwriter import load_items

    return load_items(
        a.data,
        a.setting,
        a.split,
        a.depth_folder,
        a.depths,
        a.max_per_group,
        a.skip_bad,
        a.groups,
        a.generate,
        a.seeds[0],
        a.naf,
    )


def load_args(a, texts_for_tiny, out):
    """load() with the model options of add_model_args."""
    return load(a.model, texts_for_tiny, out, a.dtype, a.device, a.load_in_8bit, a.trust_remote_code)


def compared_layers(st, model):
    """Layers the model is probed on: all (None), or the first st.control_layers ones."""
    if not st.control_layers:
        return None
    L = len(attention_modules(model))
    if st.control_layers > L:
        raise MechprobeError(f"CONTROL_LAYERS={st.control_layers} exceeds the model's {L} layers")
    return list(range(st.control_layers))


def features(st, model, enc, word_ids, layers=None, desc="model", model_id=None, build=None):
    """(features per prompt, answer-word scores) of `model` on the encoded prompts, from the
    feature cache when st.cache_dir holds them (no forward pass), else captured and stored.
    A control passes model=None, its recipe as model_id and build() to make it on a miss."""
    cache = FeatureCache(st.cache_dir, bool(st.cache_dir))
    settings = {"query_pool": st.query_pool, "normalize": st.normalize, "per_head": False, "layers": layers}
    k = cache_key(model_id or model_fingerprint(model), enc, word_ids, settings)
    hit = cache.get(k, desc)
    if hit is not None:
        return hit
    m = model if model is not None else build()
    feats, scores = run_items(m, enc, word_ids, st.batch_size, st.query_pool, st.normalize, layers=layers, desc=desc)
    cache.put(k, feats, scores, {"what": desc, **settings, "n_prompts": len(enc)})
    return feats, scores


def control_features(st, model, enc, word_ids):
    """Features of the prompts under one random-init control per seed (same architecture,
    first st.control_layers layers only when set); a control is built only when the cache misses."""
    feats = []
    for s in st.seeds:
        n = st.control_layers or None
        recipe = "control:" + control_recipe(model, s, n)
        build = lambda s=s, n=n: random_control(model, seed=s, num_layers=n)  # noqa: E731
        feats.append(features(st, None, enc, word_ids, desc=f"control seed {s}", model_id=recipe, build=build)[0])
    return feats


def probe_device(model):
    """Where the kNN runs: the model's GPU when it has one, else the CPU."""
    dev = model_device(model)
    return str(dev) if dev.type == "cuda" else "cpu"


def _probe_subset(feats, ctl_feats, items, idx, seeds, folds, device="cpu"):
    data = ProbeData([feats[i] for i in idx], [items[i]["useful"] for i in idx], [items[i]["step"] for i in idx])
    ctls = [
        ProbeData([cf[i] for i in idx], [items[i]["useful"] for i in idx], [items[i]["step"] for i in idx])
        for cf in ctl_feats
    ]
    return run_probe(data, ctls, seeds, folds, device=device)


def probe_items(st, tok, model, items, demos, builder, words, source, by=("group", "depth")):
    """Accuracy and probing results (settings `st`, a ProbeSettings) over all items, per depth and
    per (group, depth); by=("depth",) for per-depth subsets only."""
    t0 = time.time()
    wid = answer_ids(tok, words)
    enc = encode_items(tok, items, demos, builder, source)
    layers = compared_layers(st, model)
    log.info("%d prompts, %d-%d tokens", len(enc), min(len(e["ids"]) for e in enc), max(len(e["ids"]) for e in enc))
    feats, scores = features(st, model, enc, wid, layers=layers, desc="model")
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
    ctl_feats = control_features(st, model, enc, wid) if has_tree else []
    groups = {"all": list(range(len(items)))}
    if len(by) == 2:  # (group, depth): groups are never pooled over depths
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
    res["subsets"] = {}
    for name, idx in groups.items():
        sub = {"n_items": len(idx), "accuracy": acc(idx)}
        if has_tree and len(idx) >= 4:
            sub.update(_probe_subset(feats, ctl_feats, items, idx, st.seeds, st.folds, probe_device(model)))
        elif has_tree:
            sub["probe"] = {"undefined": f"only {len(idx)} items"}
        res["subsets"][name] = sub
    res["seconds"] = round(time.time() - t0, 1)
    return res, feats, scores


def fmt(s):
    if not isinstance(s, dict):
        return "-"
    return f"{s['mean']:.3f}±{s['std']:.3f}" if "mean" in s else "undef."


def report(res, out, title, key="group"):
    """Log a table, write plots of accuracy and S_P1/S_P2 by depth and by `key` for each depth."""
    for name, sub in res["subsets"].items():
        acc = "-" if sub["accuracy"] is None else f"{sub['accuracy']:.3f}"
        log.info(
            "%-22s n=%-5d acc=%s  S_P1=%s  S_P2=%s",
            name,
            sub["n_items"],
            acc,
            fmt(sub.get("s_p1")),
            fmt(sub.get("s_p2")),
        )
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
    per = {}  # depth -> [(group, subset)]
    for n, s in res["subsets"].items():
        if n.startswith(key + "=") and ",depth=" in n:
            g, d = n[len(key) + 1 :].split(",depth=")
            per.setdefault(int(d), []).append((int(g), s))
    if per:
        plots.by_group_per_depth(
            per, Path(out) / f"probe_by_{key}.png", Path(out) / f"accuracy_by_{key}.png", key, title
        )
    if "s_p1" in res["subsets"]["all"]:
        plots.probe_curves(
            [{**res["subsets"]["all"], "label": "all"}],
            Path(out) / "probe_by_layer.png",
            label_key="label",
            label_fmt="{}",
        )
