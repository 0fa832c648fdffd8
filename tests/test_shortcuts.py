"""Shortcut baselines (shortcuts.py) against hand counts."""

from mechprobe.shortcuts import accuracies, predictions


def item(q, a, stmts=("Bob is big.",)):
    return {"statements": list(stmts), "question": q, "answer": a}


def test_majority_and_not_rule_by_hand():
    train = [item("Bob is big.", "True")] * 3 + [item("Bob is not big.", "False")]
    items = [item("Al is red.", "True"), item("Al is not red.", "False"), item("Al is not kind.", "True")]
    p = predictions(train, items)
    assert p["majority"] == ["True"] * 3
    assert p["not_rule"] == ["True", "False", "False"]
    acc = accuracies(train, items, {"all": [0, 1, 2], "first": [0]})
    assert acc["all"]["majority"] == round(2 / 3, 4) and acc["all"]["not_rule"] == round(2 / 3, 4)
    assert acc["first"] == {"majority": 1.0, "not_rule": 1.0, "bag_of_words": acc["first"]["bag_of_words"]}


def test_bag_of_words_learns_a_word_that_gives_the_answer_away():
    train = [item("X is big.", "True", ["zap is here."])] * 20 + [item("X is big.", "False", ["zip is here."])] * 20
    items = [item("Y is big.", "True", ["zap is there."]), item("Y is big.", "False", ["zip is there."])]
    assert predictions(train, items)["bag_of_words"] == ["True", "False"]
    assert "bag_of_words" not in predictions(train[:20], items)  # one class: no classifier


def test_answer_profile_by_hand():
    from mechprobe.shortcuts import answer_profile

    items = [item("A is b.", "True"), item("A is not b.", "False"), item("A is not c.", "True")]
    prof = answer_profile(items, [[2.0, 1.0], [2.0, 1.0], [0.0, 1.0]])  # answers True, True, False
    assert prof["share_True"] == round(2 / 3, 4) and prof["share_False"] == round(1 / 3, 4)
    assert prof["accuracy_without_not"] == 1.0 and prof["accuracy_with_not"] == 0.0 and prof["n_with_not"] == 2


def test_size_prior_by_hand():
    """The majority answer of the training items of the same size and polarity; a cell without
    training items falls back to the overall majority; left out when items carry no group."""

    def g(q, a, n):
        return {**item(q, a), "group": n}

    train = [g("A is b.", "False", 2)] * 3 + [g("A is b.", "True", 2)] + [g("A is b.", "True", 8)] * 2
    train += [g("A is not b.", "True", 2)] * 2 + [g("A is not b.", "False", 8)]
    items = [g("C is d.", "True", 2), g("C is d.", "True", 8), g("C is not d.", "True", 2), g("C is not d.", "True", 4)]
    p = predictions(train, items)
    # overall majority: True 5 vs False 4; cells (2, +) False, (8, +) True, (2, not) True, (4, not) none
    assert p["size_prior"] == ["False", "True", "True", "True"]
    assert "size_prior" not in predictions([item("A is b.", "True")], [item("C is d.", "True")])
