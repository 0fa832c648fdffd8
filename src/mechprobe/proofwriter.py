"""ProofWriter: the original release's reader, its proof strings as trees, and the processed variant.

Original format (V2020.12.3, `{CWA,OWA}/depth-N/meta-{train,dev,test}.jsonl`): one theory a line
with `triples` {tripleN: {text}}, `rules` {ruleN: {text}}, `questions` {QN: {question, answer,
QDep, QLen, strategy, proofs}}.

Proof grammar (as written in `proofs`):
    proofs  := "[" "(" premise ")" ( "OR" "(" premise ")" )* "]"
    premise := ID | "(" "(" premise+ ")" "->" rule ")"
    rule    := ID | "(" ID "%" ID ")"          (rule with its intermediate conclusion intN)
e.g. "[(((triple1) -> rule2))]", "[(((((triple1) -> rule1) triple2) -> rule3))]".

Steps: a fact used as a premise is a leaf, step 0; a rule applied to premises has step
1 + max(step of its premises' roots). So leaves are step 0 and the rule that yields the answer
is the last step. A statement used at several steps keeps the largest (its last use).
"""

import json
import re
from pathlib import Path

from .utils import MechprobeError, get_logger, iter_jsonl

log = get_logger()

_TOKEN = re.compile(r"\(|\)|\[|\]|->|%|[A-Za-z_][A-Za-z_0-9]*|@\d+:|\S")


class ProofSyntaxError(ValueError):
    pass


def _tokens(s):
    return _TOKEN.findall(s)


def parse_proof(proof):
    """Parse a `proofs` string into a list of alternative trees.

    A tree node is ("fact", id) or ("rule", rule_id, [premises], intermediate_or_None).
    """
    return _ProofParser(proof).parse()


class _ProofParser:
    """Recursive descent over the tokens of one `proofs` string:
    proofs := "[" "(" premise ")" ("OR" "(" premise ")")* "]";
    premise := id | "(" "(" premise+ ")" "->" (rule_id | "(" rule_id "%" intermediate_id ")") ")"."""

    def __init__(self, proof):
        self.proof, self.toks, self.pos = proof, _tokens(proof), 0

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def eat(self, expect=None):
        t = self.peek()
        if t is None or (expect is not None and t != expect):
            raise ProofSyntaxError(f"expected {expect or 'a token'} at token {self.pos} ({t!r}) in {self.proof!r}")
        self.pos += 1
        return t

    def ident(self):
        t = self.eat()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", t) or t in ("OR", "NAF"):
            raise ProofSyntaxError(f"expected a statement id at token {self.pos - 1} ({t!r}) in {self.proof!r}")
        return t

    def premise(self):
        if self.peek() != "(":
            return ("fact", self.ident())
        self.eat("(")
        self.eat("(")
        prem = [self.premise()]
        while self.peek() != ")":
            prem.append(self.premise())
        self.eat(")")
        self.eat("->")
        if self.peek() == "(":
            self.eat("(")
            rule = self.ident()
            self.eat("%")
            inter = self.ident()
            self.eat(")")
        else:
            rule, inter = self.ident(), None
        self.eat(")")
        return ("rule", rule, prem, inter)

    def parse(self):
        if "NAF" in self.toks:
            raise ProofSyntaxError(f"negation as failure (NAF) is not supported: {self.proof!r}")
        if any(t.startswith("@") for t in self.toks) or "FAIL" in self.toks:
            raise ProofSyntaxError(f"a closed-world failure, not a proof: {self.proof!r}")
        self.eat("[")
        alts = []
        while True:
            self.eat("(")
            alts.append(self.premise())
            self.eat(")")
            if self.peek() != "OR":
                break
            self.eat("OR")
        self.eat("]")
        if self.pos != len(self.toks):
            raise ProofSyntaxError(f"unexpected {self.toks[self.pos]!r} after the proof in {self.proof!r}")
        return alts


