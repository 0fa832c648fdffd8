"""A ProofWriter reasoner trained from scratch: its data, tokenizer, model and training task.

Data: theories from proofwriter_gen in the original release's format (CWA, questions of depth
0..D, theories of several sizes: the "groups"), split into train / dev / test by theory, with
every question kind kept: proof (True), inv-proof (False), CWA failure ("random": False) and negation
as failure ("inv-random": True), drawn as proofwriter_gen draws them (up to half need a rule). That
draw leaves two shortcuts: the theory's size (small theories hold few provable facts, so most of their
questions are CWA failures) and the word "not". With balanced=True every theory gets as many
questions of each kind, so True / False is balanced within every theory and for either polarity
(README: a model trained on the default draw answers from those shortcuts; on the balanced draw the
same recipe stays at chance within 15 minutes). `meta.json` records
the configuration, so a folder holding another one is refused, not silently reused.

Input: exactly the probe's prompt with zero demonstrations,
    "<statement> <statement> ... <question> True or False?"
and the answer is read at the last position from the two answer tokens (" True", " False"),
as the probe reads any LLM (incontext.py). The model is a LlamaForCausalLM built from a config,
with a word-level fast tokenizer (offsets for the statement spans) saved beside it.

Training batches are bucketed by length: each epoch's seeded permutation is cut into chunks of
50 batches, each chunk sorted by prompt length and cut into batches, and the batches shuffled;
the first `curriculum` epochs instead go through all prompts from the shortest to the longest
(the smallest theories first: matching a question to one fact is learnt before searching 24);
with stage_steps, the first stage_steps batches are drawn from the smallest theories only, the
larger groups let in one at a time (equal shares); with positive_steps, the first positive_steps
batches (of positive_batch questions, default batch_size) hold only questions without "not"
(whether a statement holds is learnt apart from its negation: on the balanced draw the answer is
the XOR of the two, with no signal in either alone);
right padding with an attention mask, the loss at each prompt's last real token; with prior_balance
each question's loss is weighted (prior_weights) so that the answer's prior given the theory's size
and the word "not" is 1/2.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .incontext import PromptBuilder, answer_ids
from .utils import MechprobeError, get_logger, iter_jsonl, write_json

log = get_logger()
WORDS = ["True", "False"]
MAX_DEPTH = 5
STRATEGIES = ("proof", "inv-proof", "random", "inv-random")


def data_config(depth, sizes, groups, questions, seed, naf=False, balanced=False, binding_pairs=0, train_more=0):
    cfg = {
        "depth": int(depth),
        "sizes": [int(x) for x in sizes],
        "groups": [int(g) for g in groups],
        "questions": int(questions),
        "seed": int(seed),
        "naf": bool(naf),
        "setting": "CWA",
        "unique": True,  # no theory text twice, within or across the splits (proofwriter_gen.generate)
    }
    if balanced:  # recorded only when set, so folders generated before the option still match
        cfg["balanced"] = True
    if binding_pairs:
        cfg["binding_pairs"] = int(binding_pairs)
    if train_more:
        cfg["train_more"] = int(train_more)
    return cfg


def check_config(cfg):
    if not 0 <= cfg["depth"] <= MAX_DEPTH:
        raise MechprobeError(f"DEPTH={cfg['depth']}: expected a question depth between 0 and {MAX_DEPTH}")
    if len(cfg["sizes"]) != 3 or min(cfg["sizes"]) < 1:
        raise MechprobeError(
            f"SIZES={' '.join(map(str, cfg['sizes']))}: expected three positive numbers of theories (train dev test)"
        )
    if not cfg["groups"] or min(cfg["groups"]) < 1 or max(cfg["groups"]) > 40:
        raise MechprobeError(
            f"GROUPS={' '.join(map(str, cfg['groups']))}: expected numbers of statements between 1 and 40"
        )
    if cfg["questions"] < 1:
        raise MechprobeError(f"QUESTIONS={cfg['questions']}: expected at least 1 question per theory")
    for key, most, what in (("binding_pairs", 20, "pairs of binding questions"), ("train_more", 40, "more questions")):
        if not 0 <= cfg.get(key, 0) <= most:
            raise MechprobeError(f"{key.upper()}={cfg[key]}: expected 0 to {most} {what} per training theory")


def ensure_data(folder, cfg):
    """The split files of `folder` for configuration `cfg`, generated (atomically) when absent, one
    run at a time (utils.data_lock)."""
    from .utils import data_lock

    check_config(cfg)
    with data_lock(folder):
        return _ensure_data(folder, cfg)


def _ensure_data(folder, cfg):
    from .proofwriter_gen import generate

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MechprobeError(f"{folder}: is a file; DATA_DIR must be a folder")
    meta = folder / "meta.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        diff = [f"{k.upper()} {old.get(k)!r} (folder) vs {v!r} (asked)" for k, v in cfg.items() if old.get(k) != v]
        if diff:
            raise MechprobeError(
                f"{folder} holds data of another configuration ({'; '.join(diff)}); "
                "choose another DATA_DIR or delete it"
            )
        log.info("using the existing data in %s", folder)
        return split_files(folder, cfg)
    if folder.exists() and any(folder.iterdir()):
        raise MechprobeError(
            f"{folder}: holds files but no meta.json (an incomplete dataset?); delete it or choose another DATA_DIR"
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
        cfg.get("balanced", False),
        cfg.get("binding_pairs", 0),
        cfg.get("train_more", 0),
        unique=cfg.get("unique", False),
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


def prior_weights(items):
    """Loss weight of each training question so that, within each number of statements g, the four
    cells (with or without "not") x (True, False) weigh the same: w = n_g / (c_g n_cell), c_g the
    non-empty cells of g (the weights of a group sum to n_g). The answer's prior given the theory's
    size and the word "not" is then 1/2: the draw's size shortcut is gone from the loss, not from
    the data (unlike BALANCED, which draws other questions)."""
    from collections import Counter

    keys = [(it["group"], is_negated(it["question"]), it["answer"]) for it in items]
    cell, n_g = Counter(keys), Counter(k[0] for k in keys)
    cells_g = Counter(k[0] for k in cell)
    return np.array([n_g[k[0]] / (cells_g[k[0]] * cell[k]) for k in keys], dtype=np.float64)


def loss_weights(items, prior_balance=False, binding_weight=1.0):
    """Per-question loss weights (N,) float32, or None when all are 1: prior_weights with
    prior_balance, times binding_weight for the unprovable questions (CWA failure, NAF) whose entity
    and attribute both occur in the theory (word_presence: where the words alone do not answer)."""
    if not prior_balance and binding_weight == 1.0:
        return None
    w = prior_weights(items) if prior_balance else np.ones(len(items))
    hard = [
        it["strategy"] in ("random", "inv-random") and word_presence(it) == "entity in, attribute in" for it in items
    ]
    w = w * np.where(hard, binding_weight, 1.0)
    return torch.from_numpy(w).float()


def positive_pool(items, words=False):
    """(N,) bool: the questions the positive phase draws from, those without "not"; with words, only
    those whose entity and attribute both occur in the theory (word_presence), so that the words'
    presence tells nothing there: true facts and rule conclusions against unprovable questions on
    the same words (CWA failures whose words are bound to other words)."""
    keep = [not is_negated(it["question"]) for it in items]
    if words:
        keep = [k and word_presence(it) == "entity in, attribute in" for k, it in zip(keep, items)]
    return np.array(keep, dtype=bool)


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


def question_starts(offsets, chars):
    """Index of each prompt's first question token: the first token that starts at or after the
    question's first character (offsets: each prompt's (start, end) per token; special tokens (0, 0))."""
    return np.array([next(t for t, (a, e) in enumerate(o) if a >= c and e > a) for o, c in zip(offsets, chars)])


def question_ends(offsets, chars):
    """Index of each prompt's first token after its question (the answer choices "True or False ?"
    begin there): the first token that starts at or after the question's end character."""
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


