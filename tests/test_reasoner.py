"""The ProofWriter reasoner: data, the training prompt (= the probe's), a short run, bad input."""

import json

import numpy as np
import pytest
import torch

from mechprobe import finetune_proofwriter as fp
from mechprobe import reasoner as rs
from mechprobe.incontext import PromptBuilder, encode_items
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
        MechprobeError, match=r"holds data of another configuration \(depth 1 \(folder\) vs 2 \(asked\)"
    ):
        fp.main(["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "r"), *SMALL, "--depth", "2"])
    folders = ["--data-dir", str(tmp_path / "x"), "--out-dir", str(tmp_path / "r")]
    with pytest.raises(MechprobeError, match="depth=7: expected a question depth between 0 and 5"):
        fp.main([*folders, *SMALL, "--depth", "7"])
    with pytest.raises(MechprobeError, match="groups=4 80: expected numbers of statements between 1 and 40"):
        fp.main([*folders, *SMALL[:5], "4", "80", *SMALL[7:]])
    with pytest.raises(MechprobeError, match=r"^hidden=30 is not a multiple of heads=4$"):
        fp.main([*folders, *SMALL, "--hidden", "30", "--heads", "4"])
    assert not (tmp_path / "x").exists()


def test_options_run_and_resume_check(trained, tmp_path):
    """A run without recall, with another RoPE base and positive phase trains and records its settings;
    its checkpoint does not resume under other settings (the batches and losses would differ)."""
    d, _ = trained
    args = ["--data-dir", str(d / "data"), "--out-dir", str(tmp_path / "p"), *SMALL]
    res = fp.main([*args, "--recall", "0", "--rope-theta", "1e4", "--positive-steps", "3"])
    assert res["steps"] == 12 and 0 <= res["test"]["accuracy"] <= 1
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["recall"] == 0 and cfg["positive_steps"] == 3
    assert cfg["model_config"]["rope_parameters"]["rope_theta"] == 1e4
    assert cfg["model_config"]["attention_bias"] is False and cfg["model_config"]["tie_word_embeddings"] is False
    (tmp_path / "p" / "status.json").unlink()  # an unfinished run: the checkpoint is read to resume
    with pytest.raises(MechprobeError, match=r"recall=0.0 -> 1.0"):
        fp.main([*args, "--rope-theta", "1e4", "--positive-steps", "3"])


def test_positive_phase_draws_only_questions_without_not(trained):
    """POSITIVE_STEPS=P: the first P batches (here into epoch 1) hold only questions without "not", whole
    theories' (a batch packs a theory's positive questions together); after them the batches are those
    of a run without the phase."""
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    train, spe = splits["train"], len(rs.PromptTask(tok, splits, 16, 0).epoch_batches(0))
    assert rs.is_negated("Bob is not big.") and not rs.is_negated("Bob is big.") and not rs.is_negated("Nothing.")
    P = spe + 2
    task = rs.PromptTask(tok, splits, 16, 0, positive_steps=P)
    steps = [b for e in (0, 1) for b in task.epoch_batches(e)]
    th = task.theory["train"]
    for b in steps[:P]:
        assert not any(" not " in train[int(i)]["question"] for i in b) and len(b) == 16
        runs = np.flatnonzero(np.diff(th[b.numpy()])) + 1
        assert len(runs) + 1 == len(set(th[b.numpy()].tolist()))  # each theory's questions together
    assert any(" not " in train[int(i)]["question"] for b in steps[P:] for i in b)
    plain = rs.PromptTask(tok, splits, 16, 0).epoch_batches(1)
    assert [b.tolist() for b in steps[P:]] == [b.tolist() for b in plain[P - spe :]]  # after it: as before
    assert [b.tolist() for b in task.epoch_batches(1)] == [b.tolist() for b in task.epoch_batches(1)]  # seeded


def test_next_token_loss_ends_at_the_question(trained):
    """A packed batch's next-token targets are, prompt by prompt, its words up to the question's "."
    (read back from the text), never the answer choices "True or False ?" (whose fixed targets, "." ->
    "True" and "or" -> "False", would disagree with the answer read there)."""
    from mechprobe.models import load_tokenizer

    d, _ = trained
    files = rs.split_files(d / "data", json.loads((d / "data" / "meta.json").read_text()))
    tok = load_tokenizer(d / "run" / "best")
    splits = {s: rs.read_questions(f) for s, f in files.items()}
    task = rs.PromptTask(tok, splits, 16, 0)
    idx = task.epoch_batches(1)[0]
    got = tok.convert_ids_to_tokens(task.batch(idx)[0].lm_tgt.tolist())
    want = []
    for i in idx.tolist():
        text, _, (_, qe) = PromptBuilder().build(splits["train"][i], [])
        assert text[qe:] == " True or False?"
        want += tok.tokenize(text[:qe])[1:]  # a prompt's first token is predicted from nothing
    assert got == want and len(want) > 16
    assert not {"True", "or", "?"} & set(got) and "." in got


def test_learning_rate_schedule_by_hand():
    """Warm-up to LR, then a linear decay from the warm-up's end to 0 at the last step: the rates the
    optimizer uses at steps 0..9."""
    from mechprobe.training import Trainer

    tr = Trainer(torch.nn.Linear(2, 2), lr=1.0, weight_decay=0.0, warmup=2, total=10, dev="cpu")
    rates = []
    for _ in range(10):
        rates.append(tr.opt.param_groups[0]["lr"])
        tr.opt.step()
        tr.sched.step()
    assert rates == pytest.approx([0.5, 1, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


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
