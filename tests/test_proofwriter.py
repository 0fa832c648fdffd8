import json
import re

import pytest

from mechprobe import logic
from mechprobe import proofwriter as pw
from mechprobe.proofwriter_gen import generate, proof_string
from mechprobe.utils import MechprobeError

from .conftest import shared_path


def test_parse_real_format_proofs():
    assert pw.parse_proof("[(triple3)]") == [("fact", "triple3")]
    t = pw.parse_proof("[(((triple1) -> rule2))]")[0]
    assert t == ("rule", "rule2", [("fact", "triple1")], None)
    t = pw.parse_proof("[(((((triple1) -> rule1) triple2) -> rule3))]")[0]
    steps, edges = pw.tree_steps(t)
    assert steps == {"triple1": 0, "rule1": 1, "triple2": 0, "rule3": 2}
    assert set(edges) == {("triple1", "rule1"), ("rule1", "rule3"), ("triple2", "rule3")}
    t = pw.parse_proof("[(((triple1 triple2) -> (rule1 % int1)))]")[0]
    assert t == ("rule", "rule1", [("fact", "triple1"), ("fact", "triple2")], "int1")
    assert len(pw.parse_proof("[(triple1) OR (((triple2) -> rule1))]")) == 2


@pytest.mark.parametrize(
    "bad,msg",
    [
        ("[(((triple1) rule2))]", "expected ->"),
        ("[(triple1 NAF)]", "NAF"),
        ("[@1: The dog chases the dog.[CWA. Example of deepest failure = (rule3 <- FAIL)]]", "closed-world failure"),
        ("[(triple1)] x", "unexpected"),
    ],
)
def test_parse_errors(bad, msg):
    with pytest.raises(pw.ProofSyntaxError, match=msg):
        pw.parse_proof(bad)


def theory_line(proofs="[(((triple1) -> rule1))]", qdep=1, qlen=2):
    return {
        "id": "T1",
        "triples": {"triple1": {"text": "The cat is red."}, "triple2": {"text": "The dog is big."}},
        "rules": {"rule1": {"text": "If someone is red then they are kind."}},
        "questions": {
            "Q1": {
                "question": "The cat is kind.",
                "answer": True,
                "QDep": qdep,
                "QLen": qlen,
                "strategy": "proof",
                "proofs": proofs,
            },
            "Q2": {
                "question": "The cat is big.",
                "answer": False,
                "QDep": 0,
                "QLen": "",
                "strategy": "random",
                "proofs": "[@0: The cat is big.[CWA. Example of deepest failure = (FAIL)]]",
            },
        },
    }


def test_read_meta_filters_and_trees(tmp_path):
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps(theory_line()) + "\n")
    items = pw.read_meta(f)
    assert len(items) == 1  # Q2 has no proof (empty QLen)
    it = items[0]
    assert it["statements"] == ["The cat is red.", "The dog is big.", "If someone is red then they are kind."]
    assert it["useful"] == [True, False, True] and it["step"] == [0, -1, 1] and it["answer"] == "True"
    assert it["group"] == 3 and it["depth"] == 1


def test_read_meta_errors_name_file_line_question(tmp_path):
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps(theory_line()) + "\n" + json.dumps(theory_line("[(((triple1) => rule1))]")) + "\n")
    with pytest.raises(MechprobeError, match=r"meta-test\.jsonl:2: question Q1: expected ->"):
        pw.read_meta(f)
    assert len(pw.read_meta(f, skip_bad=True)) == 1
    f.write_text(json.dumps(theory_line()) + "\n{broken\n")
    with pytest.raises(MechprobeError, match=r"meta-test\.jsonl:2: malformed JSON line"):
        pw.read_meta(f)
    assert len(pw.read_meta(f, skip_bad=True)) == 1  # skipped and counted in the log
    f.write_text(json.dumps(theory_line("[(((triple9) -> rule1))]")) + "\n")
    with pytest.raises(MechprobeError, match=r":1: question Q1: proof names \['triple9'\]"):
        pw.read_meta(f)
    f.write_text("{}\n")
    with pytest.raises(MechprobeError, match=r"meta-test\.jsonl:1: missing field 'triples'"):
        pw.read_meta(f)


# ---- an independent forward-chaining solver over the generated *texts*
FACT = re.compile(r"^(.+) is (not )?(\w+)\.$")
RULE = re.compile(r"^If someone is (.+) then they are (\w+)\.$")


