import json

import numpy as np
import pytest

from mechprobe import ksmallest as ks
from mechprobe.utils import MechprobeError

from .conftest import shared_path


def test_gold_tree_hand_example():
    # sorted: 1 (pos 3), 4 (pos 1), 4 (pos 4), 9 ...; k=1 -> useful 1 and the first 4
    nums = [9, 4, 7, 1, 4]
    useful, step = ks.gold_tree(nums, 1)
    assert step == [-1, 1, -1, 0, -1]
    assert useful == [False, True, False, True, False]


def test_gold_tree_duplicates_ranked_by_position():
    nums = [3, 3, 3, 8]
    assert ks.gold_tree(nums, 2)[1] == [0, 1, 2, -1]
    r = ks.make_record(nums, 2)
    assert r["answer"] == 3


@pytest.mark.parametrize("dup", [True, False])
def test_generator_properties(dup):
    rng = np.random.default_rng(0)
    recs = ks.generate(list(range(30)), 200, 16, 3, dup, rng)
    for r in recs:
        nums = r["numbers"]
        assert r["answer"] == sorted(nums)[3]
        assert sum(r["useful"]) == 4
        useful_vals = sorted(nums[i] for i in range(16) if r["useful"][i])
        assert useful_vals == sorted(nums)[:4]
        root = r["step"].index(3)
        assert nums[root] == r["answer"]
        if not dup:
            assert len(set(nums)) == 16
    assert any(len(set(r["numbers"])) < 16 for r in recs) == dup


def test_generator_reproducible(tmp_path):
    ks.write_dataset(tmp_path / "a", list(range(50)), 1, sizes=(20, 5, 5), seed=7)
    ks.write_dataset(tmp_path / "b", list(range(50)), 1, sizes=(20, 5, 5), seed=7)
    ks.write_dataset(tmp_path / "c", list(range(50)), 1, sizes=(20, 5, 5), seed=8)
    a = (tmp_path / "a" / "train.jsonl").read_text()
    assert a == (tmp_path / "b" / "train.jsonl").read_text()
    assert a != (tmp_path / "c" / "train.jsonl").read_text()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["k"] == 1 and meta["vocab"] == list(range(50))


def test_cli_writes_dataset(tmp_path):
    from mechprobe import data

    data.main(["ksmallest", "--out", str(tmp_path / "d"), "--k", "0", "--vocab-size", "20", "--sizes", "10", "3", "3"])
    rows = ks.load_split(tmp_path / "d", "val")
    assert len(rows) == 3 and all(r["k"] == 0 for r in rows)


def test_k_outside_list_errors(tmp_path):
    with pytest.raises(MechprobeError, match="k=16 is outside the list"):
        ks.write_dataset(tmp_path / "x", list(range(50)), 16, sizes=(2, 2, 2))
    assert not (tmp_path / "x" / "meta.json").exists()


def test_malformed_jsonl_line_named(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    good = json.dumps(ks.make_record([3, 1, 2], 1))
    (d / "test.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(MechprobeError, match=r"test\.jsonl:2: malformed JSON line"):
        ks.load_split(d, "test")
    (d / "test.jsonl").write_text(good + "\n" + json.dumps({"numbers": [1, 2], "k": 5, "answer": 1}) + "\n")
    with pytest.raises(MechprobeError, match=r"test\.jsonl:2: k=5 is outside"):
        ks.load_split(d, "test")
    with pytest.raises(MechprobeError, match="data directory not found"):
        ks.load_split(tmp_path / "nope", "test")


def test_word_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = ks.build_word_tokenizer(range(100))
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    nums = [5, 99, 0, 42]
    ids = tok2(ks.prompt_text(nums), add_special_tokens=False)["input_ids"]
    assert len(ids) == 4
    assert tok2.decode(ids) == "5 99 0 42"
    assert ks.answer_token_id(tok2, 42) == ids[3]
    x, y = ks.encode_records(tok2, [ks.make_record(nums, 1)])
    assert x.tolist() == [ids] and y.tolist() == [ks.answer_token_id(tok2, 5)]


def test_real_gpt2_tokenizer_vocab():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared_path("tokenizers", "gpt2"))
    v = ks.single_token_numbers(tok, 577, max_number=3000)
    assert len(v) == 577 and v[511] == 1800
    with pytest.raises(MechprobeError, match="only 577 integers"):
        ks.single_token_numbers(tok, 578, max_number=3000)
    with pytest.raises(MechprobeError, match="not a single known token.*2999"):
        ks.check_vocab_tokens(tok, [1, 2, 2999])
    x, y = ks.encode_records(tok, [ks.make_record([1800, 3, 7], 0)])
    assert x.shape == (1, 3) and y.item() == tok(" 3")["input_ids"][0]
