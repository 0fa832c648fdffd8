import json
from collections import Counter

import pytest

from mechprobe import arc
from mechprobe.utils import MechprobeError

from .conftest import shared_path


def test_parse_steps_and_levels():
    steps = arc.parse_steps("sent1 & sent3 -> int1: a thing; int1 & sent2 -> int2: b; int2 & sent4 -> hypothesis; ")
    assert steps[0] == (["sent1", "sent3"], "int1") and steps[-1] == (["int2", "sent4"], "hypothesis")
    step, depth = arc.steps_from_edges(steps, {"sent1", "sent2", "sent3", "sent4", "sent5"}, "hypothesis")
    # int1 level 1 -> sent1, sent3 step 0; int2 level 2 -> sent2 step 1; hypothesis level 3 -> sent4 step 2
    assert step == {"sent1": 0, "sent3": 0, "sent2": 1, "sent4": 2} and depth == 3


def test_graph_errors():
    with pytest.raises(ValueError, match="int7 is neither"):
        arc.steps_from_edges(arc.parse_steps("sent1 & int7 -> hypothesis;"), {"sent1"}, "hypothesis")
    with pytest.raises(ValueError, match="cycle"):
        arc.steps_from_edges(
            [(["int2"], "int1"), (["int1"], "int2"), (["int1"], "hypothesis")], {"sent1"}, "hypothesis"
        )
    with pytest.raises(ValueError, match="not 'a & b -> intN"):
        arc.parse_steps("sent1 sent2 hypothesis")


@pytest.mark.parametrize("task", ["task_1", "task_2"])
@pytest.mark.parametrize("split", ["dev", "test"])
def test_every_real_record_parses_into_a_consistent_tree(task, split):
    path = shared_path("data", "entailment_bank", task, f"{split}.jsonl")
    items = arc.read_entailment_bank(path)
    n_lines = sum(1 for l in open(path) if l.strip())
    assert len(items) == n_lines
    agree = 0
    for it, line in zip(items, open(path)):
        r = json.loads(line)
        steps = arc.parse_steps(r["proof"])
        assert {p for prem, _ in steps for p in prem if p.startswith("sent")} <= set(
            r["meta"]["triples"]
        )  # premises are sentences
        by_concl = dict((c, prem) for prem, c in steps)
        used, todo = set(), ["hypothesis"]
        while todo:  # walk back from the hypothesis
            n = todo.pop()
            for p in by_concl.get(n, []):
                (used.add(p) if p.startswith("sent") else todo.append(p))
        assert {s for s, u in zip(it["statement_ids"], it["useful"]) if u} == used
        for s in it["statement_ids"]:
            assert f"{s}: {r['meta']['triples'][s]}" in r["context"]
        assert all(st >= 0 for st, u in zip(it["step"], it["useful"]) if u)
        level = arc.steps_from_edges(arc.parse_steps(r["proof"]), set(it["statement_ids"]), "hypothesis")[1]
        assert max(it["step"]) <= level - 1  # the last inference may combine only intermediates
        agree += level == r["depth_of_proof"]
    assert agree >= 0.94 * n_lines  # depth_of_proof = depth of the step graph, but for a few anomalies (reported)
    if task == "task_1":  # gold leaves only: all useful, but for the record with a dangling step (duplicated id)
        assert [it["id"].split("@")[0] for it in items if not all(it["useful"])] in ([], ["Mercury_SC_405304"] * 2)
    if task == "task_2":
        assert any(not u for it in items for u in it["useful"])  # distractors


def test_duplicate_ids_reported_not_fatal(caplog):
    items = arc.read_entailment_bank(shared_path("data", "entailment_bank", "task_1", "test.jsonl"))
    ids = Counter(it["id"].split("@")[0] for it in items)
    assert ids["Mercury_SC_405304"] == 2
    assert "Mercury_SC_405304" in caplog.text


