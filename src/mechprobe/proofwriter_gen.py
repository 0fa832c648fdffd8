"""Synthetic ProofWriter theories in the original release's exact format (for runs with no download).

A theory has entities ("The cat", "Bob"), facts "The cat is red." (tripleN) and rules
"If someone is red then they are big." / "If someone is red and kind then they are big."
(ruleN). Forward chaining (rounds of rule application) gives every derivable fact with a
proof of minimal depth. Questions, closed-world (CWA):
  * "E is a."      derivable  -> True,  strategy proof,     QDep = depth of the shortest proof;
                   every well-founded proof is listed, joined by OR (as in the release)
  * "E is not a."  derivable  -> False, strategy inv-proof, the same proof
  * "E is a."      not derivable -> False, CWA failure, QLen ""  (dropped by the paper's filter)
  * "E is not a."  not derivable -> True by negation as failure (NAF; dropped by the filter)
With naf=True some rules have a negated condition, "If someone is not x then they are y." (x an
attribute that no rule concludes, so negation is stratified): it fires for every entity of
which x is not a fact. Proofs through such a condition contain NAF (dropped by the paper's
filter); half of these rules mirror a positive rule with the same conclusion, so negating a
fact a proof uses can re-derive the conclusion (see logic.py).

CLI:  python -m mechprobe.proofwriter_gen --out data/proofwriter/synthetic --max-depth 1
"""

import argparse
import re
from pathlib import Path

import numpy as np

from .cli import run_main, seed_int
from .runs import write_jsonl
from .utils import MechprobeError, get_logger

_FACT_Q = re.compile(r"^(.+) is (?:not )?(\w+)\.$")
ENTITIES = [
    "The cat",
    "The dog",
    "The bear",
    "The mouse",
    "The lion",
    "The rabbit",
    "Bob",
    "Anne",
    "Charlie",
    "Dave",
    "Erin",
    "Fiona",
]
ATTRS = [
    "red",
    "big",
    "kind",
    "cold",
    "round",
    "young",
    "blue",
    "green",
    "rough",
    "nice",
    "quiet",
    "smart",
    "furry",
    "white",
]


def fact_text(e, a, neg=False):
    return f"{e} is {'not ' if neg else ''}{a}."


# How a rule is written. "if" is the generator's default; "mixed" draws, per rule, among every wording
# of the release's attribute theories that can say it (the "all" and adjective forms only for rules
# without a negated condition).
WORDINGS = ("if", "mixed")


def rule_text(conds, concl, form="if"):
    """A rule's sentence: form "if" ("If someone is a and b then they are c."), "something" ("If
    something is a and b then it is c."), "all" ("All a, b people are c.") or "adjectives" ("A, b
    things are c.")."""
    if form == "something":
        return f"If something is {' and '.join(conds)} then it is {concl}."
    if form in ("all", "adjectives") and not any(_neg(c) for c in conds):
        adjs = ", ".join(conds)
        if form == "all":
            return f"All {adjs} people are {concl}."
        return f"{adjs[0].upper() + adjs[1:]} things are {concl}."
    return f"If someone is {' and '.join(conds)} then they are {concl}."


def _forms(rules, wording, rng):
    """{rule id: its form}: all "if", or (wording "mixed") drawn per rule from `rng`."""
    if wording == "if" or rng is None:
        return {r: "if" for r, _, _ in rules}
    return {r: str(rng.choice(["if", "something", "all", "adjectives"])) for r, _, _ in rules}


def _neg(c):
    """The attribute of a negated condition "not x", else None."""
    return c[4:] if c.startswith("not ") else None


def _holds(e, c, known):
    """Condition c ("x" or "not x") of entity e; a negated x is never concluded by a rule."""
    x = _neg(c)
    return (e, x) not in known if x else (e, c) in known


def proof_string(nodes):
    """Serialise proof trees (alternatives joined by OR) in ProofWriter's syntax (see proofwriter.parse_proof)."""

    def prem(n):
        if n[0] == "fact":
            return n[1]
        if n[0] == "naf":
            return "NAF"
        return "((" + " ".join(prem(p) for p in n[2]) + f") -> {n[1]})"

    nodes = nodes if isinstance(nodes, list) else [nodes]
    return "[" + " OR ".join(f"({prem(n)})" for n in nodes) + "]"


def all_proofs(fa, facts, rules, known, visiting=frozenset(), cap=4):
    """Every well-founded proof of fact `fa` (up to `cap`): a triple, or a rule whose conditions
    have proofs that do not go through `fa` itself."""
    from itertools import product

    e, a = fa
    out = [("fact", facts[fa])] if fa in facts else []
    for rid, conds, concl in rules:
        if concl != a or any(not _holds(e, c, known) or (e, c) in visiting or (e, c) == fa for c in conds):
            continue
        subs = [
            [("naf", _neg(c))] if _neg(c) else all_proofs((e, c), facts, rules, known, visiting | {fa}, cap)
            for c in conds
        ]
        for combo in product(*subs):
            out.append(("rule", rid, list(combo), None))
            if len(out) >= cap:
                return out
    return out


