"""ARC reasoning trees: EntailmentBank (task_1 / task_2) and STREET's ARC files.

Statements are the premise sentences of the context. A proof is a set of steps
"p_1 & ... & p_m -> c" (p: sentences or intermediate conclusions intN; c: intN or the
hypothesis). Levels: level(sentence) = 0, level(c) = 1 + max_i level(p_i). A sentence used
as a premise of step c has step = level(c) - 1: sentences consumed in a first inference are
step 0, those entering the final inference (that yields the hypothesis) are the last step.
All premises of a multi-premise step share its step. A sentence used in several steps keeps
the largest (its last use), as for ProofWriter. Unused sentences (task_2 distractors) are not
useful, step -1.
"""

import re
from pathlib import Path

from .utils import MechprobeError, get_logger, iter_jsonl

log = get_logger()

_STEP = re.compile(r"^\s*(.+?)\s*->\s*(hypothesis|int\d+)\s*(?::.*)?$", re.S)


def parse_steps(proof):
    """EntailmentBank `proof` string -> list of (premises, conclusion)."""
    steps = []
    for part in [p for p in proof.split(";") if p.strip()]:
        m = _STEP.match(part)
        if not m:
            raise ValueError(f"step {part.strip()!r} is not 'a & b -> intN: text' or '... -> hypothesis'")
        prem = [x.strip() for x in m.group(1).split("&")]
        if not all(re.fullmatch(r"sent\d+|int\d+", p) for p in prem):
            raise ValueError(f"step {part.strip()!r}: premises must be sentN or intN")
        steps.append((prem, m.group(2)))
    if not steps:
        raise ValueError("empty proof")
    return steps


def steps_from_edges(edges, sentences, root=None):
    """Sentence -> step from inference edges [(premises, conclusion)]; checks the graph.

    With a root, only the steps that lead to it count (a dangling step is an anomaly of the
    data: its sentences are not useful). Returns (step, level of the root) and raises
    ValueError when a premise is neither a sentence nor a concluded node, or on a cycle.
    """
    concl = {c: p for p, c in edges}
    level = {s: 0 for s in sentences}
    visiting = set()

    def lev(n):
        if n in level:
            return level[n]
        if n not in concl:
            raise ValueError(f"premise {n} is neither a context sentence nor an intermediate conclusion")
        if n in visiting:
            raise ValueError(f"cycle through {n}")
        visiting.add(n)
        level[n] = 1 + max(lev(p) for p in concl[n])
        visiting.discard(n)
        return level[n]

    for _, c in edges:
        lev(c)
    if root is not None:
        if root not in concl:
            raise ValueError(f"no step concludes {root}")
        keep, todo = set(), [root]
        while todo:  # the steps the root depends on
            n = todo.pop()
            if n in concl and n not in keep:
                keep.add(n)
                todo.extend(concl[n])
        edges = [(p, c) for p, c in edges if c in keep]
    step = {}
    for prem, c in edges:
        for p in prem:
            if p in sentences:
                step[p] = max(step.get(p, 0), level[c] - 1)
    return step, (level[root] if root is not None else max(level.values()))


def _num(k):
    """The number in a sentence or unit id (sent12 -> 12); a clear error when it has none."""
    m = re.search(r"\d+", str(k))
    if m is None:
        raise MechprobeError(f"id {k!r}: expected a name with a number (sent1, int2, 3)")
    return int(m.group())


def read_entailment_bank(path, max_depth=None, report=True):
    """Items from an EntailmentBank task_1/task_2 JSONL file (depth = depth_of_proof)."""
    path = Path(path)
    items, seen, dups, mismatch, dangling = [], set(), [], [], []
    n_records = 0
    for line, r in iter_jsonl(path):
        n_records += 1
        qid, sents, edges, step, level, depth = _entailment_record(r, f"{path}:{line}")
        if qid in seen:
            dups.append(qid)
        seen.add(qid)
        if depth != level:
            mismatch.append(f"{qid} ({depth} vs {level})")
        if len(step) < len({p for pr, _ in edges for p in pr if p in sents}):
            dangling.append(qid)
        if max_depth is not None and depth > max_depth:
            continue
        sids = sorted(sents, key=_num)
        items.append(
            {
                "id": f"{qid}@{line}",
                "statements": [sents[s] for s in sids],
                "statement_ids": sids,
                "question": r["question"],
                "answer": r["answer"],
                "useful": [s in step for s in sids],
                "step": [step.get(s, -1) for s in sids],
                "depth": depth,
                "group": len(sids),
                "proof": r["proof"],
                "line": line,
            }
        )
    if report:
        _report_entailment(path, dups, dangling, mismatch)
    if not n_records:
        raise MechprobeError(f"{path}: the file holds no record; expected EntailmentBank JSON lines")
    if not items:
        raise MechprobeError(f"{path}: no item left (max depth {max_depth})")
    return items


def _entailment_record(r, where):
    """(id, sentences {sentN: text}, proof edges, step per used sentence, depth of the step graph,
    depth_of_proof) of one EntailmentBank record; a one-line error naming `where` when malformed."""
    try:
        if not isinstance(r, dict):
            raise TypeError(f"expected a JSON object, got {type(r).__name__}")
        for key in ("id", "question", "answer", "proof", "meta"):
            if key not in r:
                raise KeyError(key)
        sents = r["meta"]["triples"]
        if not isinstance(sents, dict) or not all(isinstance(v, str) for v in sents.values()):
            raise TypeError("field meta.triples must be an object {sentN: text}")
        if not isinstance(r["question"], str) or not isinstance(r["answer"], str):
            raise TypeError("fields question and answer must be strings")
        edges = parse_steps(r["proof"])
        step, level = steps_from_edges(edges, set(sents), "hypothesis")
        depth = r.get("depth_of_proof", level)
        if isinstance(depth, bool) or not isinstance(depth, int) and not (isinstance(depth, str) and depth.isdigit()):
            raise TypeError(f"field depth_of_proof must be an integer, got {depth!r}")
    except KeyError as e:
        raise MechprobeError(
            f"{where}: missing field {e}; expected EntailmentBank fields id, question, answer, proof, meta.triples"
        ) from None
    except (TypeError, AttributeError) as e:
        raise MechprobeError(f"{where}: {e}") from None
    except ValueError as e:
        raise MechprobeError(f"{where}: question {r.get('id', '?')}: {e}") from None
    return r["id"], sents, edges, step, level, int(depth)