def reverse_fact(ids, is_id):
    """A fact's token ids "E is a ." -> "a is E ." (the words after the first "is", then "is", then the
    words before it, then the final mark), e.g. "The cat is big ." -> "big is The cat ."."""
    k = ids.index(is_id)
    return [*ids[k + 1 : -1], is_id, *ids[:k], ids[-1]]


def build_tokenizer(items, bos=False):
    """The word tokenizer of the questions `items`' words; with bos, prompts start with "<s>"."""
    from .tiny import word_tokenizer

    texts = [s for it in items for s in it["statements"] + [it["question"]]] + ["True or False ?"]
    return word_tokenizer(texts, bos=bos)


def build_model(tok, layers=4, hidden=128, heads=4, seed=0, max_positions=1024, **arch):
    """A LlamaForCausalLM from a config (intermediate size 4 x hidden), eager attention; arch: the
    architecture options of `tiny.llama_from_config` (tie, rope_theta, position_heads, wired_lookup),
    with its defaults."""
    from .tiny import llama_from_config

    return llama_from_config(tok, layers, hidden, heads, heads, 4 * hidden, seed, max_positions, **arch)


RECALL_ORDERS = ("shuffled", "rotated", "reversed")


class PromptTask:
    """ProofWriter questions as a training task (training.run_loop), length-bucketed.

    recall_order (with recall): the order in which a recall segment restates its theory's facts;
    "shuffled": a seeded permutation, so that only "E is" -> one of E's attributes can be predicted
    (the lookup by entity); "rotated": the statements' order from a seeded first fact, wrapping
    round, so that after each restated fact "E is a ." the next fact's words can be predicted too,
    by finding "E is a ." among the statements (a match on the entity and the attribute together,
    which a question's answer needs); "reversed": the shuffled order, each fact "E is a ." restated
    as "a is E ." so that "a is" -> the entities said to be a is predicted (the lookup by attribute:
    an occurrence of a must carry whose attribute it is, which a question "E is a." needs where it
    meets a among the statements)."""

    def __init__(
        self,
        tok,
        splits,
        batch_size,
        seed,
        curriculum=0,
        stage_steps=0,
        positive_steps=0,
        positive_batch=0,
        prior_balance=0,
        pack=False,
        lm_question=False,
        lm_statements=False,
        binding_weight=1.0,
        recall=False,
        positive_words=False,
        recall_order="shuffled",
        early_answer=False,
    ):
        if recall_order not in RECALL_ORDERS:
            raise MechprobeError(f"RECALL_ORDER={recall_order!r}: expected one of {', '.join(RECALL_ORDERS)}")
        self.recall_order = recall_order
        self.tok, self.batch_size, self.seed, self.curriculum, self.pack = tok, batch_size, seed, curriculum, pack
        self.lm_question, self.lm_statements = lm_question, lm_statements
        self.facts = fact_tokens(tok, splits["train"]) if recall else None
        self.stage_steps, self.positive_steps = stage_steps, positive_steps
        self.positive_batch = positive_batch or batch_size
        self.weights = loss_weights(splits["train"], prior_balance, binding_weight)
        train_groups = np.array([it["group"] for it in splits["train"]])
        self.groups = sorted(set(train_groups.tolist()))
        self.pools = {g: train_groups <= g for g in self.groups}  # theories of <= g statements
        self.positive = positive_pool(splits["train"], positive_words)
        self.word_ids = answer_ids(tok, WORDS)
        self.items, self.ids, self.qstart, self.qword, self.early_answer = splits, {}, {}, {}, early_answer
        self.qend = {}
        for split, items in splits.items():
            self._encode(split, items)
        self.lengths = np.array([len(x) for x in self.ids["train"]])
        self.theory = {split: theory_index(items) for split, items in splits.items()}
        self.answers = {
            s: torch.tensor([self.word_ids[WORDS.index(it["answer"])] for it in its]) for s, its in splits.items()
        }

    def _encode(self, split, items):
        """Token ids of the split's prompts, the index of each question's first token (and, with
        early_answer, of its last word)."""
        built = [PromptBuilder().build(it, []) for it in items]
        texts = [b[0] for b in built]
        full = self.tok(texts, add_special_tokens=True, return_offsets_mapping=True)
        enc = full["input_ids"]
        self.qstart[split] = question_starts(full["offset_mapping"], [b[2][0] for b in built])
        self.qend[split] = question_ends(full["offset_mapping"], [b[2][1] for b in built])
        if self.early_answer:  # only the early answer loss reads the questions' last words
            self.qword[split] = question_last_words(full["offset_mapping"], [b[2] for b in built], texts)
        unk = [i for i, e in enumerate(enc) if self.tok.unk_token_id in e]
        if unk:
            raise MechprobeError(
                f"{split}: {len(unk)} prompts have words the tokenizer does not know (first: {texts[unk[0]][:80]!r})"
            )
        self.ids[split] = enc

    def epoch_batches(self, epoch):
        """The epoch's batches (index tensors): in length buckets (sorted within chunks of 50 batches,
        then cut and shuffled), the first `curriculum` epochs fully sorted from the shortest prompts;
        with `pack`, whole theories (a theory's questions together); the staged and positive phases'
        steps replaced by draws from their pools."""
        n, bs = len(self.ids["train"]), self.batch_size
        rng = np.random.default_rng(self.seed * 1000 + epoch)
        perm = rng.permutation(n)
        sort = epoch < self.curriculum  # curriculum: the shortest prompts (smallest theories) first
        if self.pack:
            order = self._order(np.arange(n), rng, chunk=n if sort else None)
        elif sort:
            order = perm[np.argsort(self.lengths[perm], kind="stable")]
        else:
            chunks = [perm[c : c + 50 * bs] for c in range(0, n, 50 * bs)]
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in chunks])
        batches = [torch.from_numpy(order[i : i + bs]) for i in range(0, n, bs)]
        if not sort:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._staged(epoch, batches)

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

    def stage_group(self, step):
        """The largest number of statements let in at this step of the staged phase (None after it):
        the groups in turn, each for an equal share of the first stage_steps steps."""
        if step >= self.stage_steps:
            return None
        return self.groups[step * len(self.groups) // self.stage_steps]

    def _phase(self, step):
        """(largest group let in or None, positive phase?) at this step."""
        return self.stage_group(step), step < self.positive_steps

    def pool(self, step):
        """Training questions a batch of this step (in the staged or positive phase) is drawn from: the
        theories let in by the staged phase, and only the questions without "not" in the positive phase."""
        group, positive = self._phase(step)
        sel = self.pools[group] if group is not None else np.ones(len(self.positive), bool)
        return np.flatnonzero(sel & self.positive if positive else sel)

    def _staged(self, epoch, batches):
        """Batches of the staged and positive phases replaced by seeded draws from their step's pool,
        bucketed by length: up to 50 steps with the same pool draw their questions together, sorted
        by prompt length and cut into batches, in a seeded order."""
        spe = len(batches)
        end = min(spe, max(0, max(self.stage_steps, self.positive_steps) - epoch * spe))
        i = 0
        while i < end:
            step = epoch * spe + i
            key = self._phase(step)
            j = i + 1
            while j < end and j - i < 50 and self._phase(epoch * spe + j) == key:
                j += 1
            pool, n = self.pool(step), j - i
            bs = min(self.positive_batch if key[1] else self.batch_size, len(pool))
            rng = np.random.default_rng([self.seed, step])
            draw = self._draw(pool, n * bs, rng)
            for b, o in enumerate(rng.permutation(n)):
                batches[i + b] = torch.from_numpy(draw[o * bs : (o + 1) * bs])
            i = j
        return batches

    def _draw(self, pool, m, rng):
        """m questions of the pool (seeded), sorted by prompt length: with `pack`, whole theories in a
        seeded order (as many passes over the pool as needed); else drawn without replacement (a
        small pool: batches of batch_size drawn apart)."""
        if self.pack:
            passes = [self._order(pool, rng, chunk=1) for _ in range(-(-m // len(pool)))]
            draw = np.concatenate(passes)[:m]
            return self._order(draw, rng, chunk=len(draw))  # theory by theory, by length
        if m <= len(pool):
            draw = rng.choice(pool, m, replace=False)
        else:  # a small pool (the smallest theories): each batch drawn apart
            bs = min(self.batch_size, len(pool))
            draw = np.concatenate([rng.choice(pool, bs, replace=False) for _ in range(m // bs)])
        return draw[np.argsort(self.lengths[draw], kind="stable")]

    def pad(self, split, idx):
        """(ids, mask) of the questions `idx` right-padded; with `pack`, (PackedPrompts, None): a row per theory."""
        from .capture import pad_batch

        seqs = [self.ids[split][int(i)] for i in idx]
        if self.pack:
            from .packing import pack

            idx = np.asarray(idx, dtype=np.int64)
            lm_from = self.qstart[split][idx] if self.lm_question else None
            # the next-token loss ends at the question's last token: the answer choices "True or False ?"
            # after it would train "." -> "True" and "or" -> "False" whatever the answer
            lm_to = (self.qstart if self.lm_statements else self.qend)[split][idx]
            keys = self.theory[split][idx].tolist()
            recall = self._recall(idx, keys) if self.facts is not None and split == "train" else None
            early = self.qword[split][idx] if self.early_answer and split == "train" else None
            return pack(seqs, keys, self.tok.pad_token_id, lm_from, recall, lm_to, early), None
        return pad_batch(seqs, self.tok.pad_token_id)

    def _recall(self, idx, keys):
        """{theory: (its facts restated in a seeded order, its statements' length)}: the recall
        segments of a packed training batch (the order seeded by the theory and the batch's first
        question, so that a resumed run packs the same rows)."""
        out, is_id = {}, self.tok.convert_tokens_to_ids("is")
        for i, k in zip(idx.tolist(), keys):
            if k not in out:
                facts = self.facts[k]
                order = np.random.default_rng([self.seed, k, int(idx[0])]).permutation(len(facts))
                if self.recall_order == "rotated" and len(facts):  # statements' order from a drawn first fact
                    order = (order[0] + np.arange(len(facts))) % len(facts)
                seg = [facts[o] for o in order]
                if self.recall_order == "reversed":
                    seg = [reverse_fact(f, is_id) for f in seg]
                out[k] = ([t for f in seg for t in f], int(self.qstart["train"][i]))
        return out

    def batch(self, idx):
        """(ids, mask, answer token ids), and the questions' loss weights with prior_balance; with
        `pack`, ids is a PackedPrompts and mask None."""
        ids, mask = self.pad("train", idx)
        if self.weights is None:
            return ids, mask, self.answers["train"][idx]
        return ids, mask, self.answers["train"][idx], self.weights[idx]

    @torch.no_grad()
    def predictions(self, model, split, batch_size=128):
        """Predicted answer index (0 True, 1 False) per question: argmax of the two answer tokens' logits."""
        from .models import last_logits

        model.eval()
        dev = next(model.parameters()).device
        lengths, th = np.array([len(x) for x in self.ids[split]]), self.theory[split]
        if self.pack:  # theories by length, a theory's questions together
            longest = np.zeros(th.max() + 1, dtype=np.int64)
            np.maximum.at(longest, th, lengths)
            order = np.lexsort((th, longest[th]))
        else:
            order = np.argsort(lengths, kind="stable")
        pred = np.empty(len(order), dtype=int)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask = self.pad(split, idx)
            if mask is None:
                ids = ids.to(dev)
                logits = ids.logits(model)[ids.last][:, self.word_ids]
            else:
                logits = last_logits(model, ids.to(dev), mask.to(dev))[:, self.word_ids]
            pred[idx] = logits.argmax(-1).cpu().numpy()
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
