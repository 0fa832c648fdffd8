"""Shortcut baselines: what an answer rule that does not reason scores on the same test items.

An accuracy means something only beside these, computed on the same items:
  majority      the answer most frequent among the training items, for every item
  not_rule      "False" when the question contains the word "not", else "True" (on ProofWriter's
                proof-bearing CWA questions the positive facts make this rule exact)
  size_prior    the answer most frequent among the training items of the same number of statements
                and the same polarity (with or without "not"): the draw's size shortcut (items that
                carry "group")
  bag_of_words  a logistic regression on word counts of the statements and the question (each
                word prefixed with where it occurs: s: statement, q: question), trained on the
                training items
Each is reported over all items and per depth (the subsets of llmprobe.item_subsets).
"""

import re

import numpy as np

_NOT = re.compile(r"\bnot\b", re.I)


def _words(text):
    return re.findall(r"[a-z]+", text.lower())


def _doc(it):
    return " ".join(
        ["s:" + w for s in it["statements"] for w in _words(s)] + ["q:" + w for w in _words(it["question"])]
    )


def predictions(train, items, words=("True", "False")):
    """{baseline: predicted answer word per item}. train: items with answers (the demonstration pool or
    the training split); with fewer than two answer classes there, the bag of words is left out."""
    answers = [it["answer"] for it in train if it["answer"] in words]
    out = {}
    if answers:
        top = max(words, key=answers.count)
        out["majority"] = [top] * len(items)
    if list(words) == ["True", "False"]:
        out["not_rule"] = ["False" if _NOT.search(it["question"]) else "True" for it in items]
    if answers and all("group" in it for it in list(train) + list(items)):
        out["size_prior"] = _size_prior(train, items, words, out["majority"][0] if items else words[0])
    if len(set(answers)) > 1:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression

        fit = [it for it in train if it["answer"] in words]
        vec = CountVectorizer(token_pattern=r"\S+", lowercase=False)
        X = vec.fit_transform([_doc(it) for it in fit])
        clf = LogisticRegression(max_iter=2000).fit(X, [it["answer"] for it in fit])
        out["bag_of_words"] = list(clf.predict(vec.transform([_doc(it) for it in items])))
    return out


def _size_prior(train, items, words, fallback):
    """The majority answer of the training items with the same (group, "not" or not), per item
    (`fallback` for a cell without training items)."""
    from collections import Counter

    def cell(it):
        return it["group"], bool(_NOT.search(it["question"]))

    counts = {}
    for it in train:
        if it["answer"] in words:
            counts.setdefault(cell(it), Counter())[it["answer"]] += 1
    top = {k: max(words, key=lambda w: (c[w], -list(words).index(w))) for k, c in counts.items()}
    return [top.get(cell(it), fallback) for it in items]


def accuracies(train, items, subsets, words=("True", "False")):
    """{subset name: {baseline: accuracy}} over the index lists of `subsets` ({name: indices})."""
    preds = predictions(train, items, words)
    gold = np.array([it["answer"] for it in items])
    out = {}
    for name, idx in subsets.items():
        if not idx:
            continue
        out[name] = {b: round(float(np.mean(np.array(p)[idx] == gold[idx])), 4) for b, p in preds.items()}
    return out


def answer_profile(items, scores, words=("True", "False")):
    """How the model answers, beside the rules above: the share of each answer word among its answers,
    and its accuracy on the questions with and without "not" (the not rule's two halves)."""
    pred = np.asarray(scores).argmax(1)
    gold = np.array([list(words).index(it["answer"]) if it["answer"] in words else -1 for it in items])
    neg = np.array([bool(_NOT.search(it["question"])) for it in items])
    out = {f"share_{w}": round(float(np.mean(pred == i)), 4) for i, w in enumerate(words)}
    for name, sel in (("with_not", neg), ("without_not", ~neg)):
        ok = sel & (gold >= 0)
        out[f"accuracy_{name}"] = round(float(np.mean(pred[ok] == gold[ok])), 4) if ok.any() else None
        out[f"n_{name}"] = int(ok.sum())
    return out
