"""The ProofWriter reasoner: data, the training prompt (= the probe's), a short run, bad input."""

import json
import re

import numpy as np
import pytest
import torch

from mechprobe import finetune_proofwriter as fp
from mechprobe import reasoner as rs
from mechprobe.incontext import PromptBuilder, encode_items
from mechprobe.models import load_model
from mechprobe.utils import MechprobeError

SMALL = [
    "--sizes",
    "40",
    "10",
    "10",
    "--groups",
    "4",
    "8",
    "--layers",
    "2",
    "--hidden",
    "32",
    "--heads",
    "2",
    "--batch-size",
    "16",
    "--max-steps",
    "12",
    "--eval-every",
    "6",
    "--warmup",
    "2",
    "--threads",
    "1",
    "--compile",
    "0",
    "--position-heads",
    "0",
    "--wired-lookup",
    "0",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("reasoner")
    res = fp.main(["--data-dir", str(d / "data"), "--out-dir", str(d / "run"), *SMALL])
    return d, res


def test_data_keeps_every_question_kind_and_splits_by_theory(trained):
    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    train = splits["train"]
    assert {it["strategy"] for it in train} == set(rs.STRATEGIES)
    assert {it["depth"] for it in train} == {0, 1}
    share_true = sum(it["answer"] == "True" for it in train) / len(train)
    assert 0.35 < share_true < 0.65
    theories = {s: {it["id"].split("/")[0] for it in its} for s, its in splits.items()}
    assert not theories["train"] & theories["test"] and not theories["train"] & theories["val"]
    assert {it["group"] for it in train} == {4, 8}


def test_training_prompt_is_the_probes_prompt(trained):
    d, _ = trained
    from mechprobe.models import load_tokenizer

    tok = load_tokenizer(d / "run" / "best")
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    items = rs.read_questions(files["test"])[:5]
    task = rs.PromptTask(tok, {"train": items}, 4, 0)
    probe_enc = encode_items(tok, [{**it, "useful": None, "step": None} for it in items], [[]] * 5, PromptBuilder())
    assert task.ids["train"] == [e["ids"] for e in probe_enc]
    assert probe_enc[0]["text"].endswith(items[0]["question"] + " True or False?")


def test_short_run_outputs_and_results(trained):
    d, res = trained
    saved = json.loads((d / "run" / "results.json").read_text())
    assert saved == res and saved["steps"] == 12
    t = saved["test"]
    assert set(t["by_depth"]) == {"0", "1"} and set(t["by_kind"]) == set(rs.KINDS.values()) | {rs.HARD}
    assert 0 <= t["accuracy"] <= 1 and "proof_by_depth" in t and saved["train_seconds"] > 0
    kinds = [v["accuracy"] for k, v in t["by_kind"].items() if v and k != rs.HARD]
    assert t["balanced_accuracy"] == pytest.approx(np.mean(kinds), abs=1e-4)
    assert sum(t["by_kind"][k]["n"] for k in rs.KINDS.values() if t["by_kind"][k]) == t["n"]
    # the baselines on the same questions: the "not" rule is exact on proofs and wrong on the unprovable
    base = saved["baselines"]
    assert set(base) == {"majority", "not_rule", "size_prior", "bag_of_words"}
    rule = base["not_rule"]["by_kind"]
    assert rule["proof"]["accuracy"] == rule["inverse proof"]["accuracy"] == 1.0
    assert rule["CWA failure"]["accuracy"] == rule["NAF"]["accuracy"] == 0.0
    assert base["not_rule"]["balanced_accuracy"] == 0.5 and base["not_rule"]["n"] == t["n"]
    assert (d / "run" / "kinds.png").stat().st_size > 0
    ck = torch.load(d / "run" / "checkpoint.pt", weights_only=False)
    assert ck["settings"]["hidden"] == 32
    assert json.loads((d / "run" / "status.json").read_text())["status"] == "complete"


def test_trained_reasoner_is_probeable_with_zero_demonstrations(trained, tmp_path):
    from mechprobe import probing_proofwriter

    d, _ = trained
    res = probing_proofwriter.main(
        [
            "--data",
            str(d / "data"),
            "--model",
            str(d / "run" / "best"),
            "--n-demos",
            "0",
            "--limit",
            "0",
            "--seeds",
            "0",
            "--out-dir",
            str(tmp_path / "p"),
            "--no-cache",
        ]
    )
    assert res["n_items"] > 10 and "mean" in res["subsets"]["all"]["s_p1"]
    assert res["answer_words"] == ["True", "False"]


def test_bad_configuration(tmp_path, trained):
    d, _ = trained
    with pytest.raises(
        MechprobeError, match=r"holds data of another configuration \(DEPTH 1 \(folder\) vs 2 \(asked\)"
    ):
        fp.main(["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "r"), *SMALL, "--depth", "2"])
    folders = ["--data-dir", str(tmp_path / "x"), "--out-dir", str(tmp_path / "r")]
    with pytest.raises(MechprobeError, match="DEPTH=7: expected a question depth between 0 and 5"):
        fp.main([*folders, *SMALL, "--depth", "7"])
    with pytest.raises(MechprobeError, match="GROUPS=4 80: expected numbers of statements between 1 and 40"):
        fp.main([*folders, *SMALL[:5], "4", "80", *SMALL[7:]])
    with pytest.raises(MechprobeError, match="BINDING_PAIRS=21: expected 0 to 20 pairs"):
        fp.main([*folders, *SMALL, "--binding-pairs", "21"])
    with pytest.raises(MechprobeError, match="TRAIN_MORE=41: expected 0 to 40 more questions"):
        fp.main([*folders, *SMALL, "--train-more", "41"])
    with pytest.raises(MechprobeError, match=r"BINDING_PAIRS None \(folder\) vs 2 \(asked\)"):
        fp.main(["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "r"), *SMALL, "--binding-pairs", "2"])
    with pytest.raises(MechprobeError, match="LM_STATEMENTS=1 needs PACK=1"):
        fp.main([*folders, *SMALL, "--pack", "0", "--recall", "0", "--lm-statements", "1"])
    with pytest.raises(MechprobeError, match="LM_QUESTION=1 and LM_STATEMENTS=1: .* choose one"):
        fp.main([*folders, *SMALL, "--lm-question", "1", "--lm-statements", "1"])
    with pytest.raises(MechprobeError, match="LM_QUESTION=1 needs PACK=1"):
        fp.main([*folders, *SMALL, "--pack", "0", "--lm-question", "1"])
    with pytest.raises(MechprobeError, match="RECALL=0.5 needs PACK=1 .*; with PACK=0 set RECALL=0"):
        fp.main([*folders, *SMALL, "--pack", "0", "--recall", "0.5"])
    with pytest.raises(MechprobeError, match=r"^RECALL_LAYER=3: expected 0 \(the last layer\) to 2 \(LAYERS\)$"):
        fp.main([*folders, *SMALL, "--recall-layer", "3"])
    with pytest.raises(MechprobeError, match=r"^POSITIVE_WORDS=1 needs POSITIVE_STEPS > 0"):
        fp.main([*folders, *SMALL, "--positive-steps", "0", "--positive-words", "1"])
    with pytest.raises(MechprobeError, match=r"^RECALL_LAYER=1 needs RECALL > 0"):
        fp.main([*folders, *SMALL, "--recall", "0", "--recall-layer", "1"])
    with pytest.raises(MechprobeError, match=r"^RECALL_ORDER=rotated needs RECALL > 0"):
        fp.main([*folders, *SMALL, "--recall", "0", "--recall-order", "rotated"])
    with pytest.raises(MechprobeError, match=r"^POSITION_HEADS=3 is more than HEADS=2$"):
        fp.main([*folders, *SMALL, "--position-heads", "3"])
    with pytest.raises(MechprobeError, match=r"^EARLY_ANSWER=1 needs PACK=1"):
        fp.main([*folders, *SMALL, "--pack", "0", "--recall", "0", "--early-answer", "1"])
    with pytest.raises(MechprobeError, match=r"^WIRED_LOOKUP=1 needs POSITION_HEADS=3, HEADS=4 .*: got 0, 2, 2$"):
        fp.main([*folders, *SMALL, "--wired-lookup", "1"])
    wired = ["--heads", "4", "--position-heads", "3", "--wired-lookup", "3"]
    with pytest.raises(MechprobeError, match=r"^WIRED_LOOKUP=3 needs HIDDEN/HEADS > 16 .*: got 64/4$"):
        fp.main([*folders, *SMALL, *wired, "--hidden", "64"])
    with pytest.raises(MechprobeError, match=r"^WIRED_LOOKUP=3 holds the word embeddings .* set TIE=0$"):
        fp.main([*folders, *SMALL, *wired, "--hidden", "80", "--tie", "1"])
    assert not (tmp_path / "x").exists()


def test_packed_run_and_resume_check(trained, tmp_path):
    """PACK=1 with the question-only next-token loss and recall segments trains and writes its results; a checkpoint
    written without packing does not resume with it (the batches differ)."""
    d, _ = trained
    args = ["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "p"), *SMALL, "--pack", "1"]
    res = fp.main(
        [*args, "--lm-question", "1", "--decay-steps", "4", "--binding-weight", "2", "--recall", "1"]
        + ["--recall-layer", "1", "--tie", "1", "--rope-theta", "1e6", "--recall-order", "rotated"]
        + ["--optimizer", "muon", "--early-answer", "0.5"]
        + ["--heads", "4", "--hidden", "64", "--position-heads", "3", "--wired-lookup", "2", "--wired-hold", "5"]
        + ["--positive-steps", "3", "--positive-batch", "8", "--bos", "1"]
    )
    assert res["steps"] == 12 and 0 <= res["test"]["accuracy"] <= 1
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["pack"] == 1 and cfg["recall_layer"] == 1 and cfg["recall_order"] == "rotated"
    assert cfg["optimizer"] == "muon"
    assert cfg["model_config"]["tie_word_embeddings"] is True
    assert cfg["position_heads"] == 3 and cfg["model_config"]["attention_bias"] is True
    assert cfg["early_answer"] == 0.5 and cfg["wired_lookup"] == 2 and cfg["wired_hold"] == 5
    assert cfg["positive_steps"] == 3 and cfg["positive_batch"] == 8 and cfg["bos"] == 1
    from mechprobe.models import load_tokenizer

    tok = load_tokenizer(tmp_path / "p" / "best")  # the saved tokenizer starts prompts with "<s>"
    assert tok("Anne is big .")["input_ids"][0] == tok.convert_tokens_to_ids("<s>")
    best = load_model(tmp_path / "p" / "best", device="cpu")  # tied weights survive save and load
    assert best.lm_head.weight.data_ptr() == best.model.embed_tokens.weight.data_ptr()
    d_head = best.config.hidden_size // best.config.num_attention_heads  # RoPE's base survives save and load
    want = 1e6 ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)  # theta^(-2i/d), by hand
    assert torch.allclose(best.model.rotary_emb.inv_freq.double(), want, rtol=1e-6)
    assert best.model.layers[0].self_attn.q_proj.bias is not None  # the biases survive save and load
    with pytest.raises(MechprobeError, match=r"PACK 1 -> 0"):
        fp.main([*args[:-1], "0", "--decay-steps", "4", "--recall", "0", "--early-answer", "0"])


def test_wired_lookup_3_run_keeps_the_circuit_fixed(trained, tmp_path):
    """WIRED_LOOKUP=3 with WIRED_HOLD beyond the run (the default's way): after training, the held weights
    (the embeddings, layer 1's MLP found units, an RMSNorm gain) are those of the untrained model built
    from the same settings, while the weights not held have moved."""
    d, _ = trained
    wired = ["--heads", "4", "--hidden", "80", "--position-heads", "3", "--wired-lookup", "3", "--wired-hold", "100"]
    fp.main(["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "w"), *SMALL, *wired, "--rope-theta", "1e6"])
    from mechprobe.models import load_tokenizer

    last = load_model(tmp_path / "w" / "last", device="cpu").state_dict()
    tok = load_tokenizer(tmp_path / "w" / "last")
    first = rs.build_model(tok, 2, 80, 4, seed=0, rope_theta=1e6, position_heads=3, wired_lookup=3).state_dict()
    mlp = "model.layers.1.mlp."
    for k in ("model.embed_tokens.weight", "model.layers.1.post_attention_layernorm.weight"):
        assert torch.equal(last[k], first[k]), k
    assert torch.equal(last[mlp + "gate_proj.weight"][:32], first[mlp + "gate_proj.weight"][:32])
    assert not torch.equal(last[mlp + "gate_proj.weight"][32:], first[mlp + "gate_proj.weight"][32:])
    assert not torch.equal(last["lm_head.weight"], first["lm_head.weight"])


def test_balanced_draw_leaves_no_size_or_negation_shortcut(tmp_path):
    from collections import Counter

    from mechprobe.proofwriter_gen import generate

    folder = generate(tmp_path, 1, (140, 1, 1), (2, 4, 8, 16), seed=3, n_questions=8, balanced=True)
    per_theory = []
    n_true = Counter()
    n_all = Counter()
    for line in open(folder / "meta-train.jsonl"):
        th = json.loads(line)
        g = len(th["triples"]) + len(th["rules"])
        kinds = Counter(q["strategy"] for q in th["questions"].values())
        per_theory.append(len(set(kinds.values())) == 1 and len(kinds) == 4)
        for q in th["questions"].values():
            neg = " not " in q["question"]
            n_true[(g, neg)] += q["answer"]
            n_all[(g, neg)] += 1
        for r in th["rules"].values():  # the original release's representation, no numpy reprs
            assert r["representation"].startswith("(((") and "np." not in r["representation"]
    assert all(per_theory)  # every theory: as many questions of each of the four kinds
    for key in n_all:  # P(True | theory size, "not") = 1/2 exactly
        assert 2 * n_true[key] == n_all[key], key
    assert {g for g, _ in n_all} == {2, 4, 8, 16}


def _closure_of_text(theory):
    """Every (entity, attribute) derivable from a generated theory's text, by a fixpoint written apart
    from the generator's (no negated conditions)."""
    facts = set(re.findall(r"(?:^|\. )((?:The )?\w+) is (\w+)(?=\.)", theory))
    rules = [(c.split(" and "), k) for c, k in re.findall(r"If someone is ([\w ]+?) then they are (\w+)\.", theory)]
    ents = {e for e, _ in facts}
    known = set(facts)
    while True:
        new = {(e, k) for cs, k in rules for e in ents if all((e, c) in known for c in cs)} - known
        if not new:
            return facts, rules, known
        known |= new


def _added_questions(tmp_path, **extra):
    """(split, theory text, questions added) for each theory generated with `extra` options, after
    checking that everything else equals the plain draw and that every question's answer is what
    the theory's closure (CWA) says."""
    from mechprobe.proofwriter_gen import generate

    a = generate(tmp_path / "a", 1, (60, 8, 8), (2, 4, 8, 16), seed=5)
    b = generate(tmp_path / "b", 1, (60, 8, 8), (2, 4, 8, 16), seed=5, **extra)
    for split in ("train", "dev", "test"):
        old = [json.loads(x) for x in open(a / f"meta-{split}.jsonl")]
        new = [json.loads(x) for x in open(b / f"meta-{split}.jsonl")]
        for o, t in zip(old, new, strict=True):
            assert {k: v for k, v in t.items() if k != "questions"} == {k: v for k, v in o.items() if k != "questions"}
            qs = list(t["questions"].values())
            assert qs[: len(o["questions"])] == list(o["questions"].values())
            texts = [q["question"] for q in qs]
            assert len(set(texts)) == len(texts)  # no question asked twice
            known = _closure_of_text(t["theory"])[2]
            for q in qs:
                e, neg, x = re.fullmatch(r"(.+) is (not )?(\w+)\.", q["question"]).groups()
                assert q["answer"] is (((e, x) in known) != bool(neg)), q
            yield split, t["theory"], qs[len(o["questions"]) :]


def test_binding_pairs_share_words_and_leave_every_other_question_unchanged(tmp_path):
    n_pairs = 0
    for split, theory, extra in _added_questions(tmp_path, binding_pairs=2):
        assert split == "train" or not extra
        assert len(extra) % 2 == 0 and len(extra) <= 4
        facts, rules, known = _closure_of_text(theory)
        words = {x for _, x in facts} | {c for cs, k in rules for c in (*cs, k)}
        for hard, mate in zip(extra[::2], extra[1::2]):
            (e, neg, x), (e2, neg2, x2) = (
                re.fullmatch(r"(.+) is (not )?(\w+)\.", q["question"]).groups() for q in (hard, mate)
            )
            assert neg == neg2  # one polarity per pair
            assert (e, x) not in known and e in {f for f, _ in facts} and x in words
            assert (e2, x2) in known and (x2 == x or e2 == e)
            assert hard["strategy"] == ("inv-random" if neg else "random")
            assert hard["QLen"] == ("" if not neg else 1)
            n_pairs += 1
    assert n_pairs > 40  # 60 training theories (2, 4, 8 or 16 statements; the smallest have few words to pair)


def test_more_training_questions_are_drawn_as_the_others(tmp_path):
    from collections import Counter

    added = Counter()
    for split, _, extra in _added_questions(tmp_path, train_more=3):
        assert split == "train" or not extra
        assert len(extra) <= 3
        added.update(q["strategy"] for q in extra)
    assert sum(added.values()) > 150 and set(added) == set(rs.STRATEGIES)  # 60 theories, most get 3


@pytest.mark.parametrize("pack", [True, False])
def test_curriculum_epoch_goes_from_short_to_long_prompts(pack, trained, tmp_path):
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    task = rs.PromptTask(tok, splits, 16, 0, curriculum=1, pack=pack)
    lengths = [max(len(task.ids["train"][int(i)]) for i in b) for b in task.epoch_batches(0)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    later = [max(len(task.ids["train"][int(i)]) for i in b) for b in task.epoch_batches(1)]
    assert later != sorted(later)  # later epochs are shuffled
    assert sorted(int(i) for b in task.epoch_batches(0) for i in b) == list(range(len(splits["train"])))


@pytest.mark.parametrize("pack", [True, False])
def test_staged_phase_lets_the_groups_in_one_by_one(pack, trained):
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    group = [it["group"] for it in splits["train"]]
    spe = len(rs.PromptTask(tok, splits, 16, 0, pack=pack).epoch_batches(0))
    S = spe + spe // 2  # the staged phase runs over into epoch 1
    task = rs.PromptTask(tok, splits, 16, 0, stage_steps=S, pack=pack)
    steps = [b for e in (0, 1) for b in task.epoch_batches(e)]
    for t, b in enumerate(steps):
        top = max(group[int(i)] for i in b)
        if t < S // 2:  # groups (4, 8): the first half of the staged steps sees only 4-statement theories
            assert task.stage_group(t) == 4 and top == 4
        elif t < S:
            assert task.stage_group(t) == 8
        else:
            assert task.stage_group(t) is None
    assert max(group[int(i)] for b in steps[S // 2 : S] for i in b) == 8
    assert [b.tolist() for b in task.epoch_batches(1)] == [b.tolist() for b in task.epoch_batches(1)]  # seeded
    plain = rs.PromptTask(tok, splits, 16, 0, pack=pack).epoch_batches(1)
    assert [b.tolist() for b in steps[S:]] == [b.tolist() for b in plain[S - spe :]]  # after it: as before


@pytest.mark.parametrize("pack", [True, False])
def test_positive_phase_draws_only_questions_without_not(pack, trained):
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    train, spe = splits["train"], len(rs.PromptTask(tok, splits, 16, 0, pack=pack).epoch_batches(0))
    assert rs.is_negated("Bob is not big.") and not rs.is_negated("Bob is big.") and not rs.is_negated("Nothing.")
    P = spe + 2
    task = rs.PromptTask(tok, splits, 16, 0, stage_steps=2, positive_steps=P, pack=pack)
    steps = [b for e in (0, 1) for b in task.epoch_batches(e)]
    for t, b in enumerate(steps[:P]):
        assert not any(" not " in train[int(i)]["question"] for i in b) and len(b) == 16
        if t == 0:  # the staged phase (step 0: 4 statements) holds too
            assert max(train[int(i)]["group"] for i in b) == 4
    assert any(" not " in train[int(i)]["question"] for b in steps[P:] for i in b)
    plain = rs.PromptTask(tok, splits, 16, 0, pack=pack).epoch_batches(1)
    assert [b.tolist() for b in steps[P:]] == [b.tolist() for b in plain[P - spe :]]  # after it: as before
    words = rs.PromptTask(tok, splits, 16, 0, positive_steps=P, pack=pack, positive_words=True)
    drawn = {int(i) for b in words.epoch_batches(0)[:P] for i in b}
    bound = {i for i, it in enumerate(train) if not rs.is_negated(it["question"])}
    bound &= {i for i, it in enumerate(train) if rs.word_presence(it) == "entity in, attribute in"}
    assert drawn <= bound and {train[i]["answer"] for i in drawn} == {"True", "False"}
    assert any(train[i]["strategy"] == "random" for i in drawn)  # unprovable questions on present words
    half = rs.PromptTask(tok, splits, 16, 0, positive_steps=P, pack=pack, positive_batch=8)
    steps = [b for e in (0, 1) for b in half.epoch_batches(e)]  # POSITIVE_BATCH=8: 8 questions a step in the phase
    assert all(len(b) == 8 and not any(" not " in train[int(i)]["question"] for i in b) for b in steps[:P])
    assert [b.tolist() for b in steps[P:]] == [b.tolist() for b in plain[P - spe :]]  # after it: as before


def test_next_token_loss_ends_at_the_question(trained):
    """A packed batch's next-token targets are, prompt by prompt, its words up to the question's "."
    (read back from the text), never the answer choices "True or False ?" (whose fixed targets, "." ->
    "True" and "or" -> "False", would disagree with the answer read there)."""
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    task = rs.PromptTask(tok, splits, 16, 0, pack=True)
    idx = task.epoch_batches(1)[0]
    got = tok.convert_ids_to_tokens(task.batch(idx)[0].lm_tgt.tolist())
    want = []
    for i in idx.tolist():
        text, _, (_, qe) = PromptBuilder().build(splits["train"][i], [])
        assert text[qe:] == " True or False?"
        want += tok.tokenize(text[:qe])[1:]  # a prompt's first token is predicted from nothing
    assert got == want and len(want) > 16
    assert not {"True", "or", "?"} & set(got) and "." in got


def test_early_answer_positions_are_the_questions_last_word_and_after(trained):
    """EARLY_ANSWER: a packed training batch reads each question's answer from its last word ("E is a .":
    at a; "E is not a .": at a) to the token before "?", read back from the text; other splits carry none."""
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    task = rs.PromptTask(tok, splits, 16, 0, pack=True, early_answer=True)
    idx = task.epoch_batches(1)[0]
    p = task.batch(idx)[0]
    flat = p.ids.reshape(-1)
    for j, i in enumerate(idx.tolist()):
        q = splits["train"][i]["question"]
        got = tok.convert_ids_to_tokens(flat[p.early_src[p.early_of == j]].tolist())
        assert got == [re.findall(r"\w+", q)[-1], ".", "True", "or", "False"], q
    assert len(p.early_src) == 5 * len(idx)
    assert task.pad("val", np.arange(4))[0].early_src is None


def test_auxiliary_next_token_loss_by_hand():
    import torch.nn.functional as F

    from mechprobe.training import Trainer

    from .conftest import tiny_llama

    model = tiny_llama()
    ids = torch.tensor([[3, 5, 7, 9], [4, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    answers = torch.tensor([11, 12])
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=mask).logits.float()
    ans = F.cross_entropy(torch.stack([z[0, 3], z[1, 1]]), answers)
    lm_terms = [-F.log_softmax(z[0, t], -1)[ids[0, t + 1]] for t in range(3)] + [-F.log_softmax(z[1, 0], -1)[6]]
    expect = ans + 0.5 * torch.stack(lm_terms).mean()
    tr = Trainer(model, 0.0, 0.0, 1, 10, "cpu", lm_weight=0.5)
    got = tr.train_step(ids, mask, answers, use_bf16=False)
    assert got == pytest.approx(expect.item(), rel=1e-5)
    tr0 = Trainer(tiny_llama(), 0.0, 0.0, 1, 10, "cpu")
    assert tr0.train_step(ids, mask, answers, use_bf16=False) == pytest.approx(ans.item(), rel=1e-5)


def test_prior_weights_balance_each_groups_cells_by_hand():
    """Group 2: cells (no "not", True) x1, (no "not", False) x3, ("not", True) x2 -> 3 cells, n = 6:
    weights 6 / (3 * count) = 2, 2/3, 1; each cell then weighs 2, the group 6. Group 4 has one cell."""
    q = {False: "Bob is big.", True: "Bob is not big."}
    items = [
        {"group": 2, "question": q[neg], "answer": ans}
        for neg, ans, n in ((False, "True", 1), (False, "False", 3), (True, "True", 2))
        for _ in range(n)
    ] + [{"group": 4, "question": q[False], "answer": "True"}] * 2
    w = rs.prior_weights(items)
    np.testing.assert_allclose(w, [2, 2 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])


def test_weighted_answer_loss_is_the_weighted_mean(monkeypatch):
    """Trainer.train_step with weights: the answer loss is sum_i w_i L_i / sum_i w_i (checked against
    per-example cross-entropies computed apart)."""
    import torch.nn.functional as F

    from mechprobe import training

    from .conftest import tiny_llama

    model = tiny_llama(seed=0)
    ids = torch.randint(3, 50, (4, 7))
    answers = torch.tensor([5, 6, 5, 6])
    w = torch.tensor([1.0, 3.0, 0.5, 2.0])
    with torch.no_grad():
        per = F.cross_entropy(model(input_ids=ids).logits[:, -1].float(), answers, reduction="none")
    tr = training.Trainer(model, 0.0, 0.0, 1, 10, "cpu")  # lr 0: the step changes nothing
    loss = tr.train_step(ids, None, answers, False, weights=w)
    assert loss == pytest.approx(float((per * w).sum() / w.sum()), rel=1e-5)
    assert loss != pytest.approx(float(per.mean()), rel=1e-3)


def test_learning_rate_schedule_by_hand():
    """Warm-up to LR, then a linear decay from the warm-up's end (DECAY_STEPS=0) or a constant LR and a
    linear decay over the last DECAY_STEPS steps: the rates the optimizer uses at steps 0..9."""
    from mechprobe.training import Trainer

    def rates(decay):
        tr = Trainer(torch.nn.Linear(2, 2), 1.0, 0.0, 2, 10, "cpu", decay=decay)
        out = []
        for _ in range(10):
            out.append(tr.opt.param_groups[0]["lr"])
            tr.sched.step()
        return out

    assert rates(0) == pytest.approx([0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert rates(4) == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert rates(20) == rates(0)  # longer than the run: the decay starts at the warm-up's end


def test_word_presence_by_hand():
    st = ["The dog is round.", "Anne is red.", "If the cat is kind then it is big."]
    kinds = [
        rs.word_presence({"statements": st, "question": q})
        for q in (
            "Anne is round.",
            "Anne is not big.",
            "The cat is nice.",
            "Bob is red.",
            "Bob is nice.",
            "The dog sees Anne.",
        )
    ]
    assert kinds == [
        "entity in, attribute in",
        "entity in, attribute in",
        "entity in, attribute absent",  # "the cat" in a rule counts, whatever its case
        "entity absent, attribute in",
        "entity absent, attribute absent",
        "other",
    ]


def test_binding_weight_by_hand():
    """BINDING_WEIGHT multiplies the loss weight of the unprovable questions whose words both occur."""
    st = ["The dog is round.", "Anne is red."]
    items = [
        {"statements": st, "question": "Anne is round.", "strategy": "random", "group": 2, "answer": "False"},
        {"statements": st, "question": "Anne is not round.", "strategy": "inv-random", "group": 2, "answer": "True"},
        {"statements": st, "question": "Bob is round.", "strategy": "random", "group": 2, "answer": "False"},
        {"statements": st, "question": "Anne is red.", "strategy": "proof", "group": 2, "answer": "True"},
    ]
    assert rs.loss_weights(items) is None
    np.testing.assert_allclose(rs.loss_weights(items, binding_weight=3.0).numpy(), [3, 3, 1, 1])
    prior = rs.prior_weights(items)
    np.testing.assert_allclose(rs.loss_weights(items, True, 2.0).numpy(), prior * [2, 2, 1, 1], rtol=1e-6)


def test_lookup_accuracy_by_hand():
    """The attribute a model predicts after "E is" in the question, against E's stated attributes."""
    from types import SimpleNamespace

    st = ["Bob is big.", "Bob is red.", "Anne is kind.", "If someone is big then they are kind."]
    base = {"statements": st, "facts": 3, "answer": "True", "depth": 0, "strategy": "proof", "group": 4}
    items = [
        {**base, "id": "a", "question": "Bob is red."},
        {**base, "id": "b", "question": "Bob is not red."},  # negated: skipped
        {**base, "id": "c", "question": "Dave is big."},  # no stated fact of Dave: skipped
    ]
    tok = rs.build_tokenizer(items)

    class Stub(torch.nn.Module):
        def __init__(self, word):
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(1)), []
            self.word = tok.convert_tokens_to_ids(word)

        def forward(self, input_ids):
            self.seen.append(tok.convert_ids_to_tokens(input_ids[0].tolist()))
            z = torch.zeros(1, input_ids.shape[1], len(tok))
            z[0, -1, self.word] = 1.0
            return SimpleNamespace(logits=z)

    right, wrong = Stub("red"), Stub("kind")
    assert rs.lookup_accuracy(right, tok, items) == {"accuracy": 1.0, "n": 1, "chance": pytest.approx(2 / 3)}
    assert rs.lookup_accuracy(wrong, tok, items)["accuracy"] == 0.0  # kind is Anne's, not Bob's
    assert right.seen[0][-3:] == [".", "Bob", "is"]  # the prompt stops before the question's attribute


def test_position_heads_attend_to_their_offset_from_the_start():
    """POSITION_HEADS=3: before any training, layer 0's head h puts 0.99 of its attention on the token h+1
    back on average, 0.9+ at every position (from h+1 on), whatever the tokens, and head 3 does not; a
    model without biases is refused."""
    from mechprobe.tiny import init_position_heads

    tok = rs.build_tokenizer(
        [{"statements": ["Bob is big.", "If someone is big then they are red."], "question": "Bob is red."}]
    )
    model = rs.build_model(tok, layers=2, hidden=128, heads=4, position_heads=3).eval()
    ids = torch.randint(4, len(tok), (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        att = model(input_ids=ids, output_attentions=True).attentions[0]  # (B, H, T, T)
    for h in range(4):
        t = torch.arange(h + 1, 300)
        on_offset = att[:, h, t, t - (h + 1)]  # (B, T - h - 1)
        if h < 3:
            assert on_offset.mean() > 0.99 and on_offset.min() > 0.9, (h, on_offset.mean(), on_offset.min())
        else:
            assert on_offset.mean() < 0.5
    with pytest.raises(ValueError, match="with q/k biases"):
        init_position_heads(rs.build_model(tok, layers=1, hidden=32, heads=2), 1)


def test_wired_lookup_finds_the_fact_at_init(trained):
    """WIRED_LOOKUP=1: before any training, layer 1's head 0 at the attribute of a true depth-0 question
    "E is a ." puts a large share of its attention on the "." closing the fact "E is a ." among the
    statements (generated theories of 4 and 8 statements; on the default data: 0.50-0.71 per group; the
    same head of a model without the wiring: about uniform); a model without 4 heads of hidden/4
    dimensions and biases is refused."""
    from mechprobe.tiny import init_wired_lookup

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    items = [it for f in files.values() for it in rs.read_questions(f)]
    items = [it for it in items if it["depth"] == 0 and it["strategy"] == "proof"]
    tok = rs.build_tokenizer(items)
    wired, plain = (
        rs.build_model(tok, 4, 128, 4, rope_theta=1e6, position_heads=3, wired_lookup=w).eval() for w in (1, 0)
    )
    share = {1: [], 0: []}
    for it in items[:60]:
        text = PromptBuilder().build(it, [])[0]
        enc = tok(text, return_offsets_mapping=True, return_tensors="pt")
        q = it["question"].strip()
        end = text.index(q, len(text) - len(q) - 20) + len(q)  # the question's end
        fact_end = text.index(q) + len(q)  # the first "E is a." is the fact (the question comes last)
        dot = [i for i, (_, e) in enumerate(enc["offset_mapping"][0].tolist()) if e == fact_end][0]
        t = [i for i, (_, e) in enumerate(enc["offset_mapping"][0].tolist()) if e == end][0] - 1  # the attribute
        assert fact_end < end and tok.convert_ids_to_tokens([int(enc["input_ids"][0, t])])[0] == q.split()[-1][:-1]
        for w, m in ((1, wired), (0, plain)):
            with torch.no_grad():
                att = m(input_ids=enc["input_ids"], output_attentions=True).attentions[1][0, 0, t]  # (T,)
            share[w].append((att[dot].item(), 1 / (t + 1)))
    on, uniform = np.mean(share[1], 0)
    assert len(share[1]) > 20 and on > 0.4 and on > 10 * uniform, (on, uniform)
    assert np.mean(share[0], 0)[0] < 3 * uniform
    with pytest.raises(ValueError, match="needs 4 heads of hidden/4 dimensions"):
        init_wired_lookup(rs.build_model(tok, layers=2, hidden=32, heads=2))


def test_wired_lookup_2_matches_each_word_in_its_place_with_the_same_strength():
    """WIRED_LOOKUP=2: the match head's query of each word's embedding (scale * P1 x) has the same norm
    for every word (with 1, a seed's draw leaves them unequal), as has each embedding; the embeddings are
    WIRED_LOOKUP=1's rescaled in parts (cosine > 0.8); the weights that are not wired are the same.
    In "Bob is big. Anne is big. Bob is red. Bob is big." the question's "big" finds the fact's "." (3),
    not the "is" after "big. Bob" (9), whose two previous words match with 1 (in the other places)."""
    tok = rs.build_tokenizer(
        [{"statements": ["Bob is big.", "Anne is big.", "Bob is red."], "question": "Bob is big."}]
    )
    ids = tok("Bob is big. Anne is big. Bob is red. Bob is big.", return_tensors="pt")["input_ids"]  # (1, 16)
    fact, rev = {1: [], 2: []}, {1: [], 2: []}
    for seed in range(5):
        one, two = (rs.build_model(tok, 4, 128, 4, seed=seed, position_heads=3, wired_lookup=w).eval() for w in (1, 2))
        for w, m in ((1, one), (2, two)):
            with torch.no_grad():
                att = m(input_ids=ids, output_attentions=True).attentions[1][0, 0, 14]  # (16,) at the last "big"
            fact[w].append(att[3].item())
            rev[w].append(att[9].item())
    assert sum(f > 0.9 for f in fact[2]) >= 4 and max(rev[2]) < 0.05, (fact, rev)
    assert sum(r > 0.5 for r in rev[1]) >= 2, (fact, rev)
    E1, E2 = one.model.embed_tokens.weight.detach(), two.model.embed_tokens.weight.detach()
    W = two.model.layers[1].self_attn.q_proj.weight.detach()[:32]  # (d, D): head 0's query
    n1, n2 = (E1 @ W.T).norm(dim=1), (E2 @ W.T).norm(dim=1)  # (V,) per word: scale |P1 x|
    assert (n2.std() / n2.mean()).item() < 1e-4 and (n1.std() / n1.mean()).item() > 0.05, (n1, n2)
    assert (E2.norm(dim=1).std() / E2.norm(dim=1).mean()).item() < 1e-4
    cos = torch.nn.functional.cosine_similarity(E1, E2, dim=1)  # (V,): the same draw, its parts rescaled
    assert cos.min() > 0.8 and (E2 - E1).abs().max() > 1e-3, cos
    wired = {
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
    }
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in one.state_dict().items() if k not in wired)


def test_wired_lookup_3_says_whether_the_fact_is_there(trained):
    """WIRED_LOOKUP=3, before any training, at the attribute a of a depth-0 question "E is a." or "E is
    not a." (generated theories): the match head attends to the fact's "." (both forms); layer 1's MLP
    output on its "not found" direction e is, by hand, |down column| * sum_j (w_j . h)^2 over the 16
    code directions w_j (the +/- unit pairs' gate rows; h: the MLP's normalised input), and it tells
    the questions whose fact is there (proof, inv-proof) from the unprovable ones whose two words both
    occur (AUC > 0.98, by hand); the held slices cover the detector."""
    from mechprobe.tiny import FOUND_UNITS, wired_slices

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    items = [it for f in files.values() for it in rs.read_questions(f)]
    found = [it for it in items if it["depth"] == 0 and it["strategy"] in ("proof", "inv-proof")]
    hard = [
        it
        for it in items
        if it["strategy"] in ("random", "inv-random") and rs.word_presence(it).endswith("in, attribute in")
    ]
    tok = rs.build_tokenizer(items)
    model = rs.build_model(tok, 4, 128, 4, rope_theta=1e6, position_heads=3, wired_lookup=3).eval()
    mlp, cap = model.model.layers[1].mlp, {}
    hook = mlp.register_forward_hook(lambda m, i, o: cap.update(h=i[0][0], out=o[0]))
    col = mlp.down_proj.weight[:, 0].detach()
    e, W = col / col.norm(), mlp.gate_proj.weight[:FOUND_UNITS:2].detach()  # (D,), (16, D)
    signal, on_fact = {True: [], False: []}, []
    for is_found, its in ((True, found[:40]), (False, hard[:40])):
        for it in its:
            ids = tok(PromptBuilder().build(it, [])[0], return_tensors="pt")["input_ids"]
            t = ids.shape[1] - 6  # "a . True or False ?"
            with torch.no_grad():
                att = model(input_ids=ids, output_attentions=True).attentions[1][0, 0, t]  # (T,)
            by_hand = col.norm() * ((cap["h"][t] @ W.T) ** 2).sum()
            assert (cap["out"][t] @ e).item() == pytest.approx(by_hand.item(), rel=1e-3, abs=1e-6)
            signal[is_found].append((cap["out"][t] @ e).item())
            if is_found:  # the fact "E is a." as stated (a statement of its own, not a rule's end)
                text = PromptBuilder().build(it, [])[0]
                m = re.search(r"(^|\. )" + re.escape(it["question"].replace(" not", "")), text)
                on_fact.append(att[len(tok(text[: m.end()])["input_ids"]) - 1].item())  # the fact's "."
    hook.remove()
    assert len(signal[True]) > 20 and len(signal[False]) > 10, {k: len(v) for k, v in signal.items()}
    pos, neg = np.array(signal[True]), np.array(signal[False])
    assert (pos[:, None] < neg[None]).mean() > 0.98, (pos, neg)
    assert np.mean(on_fact) > 0.9, on_fact
    held = {(id(p), str(i)) for p, i in wired_slices(model, found=True)}
    assert (id(mlp.gate_proj.weight), str((slice(0, FOUND_UNITS),))) in held
    assert (id(model.model.embed_tokens.weight), str((slice(None),))) in held
    with pytest.raises(ValueError, match="beyond the 16 code ones: got 16"):
        rs.build_model(tok, 2, 64, 4, position_heads=3, wired_lookup=3)
    assert len(held) == len(wired_slices(model)) + 10  # + head 0's v (2), o, the MLP's 3, the embedding, 3 gains


def test_held_slices_stay_at_their_first_values_for_the_hold_steps():
    """held / hold_steps: a held slice of a weight is back at its value before the first step after each
    of the first hold_steps steps while the rest of that weight trains; after them it trains too."""
    from mechprobe.training import Trainer

    from .conftest import tiny_llama

    model = tiny_llama(vocab_size=20)
    w = model.model.layers[1].self_attn.q_proj.weight
    first = w.detach().clone()
    tr = Trainer(model, 1e-2, 0.0, 1, 10, "cpu", held=[(w, (slice(0, 8),))], hold_steps=2)
    ids, answers = torch.randint(1, 20, (4, 6), generator=torch.Generator().manual_seed(0)), torch.tensor([3, 4, 3, 4])
    for step in (1, 2, 3):
        tr.train_step(ids, None, answers, use_bf16=False)
        held_same = torch.equal(w[:8], first[:8])
        assert held_same == (step <= 2) and not torch.equal(w[8:], first[8:]), step


def test_unique_splits_share_no_theory_or_prompt(tmp_path):
    """The reasoner's data (unique=True): no theory text, hence no theory + question, twice within or
    across the splits; the same draw without it repeats small theories (what the option removes)."""
    from mechprobe.proofwriter_gen import generate

    def texts(folder):
        cfg = {"depth": 1}
        files = rs.split_files(folder.parent.parent, cfg)
        items = {s: rs.read_questions(f) for s, f in files.items()}
        theories = {
            s: [" ".join(it["statements"]) for it in its if it["id"].endswith("/Q1")] for s, its in items.items()
        }
        prompts = {s: {" ".join(it["statements"]) + " " + it["question"] for it in its} for s, its in items.items()}
        return theories, prompts

    plain, _ = texts(generate(tmp_path / "plain", 1, (300, 60, 60), (2,), 0, 4))
    assert len(set(sum(plain.values(), []))) < sum(map(len, plain.values()))  # duplicates without unique
    th, prompts = texts(generate(tmp_path / "unique", 1, (300, 60, 60), (2,), 0, 4, unique=True))
    every = sum(th.values(), [])
    assert len(every) == len(set(every)) == 420
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]
    assert not prompts["val"] & prompts["test"]
    assert rs.data_config(1, (1, 1, 1), (2,), 4, 0)["unique"] is True
