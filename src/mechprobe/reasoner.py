"""A ProofWriter reasoner trained from scratch: its data, tokenizer, model and training task.

Data: theories from proofwriter_gen in the original release's format (CWA, questions of depth
0..D, theories of several sizes: the "groups"), split into train / dev / test by theory, with
every question kind kept: proof (True), inv-proof (False), CWA failure ("random": False) and negation
as failure ("inv-random": True), drawn as proofwriter_gen draws them (up to half need a rule). That
draw leaves two shortcuts: the theory's size (small theories hold few provable facts, so most of their
questions are CWA failures) and the word "not" (report() puts the model beside these shortcuts).
No theory text occurs twice, within or across the splits. `meta.json` records the configuration,
so a folder holding another one is refused, not silently reused.

Input: exactly the probe's prompt with zero demonstrations,
    "<statement> <statement> ... <question> True or False?"
and the answer is read at the last position from the two answer tokens (" True", " False"),
as the probe reads any LLM (incontext.py). The model is a LlamaForCausalLM built from a config,
with a word-level fast tokenizer (offsets for the statement spans) saved beside it. Training
batches: PromptTask.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .incontext import PromptBuilder, answer_ids
from .runs import write_json
from .utils import MechprobeError, get_logger, iter_jsonl

log = get_logger()
WORDS = ["True", "False"]
MAX_DEPTH = 5
STRATEGIES = ("proof", "inv-proof", "random", "inv-random")


def data_config(depth, sizes, groups, questions, seed):
    """The generated data's configuration (meta.json): CWA theories without negation as failure,
    no theory text twice within or across the splits."""
    cfg = {
        "depth": int(depth),
        "sizes": [int(x) for x in sizes],
        "groups": [int(g) for g in groups],
        "questions": int(questions),
        "seed": int(seed),
        "naf": False,
        "setting": "CWA",
        "unique": True,
    }
    return cfg


def check_config(cfg):
    """A clear error naming the field of a data configuration that is out of range."""
    if not 0 <= cfg["depth"] <= MAX_DEPTH:
        raise MechprobeError(f"depth={cfg['depth']}: expected a question depth between 0 and {MAX_DEPTH}")
    if len(cfg["sizes"]) != 3 or min(cfg["sizes"]) < 1:
        raise MechprobeError(
            f"sizes={' '.join(map(str, cfg['sizes']))}: expected three positive numbers of theories (train dev test)"
        )
    if not cfg["groups"] or min(cfg["groups"]) < 1 or max(cfg["groups"]) > 40:
        raise MechprobeError(
            f"groups={' '.join(map(str, cfg['groups']))}: expected numbers of statements between 1 and 40"
        )
    if cfg["questions"] < 1:
        raise MechprobeError(f"questions={cfg['questions']}: expected at least 1 question per theory")


def ensure_data(folder, cfg):
    """The split files of `folder` for configuration `cfg`, generated (atomically) when absent, one
    run at a time (runs.data_lock)."""
    from .runs import data_lock

    check_config(cfg)
    with data_lock(folder):
        return _ensure_data(folder, cfg)


def _ensure_data(folder, cfg):
    from .proofwriter_gen import generate

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MechprobeError(f"{folder}: is a file; data_dir must be a folder")
    meta = folder / "meta.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        diff = [f"{k} {old.get(k)!r} (folder) vs {v!r} (asked)" for k, v in cfg.items() if old.get(k) != v]
        if diff:
            raise MechprobeError(
                f"{folder} holds data of another configuration ({'; '.join(diff)}); "
                "choose another data_dir or delete it"
            )
        log.info("using the existing data in %s", folder)
        return split_files(folder, cfg)
    if folder.exists() and any(folder.iterdir()):
        raise MechprobeError(
            f"{folder}: holds files but no meta.json (an incomplete dataset?); delete it or choose another data_dir"
        )
    tmp = folder.with_name("." + folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "generating %s theories (train/dev/test) of %s statements, questions of depth 0..%d, into %s",
        cfg["sizes"],
        cfg["groups"],
        cfg["depth"],
        folder,
    )
    generate(
        tmp,
        cfg["depth"],
        tuple(cfg["sizes"]),
        tuple(cfg["groups"]),
        cfg["seed"],
        cfg["questions"],
        cfg["naf"],
        unique=cfg["unique"],
    )
    write_json(tmp / "meta.json", cfg)
    if folder.exists():
        folder.rmdir()
    tmp.rename(folder)
    return split_files(folder, cfg)


def split_files(folder, cfg):
    base = Path(folder) / "CWA" / f"depth-{cfg['depth']}"
    return {s: base / f"meta-{f}.jsonl" for s, f in (("train", "train"), ("val", "dev"), ("test", "test"))}


def read_questions(path):
    """Every question of a meta-*.jsonl (all kinds), as items: statements, question, answer word,
    depth (QDep), strategy, group (number of statements), facts (the statements' first `facts` are the
    theory's facts, the rest its rules), id."""
    from .proofwriter import _theory_problem, theory_statements

    items = []
    for line, th in iter_jsonl(path):
        problem = _theory_problem(th)
        if problem:
            raise MechprobeError(f"{path}:{line}: {problem}")
        sids, texts = theory_statements(th)
        n_facts = sum(i in th.get("triples", {}) for i in sids)
        for qid, q in th["questions"].items():
            if not isinstance(q, dict) or q.get("answer") not in (True, False):
                raise MechprobeError(f"{path}:{line}: question {qid}: expected an object with a true/false answer")
            items.append(
                {
                    "id": f"{th.get('id', line)}/{qid}",
                    "statements": texts,
                    "question": q["question"],
                    "answer": "True" if q["answer"] else "False",
                    "depth": int(q.get("QDep") or 0),
                    "strategy": q.get("strategy", "?"),
                    "group": len(texts),
                    "facts": n_facts,
                }
            )
    if not items:
        raise MechprobeError(f"{path}: no question")
    return items


def is_negated(question):
    """Whether a question is a negated statement ("Bob is not big.", "The cat does not eat the dog.")."""
    return " not " in f" {question} "


def positive_pool(items):
    """(N,) bool: the questions the positive phase draws from, those without "not"."""
    return np.array([not is_negated(it["question"]) for it in items], dtype=bool)


FACT = re.compile(r"(.+?) is (\w+)\.")  # "Bob is big." (a CWA fact)
ATTRIBUTE_QUESTION = re.compile(r"(.+?) is (not )?(\w+)\.")  # "Bob is big." / "Bob is not big."


def word_presence(item):
    """Which of an attribute question's words occur in its theory: "entity in, attribute in" etc.
    ("other" for a question not of the form "<entity> is [not] <attribute>."). On the unprovable
    questions (CWA failure, NAF), "entity in, attribute in" is where the words alone do not answer:
    the theory must say them of one another (binding), and a bag-of-words model fails there."""
    m = ATTRIBUTE_QUESTION.fullmatch(item["question"].strip())
    if not m:
        return "other"
    text = " ".join(item["statements"])
    ent = re.search(r"\b" + re.escape(m.group(1)) + r"\b", text, re.IGNORECASE) is not None
    att = re.search(r"\b" + re.escape(m.group(3)) + r"\b", text) is not None
    return f"entity {'in' if ent else 'absent'}, attribute {'in' if att else 'absent'}"


@torch.no_grad()
def lookup_accuracy(model, tok, items):
    """Does the model look up what the statements say of an entity? For each question "E is a." (no
    "not") whose entity E has stated facts, the prompt up to the question's "is" is run and the
    attribute word with the highest next-token logit (among the attributes that any fact of `items`
    names) is compared with E's stated attributes S_E:
        accuracy = mean [argmax_a z_a in S_E],   chance = mean |S_E| / |attributes in the theory|
    (chance: a guess among the theory's attribute words). No answer is read; the lookup is the one a
    recall segment trains and that a question's answer needs."""
    attrs = sorted({m.group(2) for it in items for f in it["statements"][: it["facts"]] if (m := FACT.fullmatch(f))})
    dev = next(model.parameters()).device
    ids = torch.tensor([tok.convert_tokens_to_ids(a) for a in attrs], device=dev)
    model.eval()
    hits, chance = [], []
    for it in items:
        q = ATTRIBUTE_QUESTION.fullmatch(it["question"].strip())
        facts = [FACT.fullmatch(f) for f in it["statements"][: it["facts"]]]
        stated = {m.group(2) for m in facts if m and q and m.group(1).lower() == q.group(1).lower()}
        if not q or q.group(2) or not stated:
            continue
        text, _, (qc, _) = PromptBuilder().build(it, [])
        prefix = tok(text[:qc] + q.group(1) + " is", return_tensors="pt")["input_ids"].to(dev)
        z = model(input_ids=prefix).logits[0, -1, ids]
        hits.append(attrs[int(z.argmax())] in stated)
        words = " ".join(it["statements"])
        chance.append(len(stated) / sum(re.search(rf"\b{a}\b", words) is not None for a in attrs))
    if not hits:
        return None
    return {"accuracy": float(np.mean(hits)), "n": len(hits), "chance": float(np.mean(chance))}


def first_token_at(offsets, chars):
    """Index, per prompt, of the first token that starts at or after character chars[i] (the question's
    first character: its first token; its end: the first token of the answer choices); offsets: each
    prompt's (start, end) per token, special tokens (0, 0)."""
    return np.array([next(t for t, (a, e) in enumerate(o) if a >= c and e > a) for o, c in zip(offsets, chars)])


def question_last_words(offsets, spans, texts):
    """Index of each prompt's question's last word: the last token inside the question's (start, end)
    character span that starts with a letter or digit (the "a" of "E is a ."; offsets: each prompt's
    (start, end) per token)."""
    return np.array(
        [
            max(t for t, (a, e) in enumerate(o) if e > a and q0 <= a < q1 and text[a].isalnum())
            for o, (q0, q1), text in zip(offsets, spans, texts)
        ]
    )


def theory_index(items):
    """Index of each question's theory (questions with the same statements share one), (N,) int64."""
    seen = {}
    return np.array([seen.setdefault(tuple(it["statements"]), len(seen)) for it in items], dtype=np.int64)


def fact_tokens(tok, items):
    """Token ids of each theory's facts, by theory_index: [[ids of fact 1], [ids of fact 2], ...]."""
    first = {}
    for t, it in zip(theory_index(items), items):
        first.setdefault(int(t), it)
    if any("facts" not in it for it in first.values()):
        raise MechprobeError("the questions do not say which statements are facts (read them with read_questions)")
    facts = [first[t]["statements"][: first[t]["facts"]] for t in range(len(first))]
    flat = tok([f for fs in facts for f in fs], add_special_tokens=False)["input_ids"] if any(facts) else []
    out, c = [], 0
    for fs in facts:
        out.append(flat[c : c + len(fs)])
        c += len(fs)
    return out


def build_tokenizer(items):
    """The word tokenizer of the questions `items`' words."""
    from .tiny import word_tokenizer

    texts = [s for it in items for s in it["statements"] + [it["question"]]] + ["True or False ?"]
    return word_tokenizer(texts)


def build_model(tok, layers=4, hidden=128, heads=4, seed=0, max_positions=1024, rope_theta=1e6):
    """A randomly initialised LlamaForCausalLM from a config (intermediate size 4 x hidden, as many key
    as query heads, RoPE base rope_theta), eager attention (tiny.llama_from_config)."""
    from .tiny import llama_from_config

    return llama_from_config(tok, layers, hidden, heads, heads, 4 * hidden, seed, max_positions, rope_theta)


class PromptTask:
    """ProofWriter questions as a training task (training.run_loop): batches of whole theories, each
    theory's questions packed into one row that holds its statements once (packing.pack).

    Each epoch's theories come in a seeded order, sorted by length within chunks of 50 batches, the
    batches shuffled. The first positive_steps batches hold only questions without "not" (whether a
    statement holds is learnt before its negation: on the generator's draw the word "not" alone
    answers every proof-bearing question, and a model that settles on it first never learns the
    rest). With recall, each training row ends with its theory's facts restated in a seeded order
    (only "E is" -> one of E's attributes can be predicted: the lookup a question's answer needs).
    The next-token loss covers each prompt's words up to its question's ".", not the answer choices
    "True or False ?" (whose fixed next tokens, "." -> "True" and "or" -> "False", say nothing of the
    answer and would train the logits the answer is read from at "." and "or")."""

    def __init__(self, tok, splits, batch_size, seed, *, positive_steps=0, recall=False):
        self.tok, self.batch_size, self.seed = tok, batch_size, seed
        self.facts = fact_tokens(tok, splits["train"]) if recall else None
        self.positive_steps = positive_steps
        self.positive = positive_pool(splits["train"])
        self.word_ids = answer_ids(tok, WORDS)
        self.items, self.ids, self.qstart, self.qend = splits, {}, {}, {}
        for split, items in splits.items():
            self._encode(split, items)
        self.lengths = np.array([len(x) for x in self.ids["train"]])
        self.theory = {split: theory_index(items) for split, items in splits.items()}
        self.answers = {
            s: torch.tensor([self.word_ids[WORDS.index(it["answer"])] for it in its]) for s, its in splits.items()
        }

    def _encode(self, split, items):
        """Token ids of the split's prompts, the index of each question's first token, of its first
        token after the question."""
        built = [PromptBuilder().build(it, []) for it in items]
        texts = [b[0] for b in built]
        full = self.tok(texts, add_special_tokens=True, return_offsets_mapping=True)
        enc = full["input_ids"]
        self.qstart[split] = first_token_at(full["offset_mapping"], [b[2][0] for b in built])
        self.qend[split] = first_token_at(full["offset_mapping"], [b[2][1] for b in built])
        unk = [i for i, e in enumerate(enc) if self.tok.unk_token_id in e]
        if unk:
            raise MechprobeError(
                f"{split}: {len(unk)} prompts have words the tokenizer does not know (first: {texts[unk[0]][:80]!r})"
            )
        self.ids[split] = enc

    def epoch_batches(self, epoch):
        """The epoch's batches (index tensors of whole theories' questions), in length buckets (sorted
        within chunks of 50 batches, then cut and shuffled); the positive phase's steps replaced by
        draws from its pool."""
        n, bs = len(self.ids["train"]), self.batch_size
        rng = np.random.default_rng(self.seed * 1000 + epoch)
        rng.permutation(n)  # drawn and unused: the seeded order of every epoch stays that of earlier versions
        order = self._order(np.arange(n), rng)
        batches = [torch.from_numpy(order[i : i + bs]) for i in range(0, n, bs)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._positive(epoch, batches)

    def _order(self, idx, rng, chunk=None):
        """Questions `idx` (training indices) ordered theory by theory (a theory's questions together,
        so that a batch packs them into one row): the theories in a seeded order, sorted by prompt
        length within chunks of `chunk` questions (default 50 batches; len(idx): fully sorted)."""
        names, inv = np.unique(self.theory["train"][idx], return_inverse=True)
        longest = np.zeros(len(names), dtype=np.int64)
        np.maximum.at(longest, inv, self.lengths[idx])
        perm = rng.permutation(len(names))
        size = np.bincount(inv, minlength=len(names))[perm]
        start = np.cumsum(size) - size  # first question of each theory (in the seeded order)
        ranked = perm[np.lexsort((np.arange(len(perm)), longest[perm], start // (chunk or 50 * self.batch_size)))]
        pos = np.empty(len(names), dtype=np.int64)
        pos[ranked] = np.arange(len(names))
        return idx[np.argsort(pos[inv], kind="stable")]

    def _positive(self, epoch, batches):
        """Batches of the positive phase replaced by seeded draws of questions without "not", by
        length: up to 50 steps draw their questions together (whole theories' positive questions,
        as many passes over the pool as needed), sorted by length and cut into batches, in a seeded
        order."""
        spe, pool = len(batches), np.flatnonzero(self.positive)
        end = min(spe, max(0, self.positive_steps - epoch * spe))
        for i in range(0, end, 50):
            step, n = epoch * spe + i, min(50, end - i)
            bs = min(self.batch_size, len(pool))
            rng = np.random.default_rng([self.seed, step])
            passes = [self._order(pool, rng, chunk=1) for _ in range(-(-n * bs // len(pool)))]
            draw = np.concatenate(passes)[: n * bs]
            draw = self._order(draw, rng, chunk=len(draw))  # theory by theory, by length
            for b, o in enumerate(rng.permutation(n)):
                batches[i + b] = torch.from_numpy(draw[o * bs : (o + 1) * bs])
        return batches

    def pad(self, split, idx):
        """The questions `idx` of a split packed (PackedPrompts, a row per theory), with the training
        split's recall segments."""
        from .packing import pack

        idx = np.asarray(idx, dtype=np.int64)
        seqs = [self.ids[split][int(i)] for i in idx]
        keys = self.theory[split][idx].tolist()
        recall = self._recall(idx, keys) if self.facts is not None and split == "train" else None
        return pack(seqs, keys, self.tok.pad_token_id, None, recall, self.qend[split][idx])

    def _recall(self, idx, keys):
        """{theory: (its facts restated in a seeded order, its statements' length)}: the recall
        segments of a packed training batch (the order seeded by the theory and the batch's first
        question, so that a resumed run packs the same rows)."""
        out = {}
        for i, k in zip(idx.tolist(), keys):
            if k not in out:
                facts = self.facts[k]
                order = np.random.default_rng([self.seed, k, int(idx[0])]).permutation(len(facts))
                out[k] = ([t for o in order for t in facts[o]], int(self.qstart["train"][i]))
        return out

    def batch(self, idx):
        """(PackedPrompts, None, answer token ids) of the training questions `idx`."""
        return self.pad("train", idx), None, self.answers["train"][idx]

    @torch.no_grad()
    def predictions(self, model, split, batch_size=128):
        """Predicted answer index (0 True, 1 False) per question: argmax of the two answer tokens'
        logits at its last token (theories by length, a theory's questions packed together)."""
        model.eval()
        dev = next(model.parameters()).device
        lengths, th = np.array([len(x) for x in self.ids[split]]), self.theory[split]
        longest = np.zeros(th.max() + 1, dtype=np.int64)
        np.maximum.at(longest, th, lengths)
        order = np.lexsort((th, longest[th]))
        pred = np.empty(len(order), dtype=int)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids = self.pad(split, idx).to(dev)
            pred[idx] = ids.logits(model)[ids.last][:, self.word_ids].argmax(-1).cpu().numpy()
        return pred

    def accuracy(self, model, split):
        gold = np.array([WORDS.index(it["answer"]) for it in self.items[split]])
        return float((self.predictions(model, split) == gold).mean())

    def breakdown(self, model, split):
        """The model's test report (report()) on a split, its answers read as predict() reads them."""
        pred = [WORDS[k] for k in self.predictions(model, split)]
        return report(self.items[split], pred)


KINDS = {"proof": "proof", "inv-proof": "inverse proof", "random": "CWA failure", "inv-random": "NAF"}
HARD = "unprovable, both words in"  # CWA failures and NAF questions whose entity and attribute occur


def question_kind(item):
    """The kind of a question (KINDS, by its generator's strategy; None for another strategy)."""
    return KINDS.get(item["strategy"])


def is_hard(item):
    """An unprovable question (CWA failure, NAF) whose entity and attribute both occur in the theory:
    the words alone do not answer it (word_presence)."""
    return item["strategy"] in ("random", "inv-random") and word_presence(item) == "entity in, attribute in"


def report(items, pred):
    """Accuracy of the answer words `pred` on `items`: overall; per question kind (proof, inverse
    proof, CWA failure, NAF) and on the hard unprovable questions (HARD); the balanced accuracy, the
    mean over the four kinds present (the "not" rule, exact on proofs and wrong on the rest, scores
    0.5 there); per depth; on the proof-bearing questions per depth; per number of statements."""
    ok = np.array([p == it["answer"] for p, it in zip(pred, items)])

    def acc(sel):
        sel = np.asarray(sel, bool)
        return {"accuracy": round(float(ok[sel].mean()), 4), "n": int(sel.sum())} if sel.any() else None

    kinds = [question_kind(it) for it in items]
    by_kind = {k: acc([q == k for q in kinds]) for k in KINDS.values()}
    by_kind[HARD] = acc([is_hard(it) for it in items])
    present = [v["accuracy"] for k, v in by_kind.items() if v and k != HARD]
    depths = sorted({it["depth"] for it in items})
    return {
        "accuracy": round(float(ok.mean()), 4),
        "n": len(items),
        "balanced_accuracy": round(float(np.mean(present)), 4) if present else None,
        "by_kind": by_kind,
        "by_depth": {str(d): acc([it["depth"] == d for it in items]) for d in depths},
        "proof_by_depth": {
            str(d): acc([it["depth"] == d and it["strategy"] in ("proof", "inv-proof") for it in items]) for d in depths
        },
        "by_group": {str(g): acc([it["group"] == g for it in items]) for g in sorted({it["group"] for it in items})},
    }


def baseline_reports(train, items):
    """{baseline: report()} of the shortcut baselines (shortcuts.predictions: majority, the "not" rule,
    the size prior, a bag of words on theory + question) fitted on `train`, on the same `items`."""
    from .shortcuts import predictions

    return {name: report(items, pred) for name, pred in predictions(train, items).items()}