def test_entailment_bank_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text(
        json.dumps(
            {
                "id": "q1",
                "question": "?",
                "answer": "a",
                "proof": "sent1 & int3 -> hypothesis; ",
                "meta": {"triples": {"sent1": "x"}},
            }
        )
        + "\n"
    )
    with pytest.raises(MechprobeError, match=r"t\.jsonl:1: question q1: premise int3"):
        arc.read_entailment_bank(f)
    f.write_text(json.dumps({"id": "q1"}) + "\n")
    with pytest.raises(MechprobeError, match=r"t\.jsonl:1: missing field 'question'"):
        arc.read_entailment_bank(f)


STREET = {
    "id": "Mercury_1",
    "context": "(1) a is b (2) b is c (3) d is e",
    "question": "What is a?",
    "options": ["c", "e"],
    "answer": ["A"],
    "textual_logical_units": {"1": "a is b", "2": "b is c", "3": "d is e", "4": "so a is c", "5": "The answer is A) c"},
    "reasoning_graph_edges": [
        {"antecedents": ["1", "2"], "consequent": "4"},
        {"antecedents": ["4"], "consequent": "5"},
    ],
}


def test_street_fixture(tmp_path):
    f = tmp_path / "reasoning_annotated_dev.jsonl"
    f.write_text(json.dumps(STREET) + "\n")
    (it,) = arc.read_street(f)
    assert it["statements"] == ["a is b", "b is c", "d is e"]
    # one inference (1 & 2 -> 4); the edge 4 -> "The answer is A) c" is no level of its own
    assert it["useful"] == [True, True, False] and it["step"] == [0, 0, -1] and it["depth"] == 1
    assert it["answer"] == "A" and it["options"] == ["c", "e"]
    assert len(arc.read_street(f, max_depth=1)) == 1  # MAX_DEPTH=1 keeps one-inference trees
    with pytest.raises(MechprobeError, match="no item left"):
        arc.read_street(f, max_depth=0)
    two = dict(
        STREET,
        textual_logical_units={**STREET["textual_logical_units"], "6": "so a is d"},
        reasoning_graph_edges=[
            {"antecedents": ["1", "2"], "consequent": "4"},
            {"antecedents": ["4", "3"], "consequent": "6"},
            {"antecedents": ["6"], "consequent": "5"},
        ],
    )
    f.write_text(json.dumps(two) + "\n")
    (it,) = arc.read_street(f)
    assert it["depth"] == 2 and it["step"] == [0, 0, 1]
    bad = dict(STREET, reasoning_graph_edges=[{"antecedents": ["9"], "consequent": "5"}])
    f.write_text(json.dumps(bad) + "\n")
    with pytest.raises(MechprobeError, match=r"reasoning_annotated_dev\.jsonl:1: edge premise 9"):
        arc.read_street(f)


def test_probing_arc_on_street_fixture(tmp_path):
    from mechprobe import probing_arc

    f = tmp_path / "reasoning_annotated_test.jsonl"
    rows = []
    for i in range(8):
        r = dict(STREET, id=f"q{i}")
        rows.append(json.dumps(r))
    f.write_text("\n".join(rows) + "\n")
    res = probing_arc.main(
        ["--data", str(f), "--model", "tiny", "--out-dir", str(tmp_path / "o"), "--seeds", "0", "--n-demos", "1"]
    )
    assert res["format"] == "street" and res["n_items"] == 8
    assert res["subsets"]["all"]["s_p1"]["n_seeds"] == 1
    assert "undefined" in res["subsets"]["all"]["s_p2"]  # every useful premise is step 0 here
    assert (tmp_path / "o" / "probe_by_layer.png").exists()
    ko = res["knockout"]  # free-text answers: the drop of the answer tokens' log-probability
    assert ko["metrics"] == ["logprob_drop"] and ko["base"]["answer_logprob"] < 0
    assert ko["conditions"]["nothing"]["logprob_drop"] == [0.0] * len(ko["windows"])
    assert ko["conditions"]["gold useful"]["knocked_per_prompt"] == 2.0  # premises 1 and 2 of 3
    assert ko["conditions"]["all statements"]["logprob_drop"][0] != 0.0
    assert (tmp_path / "o" / "knockout.png").exists() and (tmp_path / "o" / "attention_view.html").exists()