def closure(facts, rules, entities):
    """Forward chaining. facts {(e, a): tripleId}; rules [(ruleId, conds, concl)].

    Returns {(e, a): (depth, proof node)} with minimal depth per derivable fact.
    """
    known = {fa: (0, ("fact", tid)) for fa, tid in facts.items()}
    changed = True
    while changed:
        changed = False
        new = {}
        for rid, conds, concl in rules:
            for e in entities:
                if all(_holds(e, c, known) for c in conds) and (e, concl) not in known and (e, concl) not in new:
                    prem = [known[(e, c)] if not _neg(c) else (0, ("naf", _neg(c))) for c in conds]
                    new[(e, concl)] = (1 + max(d for d, _ in prem), ("rule", rid, [p for _, p in prem], None))
        if new:
            known.update(new)
            changed = True
    return known


def tree_size(node):
    return 1 if node[0] in ("fact", "naf") else 1 + sum(tree_size(p) for p in node[2])


def _add_naf(rng, rules, attrs):
    """Give about half the rules a negated condition on an attribute no rule concludes (see the docstring)."""
    base = [a for a in attrs if a not in {c for _, _, c in rules}]
    for j, (rid, conds, concl) in enumerate(rules):
        if not base or rng.random() < 0.5:
            continue
        mirror = [c for c in conds if c in base]
        if mirror and rng.random() < 0.5:  # "if x then y" becomes also "if not x then y" (a new rule replaces it)
            rules[j] = (rid, [f"not {mirror[0]}"], concl)
            rules.append((f"rule{len(rules) + 1}", conds, concl))
        else:
            x = str(rng.choice([a for a in base if a != concl and a not in conds] or base))
            rules[j] = (rid, conds[: int(rng.integers(0, len(conds) + 1))] + [f"not {x}"], concl)
    return rules


def _rep(e, a):
    """The release's representation of "e is a" ("e is not x" for a = "not x")."""
    neg = a.startswith("not ")
    return f'("{e}" "is" "{a[4:] if neg else a}" "{"-" if neg else "+"}")'


def make_theory(
    rng,
    tid,
    n_statements,
    max_depth,
    n_questions=8,
    naf=False,
    wording="if",
    wrng=None,
):
    """One theory of n_statements (facts and rules) with n_questions questions in the release's format,
    or None when its deepest derivation exceeds max_depth or it has no question (the caller draws again).
    wording "mixed": each rule's sentence in a form drawn with `wrng` (rule_text),
    the same theories otherwise."""
    ents, attrs, facts, rules = _draw_statements(rng, n_statements, naf)
    known = closure(facts, rules, ents)
    if max(d for d, _ in known.values()) > max_depth:
        return None
    th = _theory_record(tid, max_depth, facts, rules, _forms(rules, wording, wrng))
    derived, cands = [], []
    for (e, a), (d, node) in known.items():
        for c in ((fact_text(e, a), True, "proof", d, node), (fact_text(e, a, True), False, "inv-proof", d, node)):
            (derived if d > 0 else cands).append(c)
    for e in ents:
        for a in attrs:
            if (e, a) not in known:
                cands.append((fact_text(e, a), False, "random", None, None))
                cands.append((fact_text(e, a, True), True, "inv-random", None, None))
    chosen = _choose_questions(rng, derived, cands, n_questions)
    if not chosen:
        return None
    th["questions"] = {f"Q{j + 1}": _question(*c, facts, rules, known) for j, c in enumerate(chosen)}
    return th


