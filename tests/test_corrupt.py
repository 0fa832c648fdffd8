import json

import numpy as np
import pytest

from mechprobe import corrupt_proofwriter, corruptions
from mechprobe import proofwriter as pw
from mechprobe.proofwriter_gen import generate

from .test_proofwriter import FACT, solve


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("pw"), max_depth=1, sizes=(0, 0, 30), seed=1)
    return pw.read_meta(folder / "meta-test.jsonl", depths=(0, 1))


def closed_world_answer(statements, question):
    """Answer of `question` over statements (facts may be negated: a negated fact is not a positive
    fact; a rule said to be false, "That if ... is false.", is no rule)."""
    triples = {
        f"t{i}": {"text": s}
        for i, s in enumerate(statements)
        if FACT.match(s) and " not " not in s and not s.startswith(("That", "If "))
    }
    rules = {f"r{i}": {"text": s} for i, s in enumerate(statements) if s.startswith("If ")}
    e, neg, a = FACT.match(question).groups()
    closure, _ = solve(triples, rules, [e])
    return ((e, a) in closure) != bool(neg)


RULE_WORDINGS = [
    "If someone is red then they are big.",
    "If something is red then it is big.",
    "All red people are big.",
    "Red things are big.",
    "If Erin is red then Erin is big.",
]


def test_negate_text():
    assert corruptions.negate_text("The cat is red.") == "The cat is not red."
    assert corruptions.negate_text("The cat is red.", "that") == "That the cat is red is false."
    for rule in RULE_WORDINGS:  # a rule is negated as a rule in every wording and style: never turned around
        for style in ("grammatical", "that"):
            assert corruptions.negate_text(rule, style) == f"That {rule[0].lower() + rule[1:-1]} is false.", rule


def test_solver_reads_every_rule_wording_of_the_release():
    from mechprobe import logic

    for rule in RULE_WORDINGS:
        assert logic.answer(["Erin is red.", rule], "Erin is big.") == "True", rule
        assert logic.answer(["Erin is red.", rule, "Bob is kind."], "Bob is big.") == "False", rule
        assert logic.answer(["Erin is red.", corruptions.negate_text(rule)], "Erin is big.") == "False", rule
    two = ["Bob is smart.", "Bob is blue.", "Smart, blue people are green.", "All green, kind things are young."]
    assert logic.answer(two, "Bob is green.") == "True" and logic.answer(two, "Bob is young.") == "False"
    assert logic.answer(two + ["Bob is kind."], "Bob is young.") == "True"
    assert logic.answer(["Erin is red.", "If Erin is red then Bob is big."], "Bob is big.") is None  # not guessed
    assert logic.unreadable(["Bob is big.", "The cat eats the dog.", "x"]) == "The cat eats the dog."


def test_generated_mixed_wordings_solved_and_corrupted(tmp_path):
    """Theories in every wording (the generator's option): the solver reproduces every answer, and
    every corruption applies to items; the skip reason names a sentence the solver cannot read."""
    from mechprobe import logic

    folder = generate(tmp_path / "mixed", max_depth=1, sizes=(0, 0, 40), seed=3, wording="mixed")
    plain = generate(tmp_path / "plain", max_depth=1, sizes=(0, 0, 40), seed=3)
    mixed_items = pw.read_meta(folder / "meta-test.jsonl", depths=(0, 1))
    plain_items = pw.read_meta(plain / "meta-test.jsonl", depths=(0, 1))
    assert [it["question"] for it in mixed_items] == [it["question"] for it in plain_items]  # same theories
    texts = {s for it in mixed_items for s in it["statements"]}
    assert any(t.startswith("All ") for t in texts) and any(
        " things are " in t and not t.startswith("All ") for t in texts
    )
    assert any(t.startswith("If something") for t in texts)
    for it in mixed_items:
        assert logic.answer(it["statements"], it["question"]) == it["answer"], it["statements"]
    for name in corruptions.CORRUPTIONS:
        keep, _, _ = corruptions.corrupt_all(mixed_items, name, 0)
        assert len(keep) >= len(mixed_items) // 2, name
    bad = [{**mixed_items[0], "statements": mixed_items[0]["statements"] + ["The cat eats the dog."]}]
    bad[0]["useful"], bad[0]["step"] = bad[0]["useful"] + [False], bad[0]["step"] + [-1]
    _, _, skipped = corruptions.corrupt_all(bad, "negate_unused", 0)
    assert list(skipped) == ["the solver cannot read 'The cat eats the dog.'"]
    keep, out, _ = corruptions.corrupt_all(bad, "shuffle", 0)  # the answer cannot change: no solver needed
    assert keep == [0] and out[0]["answer"] == bad[0]["answer"]


