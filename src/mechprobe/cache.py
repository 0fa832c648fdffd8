"""Captured features on disk, so that a rerun that changes only the probe does no forward pass.

An entry holds, for a list of prompts, every prompt's statement features (S_i, L, H') and its
answer-word scores. Its key hashes everything the numbers depend on:
  * the model: its config and a fingerprint of its weights (shape, dtype and 64 strided values
    of every tensor), or, for a random-init control that need not be built, the recipe that
    builds it (the model's config, the seed, the number of layers, the dtype, torch's version);
  * the prompts as encoded: every prompt's token ids, statement spans and query positions
    (so the tokenizer, the data, the demonstrations and the prompt template are all in it);
  * the answer-word ids, the query pooling, the normalisation, per-head or not, the layers.
Entries are safetensors files `<key>.safetensors` in the cache folder (default
runs/feature_cache), written atomically; their metadata repeats the key's parts.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .runs import atomic_path
from .utils import get_logger

log = get_logger()
DEFAULT_DIR = "runs/feature_cache"


def _version(pkg):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def _h(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _config(model):
    """The config without where it was loaded from (a copy of a model elsewhere is the same model)."""
    from .models import portable_config

    return portable_config(model.config.to_dict())


@torch.no_grad()
def model_fingerprint(model):
    """The config and a cheap fingerprint of the weights (64 strided values of each tensor); for a
    models.ModelFolder not loaded yet, its files' fingerprint (config.json, sampled weight bytes)."""
    from .models import ModelFolder

    if isinstance(model, ModelFolder):
        return model.fingerprint()
    h = hashlib.sha256(json.dumps(_config(model), sort_keys=True, default=str).encode())
    for name, p in model.state_dict().items():
        flat = p.reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, min(64, flat.numel())).long().to(flat.device)
        vals = flat[idx].float().cpu().numpy() if p.dtype.is_floating_point else flat[idx].cpu().numpy()
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(np.ascontiguousarray(vals).tobytes())
    return h.hexdigest()


def control_recipe(model, seed, num_layers):
    """What builds a random-init control (models.random_control), without building it (nor loading a
    models.ModelFolder: its config.json and dtype stand for the loaded config)."""
    from .models import DTYPES, ModelFolder

    if isinstance(model, ModelFolder):
        # a GGUF file fixes its config: its hash stands for it (reading the config imports transformers)
        config = {"gguf": model.fingerprint()} if model.gguf else model.config()
        dtype = torch.float16 if model.load_in_8bit else DTYPES[model.dtype]
    else:
        config, dtype = _config(model), next(model.parameters()).dtype
    return _h(
        {
            "config": config,
            "seed": seed,
            "num_layers": num_layers,
            "dtype": str(dtype),
            "torch": torch.__version__,
            "transformers": _version("transformers"),  # its initialisation code draws the weights
        }
    )


def prompts_hash(enc):
    return _h([[e["ids"], e["spans"], e["query"]] for e in enc])


def key(model_id, enc, word_ids, settings):
    return _h({"model": model_id, "prompts": prompts_hash(enc), "words": list(word_ids), "settings": settings})[:32]


def prompts_entry_key(tokenizer_id, items, demos, builder, words, source):
    """Key of the encoded prompts (FeatureCache.put_prompts) of `items` with their demonstrations under
    the tokenizer `tokenizer_id` (its files' fingerprint), the template `builder` and the answer words."""

    def text(it):
        return [it["statements"], it["question"], it.get("answer")]

    obj = {
        "tokenizer": tokenizer_id,
        "items": [text(it) for it in items],
        "demos": [[text(d) for d in ds] for ds in demos],
        "builder": vars(builder),
        "words": list(words),
        "source": source,
    }
    return "enc-" + _h(obj)[:28]


def knockout_store_key(model_id, layers, scored):
    """Key of the store of knockout passes (knockout.knockout_scores) of one model, layer set and
    scored token ids; its rows are keyed by knockout_row_key."""
    sc = scored if scored is None or isinstance(scored, str) else [int(i) for i in scored]
    return "ko-" + _h({"model": model_id, "layers": layers, "scored": sc})[:29]


def masking_store_key(model_id, heads, scored):
    """Key of the store of one masked-heads configuration's passes (llmprobe.masking_items)."""
    return "mask-" + _h({"model": model_id, "heads": sorted(map(list, heads)), "scored": [int(i) for i in scored]})[:27]


def prompt_key(p):
    """Digest of a knockout prompt: token ids, statement spans, query positions, answer target."""
    return _h([list(p["ids"]), [list(s) for s in p["spans"]], list(p["queries"]), p.get("target")])


def knockout_row_key(pkey, knocked):
    """16-byte key of one prompt (its prompt_key) with the statements knocked in it."""
    return hashlib.sha256(f"{pkey}:{sorted(int(i) for i in knocked)}".encode()).digest()[:16]