def _draw_statements(rng, n_statements, naf):
    """(entities, attributes, facts {(entity, attribute): triple id}, rules [(id, conditions, conclusion)])."""
    n_rules = max(1, n_statements // 3) if n_statements > 1 else 0
    n_facts = n_statements - n_rules
    n_attr = min(len(ATTRS), max(4, n_statements // 2 + 2))
    n_ent = max(int(rng.integers(1, 4)), -(-(n_facts + 2) // n_attr))
    ents = list(rng.choice(ENTITIES, n_ent, replace=False))
    attrs = list(rng.choice(ATTRS, n_attr, replace=False))
    pairs = [(e, a) for e in ents for a in attrs]
    pick = rng.choice(len(pairs), n_facts, replace=False)
    facts = {pairs[i]: f"triple{j + 1}" for j, i in enumerate(pick)}
    rules = []
    for j in range(n_rules):
        nc = int(rng.integers(1, 3))
        e = ents[int(rng.integers(len(ents)))]
        have = [a for (x, a) in facts if x == e]
        # conditions mostly drawn from what one entity has, so that rules fire
        conds = (
            list(rng.choice(have, min(nc, len(have)), replace=False))
            if have and rng.random() < 0.7
            else list(rng.choice(attrs, nc, replace=False))
        )
        rest = [a for a in attrs if a not in conds]
        rules.append((f"rule{j + 1}", conds, str(rng.choice(rest))))
    if naf:
        rules = _add_naf(rng, rules, attrs)
    return ents, attrs, facts, rules


def _theory_record(tid, max_depth, facts, rules, forms=None):
    """The theory's fields of the release's format (id, triples, rules, theory text), without questions;
    forms: {rule id: rule_text form} (default "if")."""
    forms = forms or {}
    th = {
        "id": f"Synth-CWA-D{max_depth}-{tid}",
        "maxD": max_depth,
        "NFact": len(facts),
        "NRule": len(rules),
        "triples": {
            t: {"text": fact_text(*fa), "representation": _rep(fa[0].lower(), fa[1])} for fa, t in facts.items()
        },
        "rules": {
            r: {
                "text": rule_text(c, k, forms.get(r, "if")),
                "representation": f"(({' '.join(_rep('someone', str(x)) for x in c)}) -> {_rep('someone', str(k))})",
            }
            for r, c, k in rules
        },
    }
    th["theory"] = " ".join([v["text"] for v in th["triples"].values()] + [v["text"] for v in th["rules"].values()])
    return th


def _choose_questions(rng, derived, cands, n_questions):
    """The questions asked: candidates (text, answer, strategy, depth, proof node); derived need a rule."""
    # up to half of the questions need a rule (depth >= 1), the rest are drawn from everything else
    chosen = [derived[i] for i in rng.permutation(len(derived))[: n_questions // 2]]
    return chosen + [cands[i] for i in rng.permutation(len(cands))[: n_questions - len(chosen)]]


def _question(text, ans, strat, d, node, facts, rules, known):
    """A question of the release's format: its proofs (all of them, the shortest first, joined by OR), or
    the NAF / CWA-failure record of a statement that is not derived."""
    if node is not None:
        m = _FACT_Q.match(text)
        alts = all_proofs((m.group(1), m.group(2)), facts, rules, known)
        alts = [node] + [x for x in alts if x != node]
        return {
            "question": text,
            "answer": ans,
            "QDep": d,
            "QLen": tree_size(node),
            "strategy": strat,
            "proofs": proof_string(alts),
        }
    if ans:
        return {
            "question": text,
            "answer": ans,
            "QDep": 0,
            "QLen": 1,
            "strategy": strat,
            "proofs": f"[(({text[:-1]}) NAF)]",
        }
    return {
        "question": text,
        "answer": ans,
        "QDep": 0,
        "QLen": "",
        "strategy": strat,
        "proofs": f"[@0: {text}[CWA. Example of deepest failure = (FAIL)]]",
    }


def generate(
    out,
    max_depth=1,
    sizes=(400, 100, 100),
    groups=(2, 4, 8, 12, 16, 20, 24),
    seed=0,
    n_questions=8,
    naf=False,
    wording="if",
    unique=False,
):
    """Write `<out>/CWA/depth-<max_depth>/meta-{train,dev,test}.jsonl`; returns the folder.
    unique: no theory text is drawn twice, within or across the splits (a drawn duplicate is drawn
    again), so that no dev or test prompt occurs in train word for word.
    wording: "if" (every rule "If someone is ... then they are ...") or "mixed" (each rule in one of the
    release's wordings, drawn from its own stream: the same theories and questions)."""
    if wording not in WORDINGS:
        raise MechprobeError(f"wording {wording!r}: expected one of {', '.join(WORDINGS)}")
    rng = np.random.default_rng(seed)
    wrng = np.random.default_rng([seed, 2])
    folder = Path(out) / "CWA" / f"depth-{max_depth}"
    seen = set()
    for split, n in zip(("train", "dev", "test"), sizes):
        rows, tid = [], 0
        while len(rows) < n:
            g = int(groups[len(rows) % len(groups)])
            th = make_theory(rng, f"{split}{tid}", g, max_depth, n_questions, naf, wording, wrng)
            tid += 1
            if th is not None and not (unique and th["theory"] in seen):
                seen.add(th["theory"])
                rows.append(th)
            elif tid > 100 * n + 1000:
                raise MechprobeError(f"{split}: {len(rows)} of {n} distinct theories found in {tid} draws")
        write_jsonl(folder / f"meta-{split}.jsonl", rows)
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Generate synthetic ProofWriter theories in the original CWA meta-*.jsonl format."
    )
    p.add_argument("--out", required=True)
    p.add_argument("--max-depth", type=int, default=1)
    p.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=[400, 100, 100],
        metavar=("TRAIN", "DEV", "TEST"),
        help="theories per split",
    )
    p.add_argument(
        "--groups", type=int, nargs="+", default=[2, 4, 8, 12, 16, 20, 24], help="numbers of statements per theory"
    )
    p.add_argument("--questions", type=int, default=8, help="questions per theory")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--naf", action="store_true", help="rules with negated conditions (negation as failure)")
    p.add_argument(
        "--wording",
        default="if",
        choices=WORDINGS,
        help="if: every rule 'If someone is ... then they are ...'; mixed: each rule in one of the release's wordings",
    )
    a = p.parse_args(argv)
    folder = generate(
        a.out, a.max_depth, tuple(a.sizes), tuple(a.groups), a.seed, a.questions, a.naf, wording=a.wording
    )
    get_logger().info("wrote %s", folder)


if __name__ == "__main__":
    run_main(main)