def test_negate_unused_keeps_answer(items):
    rng = np.random.default_rng(0)
    idx = []
    for it in items:
        assert closed_world_answer(it["statements"], it["question"]) == (it["answer"] == "True")
        c = corruptions.negate_unused(it, rng)
        if c is None:
            continue
        i = c["corrupted_index"]
        assert not it["useful"][i] and c["statements"][i] != it["statements"][i]
        assert c["answer"] == it["answer"]
        assert closed_world_answer(c["statements"], c["question"]) == (c["answer"] == "True")
        idx.append(i)
    assert len(set(idx)) > 1  # not always the first sentence (the original's bug)


def test_negate_used_without_naf_flips_every_answer(items):
    """Without NAF rules a filtered (single) proof is the only one: negating a fact it uses makes
    the proved fact unprovable, so every derived gold answer flips; checked by the test's solver."""
    keep, cor, skipped = corruptions.corrupt_all(items, "negate_used", 0, "that")
    assert len(keep) == len(items) and not skipped
    for i, c in zip(keep, cor):
        assert items[i]["useful"][c["corrupted_index"]] and c["tree_valid"] is False
        assert c["answer"] != items[i]["answer"] and c["answer_changed"]
        assert closed_world_answer(c["statements"], c["question"]) == (c["answer"] == "True")


@pytest.fixture(scope="module")
def naf_items(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("naf"), max_depth=1, sizes=(0, 0, 80), seed=4, naf=True)
    return pw.read_meta(folder / "meta-test.jsonl", depths=(0, 1))


@pytest.mark.parametrize("name", ["negate_used", "negate_unused", "insert_irrelevant"])
def test_derived_answers_under_naf_match_an_independent_solver(naf_items, name):
    keep, cor, _ = corruptions.corrupt_all(naf_items, name, 0)
    assert len(keep) > 20
    for c in cor:
        assert closed_world_answer(c["statements"], c["question"]) == (c["answer"] == "True")
    if (
        name == "negate_used"
    ):  # a negated fact can be re-derived through "If someone is not x ...": not every answer flips
        changed = [c["answer_changed"] for c in cor]
        assert 0 < sum(changed) < len(changed)


def test_negate_used_rederived_by_naf_by_hand():
    it = {
        "id": "h",
        "statements": [
            "The cat is big.",
            "If someone is big then they are red.",
            "If someone is not big then they are red.",
        ],
        "question": "The cat is red.",
        "answer": "True",
        "useful": [True, True, False],
        "step": [0, 1, -1],
        "depth": 1,
        "group": 3,
    }
    keep, cor, _ = corruptions.corrupt_all([it] * 8, "negate_used", 0)
    for c in cor:
        if c["corrupted_index"] == 0:  # "The cat is not big." -> the NAF rule fires: still True
            assert c["answer"] == "True" and not c["answer_changed"]
        else:  # the rule "big -> red" said false: "not big" fails (the cat is big), nothing else derives red
            assert c["answer"] == "False"
    assert {c["corrupted_index"] for c in cor} == {0, 1}
    from mechprobe import logic

    assert (
        logic.answer(["The cat is not big.", "If someone is big then they are red."], "The cat is red.", "OWA")
        == "Unknown"
    )
    assert (
        logic.answer(["The cat is big.", "If someone is big then they are red."], "The cat is not red.", "OWA")
        == "False"
    )
    assert logic.answer(["The cat eats the dog."], "The cat is red.") is None  # relations: not guessed


