"""Probe your own causal LM on your own items from Python.

    from mechprobe import load_model, load_tokenizer, read_items, probe
    result = probe(load_model(folder), load_tokenizer(folder), read_items("items.jsonl"))
    result.s_p1, result.s_p2, result.to_json(path), result.plot(folder)

An item (Item) is one problem: statements, a question, the gold answer word, and the gold
reasoning tree (which statements are useful, and at which step each is used). The prompt is
`[demonstrations] <statements> <question> <suffix>`; the question's tokens are the probe's
queries and each statement's tokens its keys; the answer is read at the last position from
the answer words' next-token scores. See llmprobe.py for the probe on such items.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .incontext import PromptBuilder, pick_demos
from .llmprobe import ProbeSettings, probe_items, report
from .models import ModelFolder, TokenizerFolder
from .runs import provenance, write_json
from .utils import MechprobeError, distinct_seeds, iter_jsonl


@dataclass
class Item:
    """One problem and its gold reasoning tree.

    statements: the context sentences, in prompt order.
    question:   the question; its tokens are the probe's query positions.
    answer:     the gold answer word (e.g. "True"); accuracy compares the answer words' scores.
    useful:     per statement, whether the reasoning tree uses it (P1's label).
    step:       per statement, the step at which it is used: 0 for the first, -1 when not useful
                (P2's label, on the useful statements).
    depth:      the tree's depth (results are also given per depth); optional.
    group:      a grouping key, by default the number of statements; optional.
    id:         an identifier (default: the item's position).
    """

    statements: list
    question: str
    answer: str
    useful: list
    step: list
    depth: Optional[int] = None
    group: Optional[int] = None
    id: Optional[str] = None

    @classmethod
    def from_dict(cls, d, where="item"):
        """An Item from a mapping, checked field by field (errors name `where` and the field)."""
        if not isinstance(d, dict):
            raise MechprobeError(f"{where}: expected an object with statements, question, answer, useful, step")
        missing = [k for k in ("statements", "question", "answer", "useful", "step") if k not in d]
        if missing:
            raise MechprobeError(
                f"{where}: missing field(s) {', '.join(missing)}; an item has statements, question, answer, useful, "
                "step"
            )
        it = cls(
            **{k: d.get(k) for k in ("statements", "question", "answer", "useful", "step", "depth", "group", "id")}
        )
        it.check(where)
        return it

    def check(self, where="item"):
        S = len(self.statements) if isinstance(self.statements, list) else -1
        if S < 1 or not all(isinstance(s, str) and s.strip() for s in self.statements):
            raise MechprobeError(f"{where}: field 'statements' must be a non-empty list of non-empty strings")
        for key in ("question", "answer"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise MechprobeError(f"{where}: field '{key}' must be a non-empty string")
        if (
            not isinstance(self.useful, list)
            or len(self.useful) != S
            or not all(isinstance(u, bool) or u in (0, 1) for u in self.useful)
        ):
            raise MechprobeError(f"{where}: field 'useful' must be a list of {S} booleans (one per statement)")
        if (
            not isinstance(self.step, list)
            or len(self.step) != S
            or not all(isinstance(x, int) and x >= -1 for x in self.step)
        ):
            raise MechprobeError(f"{where}: field 'step' must be a list of {S} integers >= -1 (one per statement)")
        bad = [j for j, (u, x) in enumerate(zip(self.useful, self.step)) if bool(u) != (x >= 0)]
        if bad:
            raise MechprobeError(
                f"{where}: statements {bad}: a useful statement needs a step >= 0 and a useless one step -1"
            )

    def as_dict(self, index=0):
        d = asdict(self)
        d["useful"] = [bool(u) for u in self.useful]
        d["group"] = len(self.statements) if self.group is None else self.group
        d["id"] = str(index) if self.id is None else str(self.id)
        return d


def read_items(path: Union[str, Path]) -> List["Item"]:
    """Items from a JSONL file (one Item object per line); errors name the file and the line."""
    items = []
    for line, d in iter_jsonl(path):
        items.append(Item.from_dict(d, f"{path}:{line}"))
    if not items:
        raise MechprobeError(f"{path}: the file holds no item")
    return items


def as_items(items: Iterable[Union["Item", Mapping[str, Any]]]) -> List["Item"]:
    """A list of Items from Items, mappings, or a datasets.Dataset (any iterable of rows)."""
    out = []
    for i, it in enumerate(items):
        out.append(it if isinstance(it, Item) else Item.from_dict(dict(it), f"item {i}"))
        out[-1].check(f"item {i}")
    if not out:
        raise MechprobeError("no item given")
    return out


class ProbeResult:
    """What probe() returns: the results dict (`results`), with shortcuts and writers.

    results["subsets"]["all"] holds f1_p1, f1_p2, control_f1_*, s_p1, s_p2 (mean, std, per_seed)
    and the per-layer curves; other subsets are per depth and per (group, depth).
    """

    def __init__(self, results: Dict[str, Any]):
        self.results = results

    def _mean(self, key):
        v = self.results["subsets"]["all"].get(key, {})
        return v.get("mean")

    @property
    def s_p1(self) -> Optional[float]:
        return self._mean("s_p1")

    @property
    def s_p2(self) -> Optional[float]:
        return self._mean("s_p2")

    @property
    def accuracy(self) -> Optional[float]:
        return self.results["accuracy"]

    @property
    def curves(self) -> Optional[Dict[str, Any]]:
        return self.results["subsets"]["all"].get("curves")

    def to_json(self, path: Union[str, Path]) -> Path:
        write_json(path, self.results)
        return Path(path)

    def plot(self, folder: Union[str, Path], title: str = "your items") -> Path:
        """probe_by_layer.png, probe_by_depth.png, probe_by_group.png (and accuracy plots) in `folder`."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        report(self.results, folder, title)
        return Path(folder)

    def __repr__(self):
        f = lambda v: "undefined" if v is None else f"{v:.3f}"  # noqa: E731
        null = self.results["subsets"]["all"].get("null", {})
        p = lambda k: f" (p={null[k]['p_value']:.3f})" if "p_value" in null.get(k, {}) else ""  # noqa: E731
        n = self.results["n_items"]
        return (
            f"ProbeResult(n_items={n}, accuracy={f(self.accuracy)}, S_P1={f(self.s_p1)}{p('s_p1')}, "
            f"S_P2={f(self.s_p2)}{p('s_p2')} over items of depth >= 1)"
        )


def probe(
    model: Any,
    tokenizer: Any,
    items: Iterable[Union["Item", Mapping[str, Any]]],
    answer_words: Sequence[str] = ("True", "False"),
    suffix: str = "True or False?",
    n_demos: int = 0,
    demo_pool: Optional[Iterable[Union["Item", Mapping[str, Any]]]] = None,
    settings: Optional[ProbeSettings] = None,
    **settings_kw: Any,
) -> ProbeResult:
    """The MechanisticProbe of `model` on `items` against random-init controls of its architecture.

    model, tokenizer: objects, or a local model folder (str / Path) for either (loaded on first use).
    items: Items, mappings with Item's fields, or a datasets.Dataset of them.
    answer_words: the words whose next-token scores give the answer (each item's answer is one).
    n_demos: in-context demonstrations drawn from `demo_pool` (default: the items, never the item).
    settings: a ProbeSettings, or its fields as keywords (seeds, folds, query_pool, normalize,
    batch_size, control_layers).
    """
    st = settings or ProbeSettings(**settings_kw)
    distinct_seeds(list(st.seeds))
    if isinstance(model, (str, Path)):  # loaded on first use: settings.cache_dir may serve the whole run
        model = ModelFolder(model)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = TokenizerFolder(tokenizer)
    its = [it.as_dict(i) for i, it in enumerate(as_items(items))]
    words = list(answer_words)
    bad = sorted({it["answer"] for it in its} - set(words))
    if bad:
        raise MechprobeError(f"answers {bad} are not among the answer words {words}")
    pool = [it.as_dict(i) for i, it in enumerate(as_items(demo_pool))] if demo_pool is not None else its
    demos = pick_demos(its, n_demos, st.seeds[0], pool)
    by = ("group", "depth") if all(it["depth"] is not None for it in its) else ("group",)
    res, _, _ = probe_items(st, tokenizer, model, its, demos, PromptBuilder(suffix=suffix), words, "items", by=by)
    res["settings"] = {**asdict(st), "n_demos": n_demos, "answer_words": words, "suffix": suffix}
    res.update(_model_record(model))
    res["provenance"] = provenance()
    return ProbeResult(res)


def _model_record(model):
    """Where the model came from and its fingerprint (cache.model_fingerprint), as a script's config.json."""
    from .cache import model_fingerprint

    path = model.path if isinstance(model, ModelFolder) else getattr(model.config, "_name_or_path", None)
    return {"model": path or type(model).__name__, "model_fingerprint": model_fingerprint(model)}