def tree_steps(node):
    """Map statement id -> step for one proof tree (see the module docstring); also returns edges."""
    steps, edges = {}, []

    def walk(n):
        if n[0] == "fact":
            steps[n[1]] = max(steps.get(n[1], 0), 0)
            return 0, n[1]
        _, rule, prem, _ = n
        sub = [walk(p) for p in prem]
        s = 1 + max(x for x, _ in sub)
        steps[rule] = max(steps.get(rule, 0), s)
        edges.extend((src, rule) for _, src in sub)
        return s, rule

    walk(node)
    return steps, edges


def theory_statements(theory):
    """Statement ids and texts in theory order: triples then rules, each by number."""

    def num(k):
        m = re.search(r"(\d+)$", k)
        return int(m.group(1)) if m else 0

    ids = sorted(theory.get("triples", {}), key=num) + sorted(theory.get("rules", {}), key=num)
    texts = [(theory["triples"].get(i) or theory["rules"].get(i))["text"] for i in ids]
    return ids, texts


def item_from_question(theory, qid, q, where):
    """One probe item from a theory and a question that has a single proof."""
    sids, texts = theory_statements(theory)
    alts = parse_proof(q["proofs"])
    if len(alts) != 1:
        raise ProofSyntaxError(f"{len(alts)} alternative proofs (OR)")
    steps, edges = tree_steps(alts[0])
    unknown = [s for s in steps if s not in sids]
    if unknown:
        raise MechprobeError(f"{where}: question {qid}: proof names {unknown}, which are not statements of the theory")
    ans = q["answer"]
    if ans not in (True, False, "Unknown") or isinstance(ans, (int, float)) and not isinstance(ans, bool):
        raise ValueError(f'answer {ans!r}: expected true, false or "Unknown"')
    word = {True: "True", False: "False"}.get(ans, str(ans))
    return {
        "id": f"{theory.get('id', '?')}/{qid}",
        "statements": texts,
        "statement_ids": sids,
        "question": q["question"],
        "answer": word,
        "useful": [s in steps for s in sids],
        "step": [steps.get(s, -1) for s in sids],
        "depth": int(q["QDep"]),
        "group": len(sids),
        "proof": q["proofs"],
        "edges": edges,
    }