def test_shuffle_and_insert(items):
    rng = np.random.default_rng(0)
    it = items[0]
    s = corruptions.shuffle(it, rng)
    assert sorted(s["statements"]) == sorted(it["statements"])
    for j, p in enumerate(s["permutation"]):
        assert (s["statements"][j], s["useful"][j], s["step"][j]) == (
            it["statements"][p],
            it["useful"][p],
            it["step"][p],
        )
    n = corruptions.insert_irrelevant(it, rng)
    i = n["corrupted_index"]
    assert len(n["statements"]) == len(it["statements"]) + 1 and n["useful"][i] is False and n["step"][i] == -1
    ent = FACT.match(n["statements"][i]).group(1)
    assert ent.lower() not in " ".join(it["statements"] + [it["question"]]).lower()
    assert closed_world_answer(n["statements"], n["question"]) == (n["answer"] == "True")


def test_pearson_ci_and_bins():
    x = np.arange(20.0)
    c = corruptions.pearson_ci(x, 2 * x + 1)
    assert c["r"] == pytest.approx(1.0) and c["ci95"][0] > 0.99
    c = corruptions.pearson_ci(x, np.r_[x[:10], -x[10:]])
    assert -1 < c["ci95"][0] < c["r"] < c["ci95"][1] < 1
    assert corruptions.pearson_ci(x, np.zeros(20))["r"] is None
    b = corruptions.binned(x, x, 4)
    assert sum(r["n"] for r in b) == 20 and b[0]["delta_acc_mean"] < b[-1]["delta_acc_mean"]


def test_corrupt_experiment_end_to_end(tmp_path):
    corrupt_proofwriter.main(
        [
            "--data",
            str(tmp_path / "pw"),
            "--generate",
            "--model",
            "tiny",
            "--out-dir",
            str(tmp_path / "o"),
            "--limit",
            "40",
            "--seeds",
            "0",
            "--n-demos",
            "1",
            "--n-subsets",
            "10",
            "--subset-size",
            "12",
            "--corruptions",
            "negate_used",
            "shuffle",
        ]
    )
    saved = json.loads((tmp_path / "o" / "corrupt_results.json").read_text())
    assert set(saved["corruptions"]) == {"negate_used", "shuffle"}
    nu = saved["corruptions"]["negate_used"]
    assert nu["gold_answer_changed"] == 1.0 and len(nu["subsets"]) == 10
    assert saved["corruptions"]["shuffle"]["gold_answer_changed"] == 0.0
    assert (tmp_path / "o" / "corrupt_shuffle.png").stat().st_size > 1000


def test_a_run_where_no_corruption_applies_fails_with_the_reason(tmp_path):
    from mechprobe.utils import MechprobeError

    line = {
        "id": "T1",
        "triples": {"triple1": {"text": "The cat eats the dog."}, "triple2": {"text": "The cat is red."}},
        "rules": {},
        "questions": {
            "Q1": {"question": "The cat is red.", "answer": True, "QDep": 0, "QLen": 1, "proofs": "[(triple2)]"}
        },
    }
    f = tmp_path / "meta-test.jsonl"
    f.write_text(json.dumps(line) + "\n")
    args = ["--data", str(f), "--model", "tiny", "--out-dir", str(tmp_path / "o"), "--depths", "0", "--n-demos", "0"]
    with pytest.raises(
        MechprobeError, match=r"no corruption applies to any of the 1 items .*cannot read 'The cat eats"
    ):
        corrupt_proofwriter.run(
            corrupt_proofwriter.parser().parse_args(args + ["--corruptions", "negate_unused", "negate_used"])
        )