def solve(triples, rules, entities=()):
    """Closed-world closure over the facts' entities and `entities` (those of the questions). A
    negated condition "not x" may only name an attribute that no rule concludes (the generator's
    stratification); it holds when x is not a fact of the entity."""
    facts = set()
    for t in triples.values():
        e, neg, a = FACT.match(t["text"]).groups()
        assert not neg
        facts.add((e, a))
    parsed = {}
    for rid, r in rules.items():
        conds, concl = RULE.match(r["text"]).groups()
        parsed[rid] = (conds.split(" and "), concl)
    concluded = {c for _, c in parsed.values()}
    base = set(facts)
    for conds, _ in parsed.values():
        assert not any(x.startswith("not ") and x[4:] in concluded for x in conds)  # stratified

    def holds(e, x, have):
        return (e, x[4:]) not in base if x.startswith("not ") else (e, x) in have

    ents = {e for e, _ in facts} | set(entities)
    while True:
        new = {(e, c) for conds, c in parsed.values() for e in ents if all(holds(e, x, facts) for x in conds)} - facts
        if not new:
            return facts, parsed
        facts |= new


def check_proof(node, triples, parsed, facts_text):
    """Return the (entity, attr) a proof tree concludes, checking every step."""
    if node[0] == "fact":
        e, _, a = FACT.match(triples[node[1]]["text"]).groups()
        return e, a
    _, rid, prem, _ = node
    concl = [check_proof(p, triples, parsed, facts_text) for p in prem]
    conds, c = parsed[rid]
    ents = {e for e, _ in concl}
    assert len(ents) == 1 and sorted(a for _, a in concl) == sorted(conds)
    return ents.pop(), c


@pytest.mark.parametrize("naf", [False, True])
def test_generated_theories_are_correct(tmp_path, naf):
    folder = generate(tmp_path, max_depth=2, sizes=(0, 0, 40), seed=3, naf=naf)
    n_checked = n_or = 0
    for line in (folder / "meta-test.jsonl").read_text().splitlines():
        th = json.loads(line)
        closure, parsed = solve(
            th["triples"], th["rules"], [FACT.match(q["question"]).group(1) for q in th["questions"].values()]
        )
        for q in th["questions"].values():
            e, neg, a = FACT.match(q["question"]).groups()
            derivable = (e, a) in closure
            assert q["answer"] == (derivable != bool(neg))  # closed world
            texts = [t["text"] for t in th["triples"].values()] + [r["text"] for r in th["rules"].values()]
            assert logic.answer(texts, q["question"]) == str(q["answer"])  # the library's solver agrees
            if q["QLen"] != "" and "NAF" not in q["proofs"]:
                trees = pw.parse_proof(q["proofs"])
                for tree in trees:
                    assert check_proof(tree, th["triples"], parsed, None) == (e, a)
                assert max(pw.tree_steps(trees[0])[0].values()) == q["QDep"] <= 2
                assert min(max(pw.tree_steps(t)[0].values()) for t in trees) == q["QDep"]
                assert proof_string(trees) == q["proofs"]
                n_checked += 1
                n_or += len(trees) > 1
            else:
                assert not derivable or neg or "NAF" in q["proofs"]  # derived through a negated condition
    assert n_checked > 50 and n_or > 0
    items = pw.read_meta(folder / "meta-test.jsonl", depths=(0, 1, 2))
    assert {it["depth"] for it in items} == {0, 1, 2}


def test_logic_llm_reader():
    items = pw.read_logic_llm(shared_path("data", "proofwriter", "processed", "logic_llm", "dev.json"))
    assert len(items) == 600
    assert {it["answer"] for it in items} == {"True", "False", "Unknown"}
    it = items[0]
    assert it["useful"] is None and it["statements"][0].endswith(".")
    assert not it["question"].startswith("Based on")


