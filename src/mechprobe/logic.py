"""A solver for ProofWriter's attribute theories, to derive gold answers after a corruption.

Statements (texts, as in the release's attribute theories and the generator):
    fact:  "<E> is [not] <a>."
    rule, every wording of the release's attribute theories:
           "If someone|something is [not] <a1> [and [not] <a2> ...] then they are|it is [not] <c>."
           "All <a1>[, <a2> ...] people|things are [not] <c>."
           "<A1>[, <a2> ...] people|things are [not] <c>."        ("Smart, blue people are green.")
           "If <E> is [not] <a1> [and <E> is [not] <a2> ...] then <E> is [not] <c>."  (one entity's rule)
    "That <statement> is false." negates a fact; a rule said to be false contributes nothing.
Any other sentence (e.g. relations "The cat eats the dog.") makes the solver answer None
(unreadable() names it): a corruption's gold answer is then unknown, and the item is skipped and
counted, never guessed.

Closed world with negation as failure (CWA, ProofWriter's semantics): the positive facts hold;
a rule fires for an entity when its positive conditions hold and its negated conditions
cannot be derived. Negation is stratified: an attribute is derived only after every attribute
it depends on through "not" is final. A theory with a cycle through "not" has no stratified
model (answer None). Explicit negative facts add no positive fact. A question "E is a." is
True iff (E, a) is derived; "E is not a." the opposite.

Open world (OWA): literals (E, a, +/-) are derived from facts and rules whose conditions are
derived literals; a question is True when its literal is derived, False when its complement
is, otherwise Unknown.
"""

import re

_FACT = re.compile(r"^(?P<e>.+?) is (?P<neg>not )?(?P<a>[\w-]+)\.$")
_RULE = re.compile(
    r"^If (?:someone|something) is (?P<conds>.+?) then (?:they are|it is) (?P<neg>not )?(?P<c>[\w-]+)\.$"
)
_ALL = re.compile(
    r"^(?:All )?(?P<adjs>[\w-]+(?:,? (?:and )?[\w-]+)*) (?:people|things) are (?P<neg>not )?(?P<c>[\w-]+)\.$"
)
_ENTITY_RULE = re.compile(r"^If (?P<conds>.+) then (?P<e>.+?) is (?P<neg>not )?(?P<c>[\w-]+)\.$")
_THAT = re.compile(r"^That (?P<body>.+) is false\.$")
_WORD = re.compile(r"[\w-]+")


def _condition(text):
    """(attr, positive) of "a" / "not a", or None."""
    text = text.strip()
    neg = text.startswith("not ")
    a = text[4:] if neg else text
    return (a, not neg) if _WORD.fullmatch(a) else None


def _entity_rule(m):
    """("rule", conds, concl, entity) of "If E is a [and E is b] then E is c.", or None (another subject)."""
    e = m.group("e").lower()
    conds = []
    for part in m.group("conds").split(" and "):
        f = _FACT.match(part.strip() + ".")
        if f is None or f.group("e").lower() != e:
            return None
        conds.append((f.group("a"), not f.group("neg")))
    return ("rule", conds, (m.group("c"), not m.group("neg")), e)


def parse_statement(s):
    """("fact", entity, attr, positive) | ("rule", [(attr, positive)], (attr, positive), entity or None:
    every entity) | ("none",) | None (unreadable)."""
    s = s.strip()
    m = _THAT.match(s)
    if m:
        body = m.group("body")
        inner = parse_statement(body[0].upper() + body[1:] + ".")
        if inner is None:
            return None
        if inner[0] == "fact":
            return ("fact", inner[1], inner[2], not inner[3])
        return ("none",)  # a rule stated to be false: no rule
    m = _RULE.match(s)
    if m:
        conds = [_condition(c) for c in m.group("conds").split(" and ")]
        return None if None in conds else ("rule", conds, (m.group("c"), not m.group("neg")), None)
    m = _ENTITY_RULE.match(s)
    if m:
        return _entity_rule(m)
    if s.startswith("If "):
        return None
    m = _ALL.match(s)
    if m:
        adjs = [a for a in re.split(r",? (?:and )?|, ", m.group("adjs")) if a]
        return ("rule", [(a.lower(), True) for a in adjs], (m.group("c"), not m.group("neg")), None)
    m = _FACT.match(s)
    if m:
        return ("fact", m.group("e").lower(), m.group("a"), not m.group("neg"))
    return None


def unreadable(statements):
    """The first sentence the solver cannot read, or None."""
    return next((s for s in statements if parse_statement(s) is None), None)


def _strata(rules):
    """Attribute -> stratum, or None when a cycle passes through a negated condition."""
    attrs = {a for conds, (c, _), _ in rules for a, _ in conds} | {c for _, (c, _), _ in rules}
    st = {a: 0 for a in attrs}
    for _ in range(len(attrs) + 1):
        changed = False
        for conds, (c, _), _ in rules:
            for a, pos in conds:
                need = st[a] + (0 if pos else 1)
                if st[c] < need:
                    st[c], changed = need, True
        if not changed:
            return st
    return None


def closure_cwa(facts, rules, entities):
    """Positive facts derived under the closed world with stratified negation as failure."""
    st = _strata(rules)
    if st is None:
        return None
    known = {(e, a) for e, a, pos in facts if pos}
    for level in sorted(set(st.values()) | {0}):
        todo = [r for r in rules if st[r[1][0]] == level]
        changed = True
        while changed:
            changed = False
            for conds, (c, _), only in todo:
                for e in entities if only is None else [only]:
                    if (e, c) not in known and all(((e, a) in known) == pos for a, pos in conds):
                        known.add((e, c))
                        changed = True
    return known


def closure_owa(facts, rules, entities):
    """Literals (e, a, positive) derived under the open world."""
    known = set(facts)
    changed = True
    while changed:
        changed = False
        for conds, (c, cpos), only in rules:
            for e in entities if only is None else [only]:
                if (e, c, cpos) not in known and all((e, a, pos) in known for a, pos in conds):
                    known.add((e, c, cpos))
                    changed = True
    return known


def answer(statements, question, world="CWA"):
    """ "True" / "False" (/ "Unknown" under OWA) for `question` over `statements`; None when a
    sentence cannot be parsed, a CWA rule concludes a negation, or negation is not stratified."""
    parsed = [parse_statement(s) for s in statements]
    q = parse_statement(question)
    if any(p is None for p in parsed) or q is None or q[0] != "fact":
        return None
    facts = [(p[1], p[2], p[3]) for p in parsed if p[0] == "fact"]
    rules = [(p[1], p[2], p[3]) for p in parsed if p[0] == "rule"]
    _, e, a, qpos = q
    entities = sorted({f[0] for f in facts} | {e} | {r[2] for r in rules if r[2] is not None})
    if world == "CWA":
        if any(not cpos for _, (_, cpos), _ in rules):
            return None
        known = closure_cwa(facts, rules, entities)
        if known is None:
            return None
        return "True" if ((e, a) in known) == qpos else "False"
    if world != "OWA":
        raise ValueError(f"world {world!r}: expected CWA or OWA")
    known = closure_owa(facts, rules, entities)
    if (e, a, qpos) in known:
        return "True"
    if (e, a, not qpos) in known:
        return "False"
    return "Unknown"