class FeatureCache:
    """get(key) -> (feats, scores) or None; put(key, feats, scores, meta). Disabled: always a miss.
    get_rows / put_rows: a store of rows by 16-byte key (the knockout passes, one row per prompt and
    knocked set, so a rerun recomputes only the prompts whose knocked statements changed)."""

    def __init__(self, folder=DEFAULT_DIR, enabled=True):
        self.folder = Path(folder)
        self.enabled = enabled
        self._stores = {}  # stores of rows read or written by this instance (a study reads each many times)

    def path(self, k):
        return self.folder / f"{k}.safetensors"

    def _load(self, k, what=None):
        """The tensors of entry k, or None when the cache is off, the entry absent (a miss, logged when
        `what` is given) or unreadable (logged: it is recomputed)."""
        if not self.enabled:
            return None
        p = self.path(k)
        if not p.exists():
            if what is not None:
                log.info("feature cache: miss for %s (%s)", what, k[:12])
            return None
        from safetensors.numpy import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - a damaged entry is recomputed
            log.info("feature cache: unreadable entry %s (%s): recomputing", p, type(e).__name__)
            return None

    def get(self, k, what="features"):
        t = self._load(k, what)
        if t is None:
            return None
        off = t["offsets"]
        feats = [t["features"][off[i] : off[i + 1]] for i in range(len(off) - 1)]
        log.info("feature cache: hit for %s (%s): no forward pass", what, k[:12])
        return feats, t["scores"]

    def put(self, k, feats, scores, meta=None):
        if not self.enabled:
            return
        from safetensors.numpy import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        off = np.cumsum([0] + [len(f) for f in feats]).astype(np.int64)
        tensors = {
            "features": np.ascontiguousarray(np.concatenate(feats).astype(np.float32)),
            "offsets": off,
            "scores": np.ascontiguousarray(np.asarray(scores, dtype=np.float32)),
        }
        with atomic_path(self.path(k)) as tmp:
            save_file(tensors, str(tmp), metadata={k2: str(v) for k2, v in (meta or {}).items()})

    def get_prompts(self, k, what):
        """(encoded prompts, answer-word ids) stored by put_prompts under k, or None."""
        t = self._load(k, what)
        if t is None:
            return None
        parts = {}
        for name in ("ids", "offsets", "spans", "query", "text"):
            cut = np.cumsum(t[name + "_len"])[:-1]
            parts[name] = np.split(t[name], cut)
        enc = [
            {
                "ids": ids.tolist(),
                "spans": [tuple(x) for x in sp.tolist()],
                "query": q.tolist(),
                "text": tx.tobytes().decode(),
                "offsets": [tuple(x) for x in off.tolist()],
            }
            for ids, sp, q, tx, off in zip(*(parts[n] for n in ("ids", "spans", "query", "text", "offsets")))
        ]
        log.info("feature cache: hit for %s (%s)", what, k[:12])
        return enc, t["word_ids"].tolist()

    def put_prompts(self, k, enc, word_ids, meta=None):
        """Store encoded prompts (incontext.encode_items) and the answer-word ids under k: each field
        concatenated over the prompts, with the prompts' lengths."""
        if not self.enabled:
            return
        from safetensors.numpy import save_file

        def cat(rows, dtype, width=None):
            arrs = [np.asarray(r, dtype=dtype).reshape(-1, width) if width else np.asarray(r, dtype) for r in rows]
            empty = np.zeros((0, width) if width else 0, dtype)
            return np.ascontiguousarray(np.concatenate(arrs) if arrs else empty), np.array([len(a) for a in arrs])

        t = {}
        for name, rows, dtype, width in (
            ("ids", [e["ids"] for e in enc], np.int64, None),
            ("offsets", [e["offsets"] for e in enc], np.int64, 2),
            ("spans", [e["spans"] for e in enc], np.int64, 2),
            ("query", [e["query"] for e in enc], np.int64, None),
            ("text", [np.frombuffer(e["text"].encode(), np.uint8) for e in enc], np.uint8, None),
        ):
            t[name], t[name + "_len"] = cat(rows, dtype, width)
        t["word_ids"] = np.asarray(word_ids, dtype=np.int64)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(k)) as tmp:
            save_file(t, str(tmp), metadata={k2: str(v) for k2, v in (meta or {}).items()})

    def get_rows(self, k):
        """{16-byte row key: row (W,)} of the store k (empty when absent or unreadable); read once per
        instance (the same dict again, which put_rows replaces)."""
        if k in self._stores:
            return self._stores[k]
        t = self._load(k)
        if t is None:
            return {}
        self._stores[k] = dict(zip((bytes(r) for r in t["keys"]), t["rows"]))
        return self._stores[k]

    def put_rows(self, k, rows, meta=None):
        """Write the store k: rows {16-byte key: row (W,)}, replacing the file atomically."""
        if not self.enabled:
            return
        from safetensors.numpy import save_file

        self._stores[k] = rows
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 16)
        with atomic_path(self.path(k)) as tmp:
            save_file(
                {"keys": np.ascontiguousarray(keys), "rows": np.ascontiguousarray(np.stack(list(rows.values())))},
                str(tmp),
                metadata={k2: str(v) for k2, v in (meta or {}).items()},
            )