def test_logic_llm_reader_errors(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('[{"id": "a", "context": "A.", "question": "q", "answer": "D"}]')
    with pytest.raises(MechprobeError, match="item a: answer 'D'"):
        pw.read_logic_llm(f)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A miniature release: CWA/depth-0, depth-1 and depth-2 folders of different theories."""
    root = tmp_path_factory.mktemp("release")
    for d in (0, 1, 2):
        generate(root, max_depth=d, sizes=(12, 0, 24), seed=10 + d)
    return root


def test_every_depth_folder_is_read_and_capped_per_group_and_depth(release):
    from collections import Counter
    from pathlib import Path

    metas = pw.find_metas(release, "test")
    assert [m.parent.name for m in metas] == ["depth-0", "depth-1", "depth-2"]
    assert [m.parent.name for m in pw.find_metas(release, "test", depth=2)] == ["depth-2"]
    items = pw.read_meta(metas, depths=(0, 1))
    assert {it["depth"] for it in items} == {0, 1}
    assert {Path(it["file"]).parent.name for it in items if it["depth"] == 1} == {"depth-1", "depth-2"}  # pooled
    capped = pw.read_meta(metas, depths=(0, 1), max_per_group=2)
    per = Counter((it["group"], it["depth"]) for it in capped)
    assert max(per.values()) == 2
    for g in {it["group"] for it in items}:  # depth-0 questions never use up a group's depth-1 quota
        n1 = sum(1 for it in items if it["group"] == g and it["depth"] == 1)
        assert per[(g, 1)] == min(2, n1)


def test_probing_reads_the_release_layout_and_never_pools_depths(release, tmp_path):
    from mechprobe import probing_proofwriter

    res = probing_proofwriter.main(
        [
            "--data",
            str(release),
            "--model",
            "tiny",
            "--out-dir",
            str(tmp_path / "o"),
            "--limit",
            "0",
            "--seeds",
            "0",
            "--n-demos",
            "0",
            "--max-per-group",
            "12",
        ]
    )
    subs = res["subsets"]
    assert "mean" in subs["depth=1"]["s_p2"]  # depth-1 questions were read: S_P2 is defined
    assert "undefined" in subs["depth=0"]["s_p2"]
    assert not [n for n in subs if n.startswith("group=") and ",depth=" not in n]  # groups are per depth
    for n, s in subs.items():
        if n.startswith("group=") and n.endswith(",depth=0"):
            assert "mean" not in s.get("s_p2", {})
    assert (tmp_path / "o" / "probe_by_group.png").stat().st_size > 1000
    # per-head map (tiny LLaMA: 4 layers x 4 heads) and control-task selectivity, on depth >= 1
    hm = res["head_map"]
    assert len(hm["s_p1"]) == 4 and len(hm["s_p1"][0]) == 4
    assert hm["items"] == subs["depth=1"]["n_items"]
    assert len(hm["entropy"]) == 4 and all(0 < v <= 1 for row in hm["entropy"] for v in row)
    assert (tmp_path / "o" / "probe_by_head.png").stat().st_size > 1000
    assert (tmp_path / "o" / "selectivity.png").stat().st_size > 1000
    assert set(res["selectivity_p1"]) >= {"mean", "std"} and "control_task_f1_p2" in res
    # knockout: nothing knocked is the unablated model, per depth too
    ko = res["knockout"]
    assert ko["conditions"]["nothing"]["changed"] == [0.0] * 4 and set(ko["subsets"]) == {"depth=0", "depth=1"}
    assert ko["conditions"]["gold useful"]["knocked_per_prompt"] >= 1
    assert (tmp_path / "o" / "knockout.png").exists()
    check_view(tmp_path / "o")


def check_view(out):
    """The view's attention of item 0 is the question tokens' mean of output_attentions."""
    import json
    import re

    import numpy as np
    import torch

    from mechprobe.models import load_model, load_tokenizer

    view = json.loads(re.search(r'id="data">(.*?)</script>', (out / "attention_view.html").read_text(), re.S).group(1))
    assert len(view["examples"]) == 4
    e = view["examples"][0]
    folder = next(out.glob("tiny_llama-*"))
    model, tok = load_model(folder), load_tokenizer(folder)
    ids = tok("".join(e["tokens"]), return_tensors="pt")["input_ids"]
    assert ids.shape[1] == len(e["tokens"])
    with torch.no_grad():
        att = model(input_ids=ids, output_attentions=True).attentions
    q = e["queries"]
    ref = torch.stack([a[0][:, q].mean(1) for a in att])  # (L, H, T)
    np.testing.assert_allclose(e["attention"], ref.numpy(), atol=1e-4)
    useful = [s for s in e["statements"] if s["useful"]]
    assert useful and all(s["pred_step"] is not None for s in e["statements"])