def _report_entailment(path, dups, dangling, mismatch):
    """Log what was kept although odd: duplicate ids, dangling proof steps, depth mismatches."""
    if dups:
        log.info("%s: duplicate question ids (kept, told apart by line): %s", path, ", ".join(dups))
    if dangling:
        log.info(
            "%s: records with proof steps that do not lead to the hypothesis (their sentences count as not useful): %s",
            path,
            ", ".join(dangling),
        )
    if mismatch:
        log.info(
            "%s: %d records whose depth_of_proof differs from the depth of their step graph (depth_of_proof kept): %s",
            path,
            len(mismatch),
            ", ".join(mismatch[:5]) + (" ..." if len(mismatch) > 5 else ""),
        )


def read_street(path, max_depth=None):
    """Items from STREET's reasoning_annotated_*.jsonl (ARC): premises = TLUs that no edge concludes,
    minus the one that states the answer; the tree comes from reasoning_graph_edges.

    The answer unit ("The answer is A) ...") ends every tree, but the edge into it restates the
    last conclusion as an option letter: it is not an inference, so it does not count as a level
    (as in the original, which dropped edges into the answer unit). A tree "1 & 2 -> 4 -> answer"
    has depth 1. Steps are unchanged: a premise is used at level(conclusion) - 1, so a premise
    that enters the answer unit directly is used at the last step."""
    path = Path(path)
    items, n_records = [], 0
    for line, r in iter_jsonl(path):
        n_records += 1
        tlus, premises, step, depth, question, answer, options = _street_record(r, f"{path}:{line}")
        if max_depth is not None and depth > max_depth:
            continue
        items.append(
            {
                "id": f"{r.get('id', line)}",
                "statements": [tlus[k] for k in premises],
                "statement_ids": premises,
                "question": question,
                "answer": answer,
                "options": options,
                "useful": [k in step for k in premises],
                "step": [step.get(k, -1) for k in premises],
                "depth": depth,
                "group": len(premises),
                "line": line,
            }
        )
    if not n_records:
        raise MechprobeError(f"{path}: the file holds no record; expected STREET JSON lines")
    if not items:
        raise MechprobeError(f"{path}: no item left (max depth {max_depth})")
    return items


def _street_units(r):
    """The textual logical units {id: text} of a STREET record, its edges' shape checked (TypeError)."""
    tlus = {str(k): v for k, v in r["textual_logical_units"].items()}
    bad = [k for k, v in tlus.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"textual logical unit {bad[0]!r} is {type(tlus[bad[0]]).__name__}, expected text")
    edges = r.get("reasoning_graph_edges")
    if not isinstance(edges, list) or not all(isinstance(e, dict) for e in edges):
        raise TypeError("'reasoning_graph_edges' must be a list of {antecedents, consequent} objects")
    return tlus


def _street_record(r, where):
    """(units {id: text}, premises, step per used premise, depth, question, answer, options) of one
    STREET record (see read_street); a one-line error naming `where` when malformed."""
    if not isinstance(r, dict):
        raise MechprobeError(f"{where}: expected a JSON object, got {type(r).__name__}")
    try:
        if not isinstance(r.get("textual_logical_units"), dict):
            raise TypeError(
                f"'textual_logical_units' must be an object {{id: text}}, got "
                f"{type(r.get('textual_logical_units')).__name__}"
            )
        tlus = _street_units(r)
        edges = [([str(a) for a in e["antecedents"]], str(e["consequent"])) for e in r["reasoning_graph_edges"]]
        if isinstance(r["answer"], list) and not r["answer"]:
            raise TypeError("'answer' is an empty list, expected the answer text (or a list holding it)")
        answer = r["answer"][0] if isinstance(r["answer"], list) else r["answer"]
        question, options = r["question"], r.get("options", [])
    except TypeError as e:
        raise MechprobeError(f"{where}: {e}") from None
    except (KeyError, IndexError, AttributeError) as e:
        raise MechprobeError(
            f"{where}: missing or malformed field {e}; expected context, textual_logical_units, question, "
            "answer, reasoning_graph_edges"
        ) from None
    answer_tlu = [k for k, v in tlus.items() if "the answer is" in v.lower()]
    concluded = {c for _, c in edges}
    premises = sorted(
        [k for k in tlus if k not in concluded and k not in answer_tlu],
        key=lambda k: int(k) if k.isdigit() else _num(k),
    )
    root = answer_tlu[0] if answer_tlu and answer_tlu[0] in concluded else (edges[-1][1] if edges else None)
    try:
        if not edges:
            raise ValueError("no reasoning_graph_edges")
        for p, _ in edges:
            for x in p:
                if x not in tlus:
                    raise ValueError(f"edge premise {x} is not a textual logical unit")
        step, depth = steps_from_edges(edges, set(premises), root)
        if root in answer_tlu:  # the unit "The answer is ..." restates the conclusion: no inference of its own
            depth -= 1
    except ValueError as e:
        raise MechprobeError(f"{where}: {e}") from None
    return tlus, premises, step, depth, question, answer, options