def read_meta(paths, depths=(0, 1), max_per_group=1024, skip_bad=False, allow_or=False, groups=None):
    """Read one or several meta-*.jsonl files (e.g. every depth-N folder of a split) with the
    paper's filtering.

    Kept: questions with a non-empty QLen, no NAF, a single proof (no OR), QDep in `depths`;
    at most `max_per_group` per (number of statements, question depth) over all the files
    (and only the `groups` listed, if any). Bad lines / questions raise an error naming file,
    line and question id, or with skip_bad=True are skipped and counted in the log.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    items, counts, skipped = [], {}, {}

    def skip(why):
        skipped[why] = skipped.get(why, 0) + 1

    for path in paths:
        for line, th in iter_jsonl(path, (lambda line, msg: skip("malformed line")) if skip_bad else None):
            where = f"{path}:{line}"
            problem = _theory_problem(th)
            if problem:
                if skip_bad:
                    skip("malformed theory")
                    continue
                raise MechprobeError(f"{where}: {problem}")
            for qid, q in th["questions"].items():
                it = _question_item(th, qid, q, where, depths, allow_or, skip if skip_bad else None, skip)
                if it is None:
                    continue
                it["line"], it["file"] = line, str(path)
                g = (it["group"], it["depth"])
                if groups and it["group"] not in groups:
                    continue
                if counts.get(g, 0) >= max_per_group:
                    continue
                counts[g] = counts.get(g, 0) + 1
                items.append(it)
    names = ", ".join(str(p) for p in paths)
    if skipped:
        log.info("%s: skipped %s", names, ", ".join(f"{v} ({k})" for k, v in skipped.items()))
    if not items:
        raise MechprobeError(
            f"{names}: no question left after filtering (depths {list(depths)}, groups {groups or 'all'})"
        )
    return items


def _question_item(th, qid, q, where, depths, allow_or, on_bad, count):
    """The item of question qid of theory th, or None when the paper's filter drops it (counted with
    count(why)) or when it is malformed and on_bad is given (on_bad("bad question")); a malformed
    question without on_bad raises an error naming `where` and the question."""
    try:
        if not isinstance(q, dict):
            raise ValueError(f"expected an object with question, answer, QDep, QLen, proofs; got {type(q).__name__}")
        if q.get("QLen", "") in ("", None) or "NAF" in q.get("proofs", ""):
            count("no proof / NAF")
            return None
        if " OR " in q["proofs"] and not allow_or:
            count("OR proof")
            return None
        if int(q["QDep"]) not in depths:
            return None
        return item_from_question(th, qid, q, where)
    except (ProofSyntaxError, KeyError, ValueError, TypeError, MechprobeError) as e:
        if on_bad is not None:
            on_bad("bad question")
            return None
        if isinstance(e, MechprobeError):
            raise
        what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise MechprobeError(f"{where}: question {qid}: {what}") from None


def _theory_problem(th):
    """Why a theory line is malformed, or None."""
    if not isinstance(th, dict):
        return f"expected a ProofWriter theory object (triples, rules, questions), got {type(th).__name__}"
    for key in ("triples", "rules", "questions"):
        if key not in th:
            return f"missing field '{key}'; expected a ProofWriter theory (triples, rules, questions)"
        if not isinstance(th[key], dict):
            return f"field '{key}' must be an object keyed by id, got {type(th[key]).__name__}"
    return None


def find_metas(data_dir, split, setting="CWA", depth=None):
    """Every `<data_dir>/<setting>/depth-N/meta-<split>.jsonl`, by N (only N = `depth` when given).

    The release's depth-N folders hold different theories (N is the theories' maximum depth);
    questions of a given QDep appear in every folder whose N is at least that depth, and the
    original pooled them.
    """
    base = Path(data_dir) / setting
    if not base.is_dir():
        raise MechprobeError(
            f"{data_dir}: no {setting}/ folder; expected the ProofWriter layout {setting}/depth-N/meta-{split}.jsonl"
        )
    found = []
    for f in base.glob(f"depth-*/meta-{split}.jsonl"):
        m = re.fullmatch(r"depth-(\d+)", f.parent.name)
        if m and (depth is None or int(m.group(1)) == depth):
            found.append((int(m.group(1)), f))
    if not found:
        raise MechprobeError(f"{base}: no depth-{depth if depth is not None else 'N'}/meta-{split}.jsonl found")
    return [f for _, f in sorted(found)]


def statement_type(text):
    """A statement's surface type for the control task (probing.selectivity): its attribute word, the
    last word ("The cat is red." -> "red"; "If someone is big then they are red." -> "red")."""
    words = re.findall(r"[A-Za-z]+", text)
    return words[-1].lower() if words else ""


def _release_files(path, setting, split, depth_folder, depths, generate, seed, naf):
    """(meta-<split>.jsonl files, the matching meta-train.jsonl files) of a ProofWriter folder, after
    generating synthetic theories into an empty one when `generate`."""
    if path.exists() and not path.is_dir():
        raise MechprobeError(f"{path}: is a file; expected a ProofWriter folder, a meta-*.jsonl or Logic-LLM's .json")
    from .runs import data_lock

    with data_lock(path):  # a second run generating the same folder waits for the first
        if not (path / setting).is_dir():
            if not generate:
                from .downloads import check_present

                check_present(path)
                raise MechprobeError(
                    f"{path}: no {setting}/depth-N/ folder; point data at a ProofWriter release, or set generate=True "
                    "to write synthetic theories there"
                )
            other = sorted(f.name for f in path.iterdir() if not f.name.startswith(".")) if path.exists() else []
            if other:
                raise MechprobeError(
                    f"{path}: holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''} but no {setting}/depth-N/ "
                    "folder; synthetic theories are generated only into a new or empty folder: choose another data"
                )
            from .proofwriter_gen import generate as gen

            log.info(
                "%s holds no ProofWriter data: generating synthetic theories (max depth %d%s)",
                path,
                max(depths),
                ", NAF rules" if naf else "",
            )
            gen(path, max(depths), seed=seed, naf=naf)
    metas = find_metas(path, split, setting, depth_folder)
    trains = [t for t in (m.with_name("meta-train.jsonl") for m in metas if m.name != "meta-train.jsonl") if t.exists()]
    return metas, trains


def load_items(
    data,
    setting="CWA",
    split="test",
    depth_folder=None,
    depths=(0, 1),
    max_per_group=1024,
    skip_bad=False,
    groups=None,
    generate=False,
    seed=0,
    naf=False,
    pool=True,
):
    """(items, demonstration pool, answer words, source) from a ProofWriter folder (every
    `<setting>/depth-N/meta-<split>.jsonl`, or only depth-`depth_folder`), one meta-*.jsonl, or
    Logic-LLM's processed .json (accuracy only). With generate=True an empty folder first gets
    synthetic theories (proofwriter_gen). The pool comes from the matching meta-train.jsonl files
    (pool=False: not read, an empty pool, for runs without demonstrations)."""
    path = Path(data)
    if path.suffix == ".json":
        items = read_logic_llm(path)
        words = ["True", "False", "Unknown"] if any(it["answer"] == "Unknown" for it in items) else ["True", "False"]
        return items, items, words, str(path)
    if path.suffix == ".jsonl":
        metas, trains = [path], []
    else:
        metas, trains = _release_files(path, setting, split, depth_folder, depths, generate, seed, naf)
    items = read_meta(metas, tuple(depths), max_per_group, skip_bad, groups=groups)
    log.info("read %d questions from %s", len(items), ", ".join(str(m) for m in metas))
    if not pool:
        return items, [], ["True", "False"], ", ".join(str(m) for m in metas)
    pool = read_meta(trains, tuple(depths), max_per_group, True, groups=groups) if trains else items
    return items, pool, ["True", "False"], ", ".join(str(m) for m in metas)


# ------------------------------------------------------------- processed variant (no proofs)

_LL_ANSWER = {"A": "True", "B": "False", "C": "Unknown"}
_SENT = re.compile(r"[^.!?]+[.!?]")


def read_logic_llm(path):
    """Logic-LLM's processed ProofWriter (a JSON array; no proofs): items for in-context accuracy only."""
    path = Path(path)
    if not path.exists():
        raise MechprobeError(f"{path}: file not found")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise MechprobeError(f"{path}: byte {e.start}: not UTF-8 text; expected a JSON array of questions") from None
    except json.JSONDecodeError as e:
        raise MechprobeError(
            f"{path}: line {e.lineno}: not valid JSON ({e.msg}); expected a JSON array of questions"
        ) from None
    if not isinstance(rows, list):
        raise MechprobeError(f"{path}: expected a JSON array of questions")
    items = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise MechprobeError(f"{path}: item {i}: expected an object with id, context, question, answer")
        for key in ("id", "context", "question", "answer"):
            if key not in r:
                raise MechprobeError(f"{path}: item {i}: missing field '{key}'")
        for key in ("context", "question"):
            if not isinstance(r[key], str):
                raise MechprobeError(f"{path}: item {i}: field '{key}' must be a string, got {type(r[key]).__name__}")
        if r["answer"] not in _LL_ANSWER:
            raise MechprobeError(f"{path}: item {r['id']}: answer {r['answer']!r}, expected A, B or C")
        q = r["question"].split("?", 1)[-1].strip() if "?" in r["question"] else r["question"]
        sents = [s.strip() for s in _SENT.findall(r["context"])]
        items.append(
            {
                "id": r["id"],
                "statements": sents,
                "question": q,
                "answer": _LL_ANSWER[r["answer"]],
                "useful": None,
                "step": None,
                "depth": None,
                "group": len(sents),
            }
        )
    return items
