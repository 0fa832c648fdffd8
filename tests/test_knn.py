"""The probe's kNN against sklearn's KNeighborsClassifier(8, weights="distance"), point by point."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from mechprobe import knn
from mechprobe.probing import ProbeData, curve_f1, group_folds


def sklearn_curves(X, y, folds):
    out = {"single": [], "cumulative": []}
    N, L, _ = X.shape
    for mode in out:
        for l in range(L):
            sel = [l] if mode == "single" else list(range(l + 1))
            pred = np.empty_like(y)
            for f in np.unique(folds):
                tr, te = folds != f, folds == f
                clf = KNeighborsClassifier(n_neighbors=min(8, int(tr.sum())), weights="distance")
                clf.fit(X[tr][:, sel].reshape(int(tr.sum()), -1), y[tr])
                pred[te] = clf.predict(X[te][:, sel].reshape(int(te.sum()), -1))
            out[mode].append(pred)
    return out


@pytest.mark.parametrize(
    "kind,N,L,D",
    [("structured", 1500, 6, 1), ("uniform", 1500, 5, 1), ("structured", 800, 4, 3), ("uniform", 30, 3, 1)],
)
def test_predictions_equal_sklearn(kind, N, L, D):
    rng = np.random.default_rng(N + L + D)
    y = rng.integers(0, 3, N)
    if kind == "structured":  # correlated over layers, with a class signal and an offset
        X = np.cumsum(rng.standard_normal((N, L, D)) * 0.3, axis=1) + 0.2 * y[:, None, None] + 5.0
    else:
        X = rng.random((N, L, D))
    folds = rng.integers(0, 2 + (D > 1), N)  # three folds for the 3-dimensional features
    ours = knn.fold_curves(X, y, folds)
    ref = sklearn_curves(X, y, folds)
    for mode in ("single", "cumulative"):
        for l in range(L):
            np.testing.assert_array_equal(ours[mode][l], ref[mode][l], err_msg=f"{mode} layer {l}")
            assert abs(knn.macro_f1(y, ours[mode][l], [0, 1, 2]) - f1_score(y, ref[mode][l], average="macro")) < 1e-9


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("path", ["compiled", "torch"])
def test_single_layer_paths_equal_sklearn(path, n_classes, monkeypatch):
    """The compiled one-sort-per-layer loops (numba) and the torch per-fold search, three folds."""
    if path == "compiled" and knn.numba is None:
        pytest.skip("numba is not installed")
    if path == "torch":
        monkeypatch.setattr(knn, "numba", None)
    rng = np.random.default_rng(11)
    N, L = 900, 4
    y = rng.integers(0, n_classes, N)
    X = rng.random((N, L, 1)) + 0.05 * y[:, None, None]
    X[:5, 0, 0], y[:5] = X[5:10, 0, 0], y[5:10]  # exact matches (same label: no tie in the choice of neighbours)
    folds = rng.integers(0, 3, N)
    got = knn.fold_curves(X, y, folds, cumulative=False)["single"]
    for l in range(L):
        pred = np.empty_like(y)
        for f in range(3):
            tr, te = folds != f, folds == f
            pred[te] = KNeighborsClassifier(8, weights="distance").fit(X[tr, l], y[tr]).predict(X[te, l])
        np.testing.assert_array_equal(got[l], pred, err_msg=f"layer {l}")


def test_tree_and_brute_searches_exact(monkeypatch):
    """The CPU's full searches (sorted run on 1 dimension, k-d tree up to KDTREE_MAX_DIMS, sklearn's brute
    force above), forced at a small size, keep the cumulative curve equal to sklearn's."""
    monkeypatch.setattr(knn, "SKLEARN_MIN_ROWS", 0)
    rng = np.random.default_rng(3)
    N, L = 1200, 9
    y = rng.integers(0, 2, N)
    X = np.cumsum(rng.standard_normal((N, L, 1)) * 0.3, axis=1) + 0.3 * y[:, None, None]
    tr, te = torch.as_tensor(X[:600]), torch.as_tensor(X[600:])
    calls = []
    search = knn._Prefix.search
    monkeypatch.setattr(
        knn._Prefix, "search", lambda self, q, lo, hi, c: calls.append(hi - lo) or search(self, q, lo, hi, c)
    )
    got = knn._cumulative(tr, torch.as_tensor(y[:600]), te, 8, 2, n_cand=16)
    assert {1, 2, L} <= set(calls) and max(calls) > knn.KDTREE_MAX_DIMS  # every kind of search ran
    for l in range(L):
        clf = KNeighborsClassifier(8, weights="distance").fit(X[:600, : l + 1, 0], y[:600])
        np.testing.assert_array_equal(got[l].numpy(), clf.predict(X[600:, : l + 1, 0]), err_msg=f"layer {l}")


def scan_split(tr, ytr, te, k=8, n_classes=2):
    """knn._cumulative_scan on a train / test split: the training rows fold 0, the queries fold 1."""
    X = np.concatenate([tr, te])
    fold = np.repeat([0, 1], [len(tr), len(te)])
    return knn._cumulative_scan(
        X, np.concatenate([ytr, np.zeros(len(te), int)]), fold, np.arange(len(tr), len(X)), k, n_classes
    )


@pytest.mark.parametrize("D", [1, 4])
def test_compiled_scan_equals_sklearn_with_duplicates_and_an_offset(D):
    """The CPU's cumulative curve for few dimensions (a scan along each prefix's principal axis): equal to
    sklearn with exact duplicate rows (distance 0, same label), a large common offset (rounding of the
    projections) and a class signal orthogonal to the principal axis (the scan must go far)."""
    if knn.numba is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7 + D)
    n, m, L = 700, 300, 4
    y = rng.integers(0, 2, n + m)
    spread = np.cumsum(rng.standard_normal((n + m, L, D)), axis=1)  # correlated over layers: the principal axis
    X = 1e3 + spread + 0.05 * (2 * y[:, None, None] - 1) * np.array([1.0, -1.0] * (L // 2))[None, :, None]
    X[n : n + 20], y[n : n + 20] = X[:20], y[:20]  # queries equal to training rows
    X[20:40], y[20:40] = X[:20], y[:20]  # duplicated training rows
    got = scan_split(X[:n], y[:n], X[n:])
    for l in range(L):
        clf = KNeighborsClassifier(8, weights="distance").fit(X[:n, : l + 1].reshape(n, -1), y[:n])
        np.testing.assert_array_equal(got[l], clf.predict(X[n:, : l + 1].reshape(m, -1)), err_msg=f"prefix {l}")


def test_compiled_scan_breaks_distance_ties_by_training_index():
    """Features on a coarse grid tie at the k-th distance with other labels: the scan keeps, among equal
    distances, the training rows of smaller index (a brute-force reference sorted by (distance, index))."""
    if knn.numba is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(2)
    n, m, L = 400, 150, 3
    X = rng.integers(0, 4, (n + m, L, 1)).astype(np.float64)
    y = rng.integers(0, 2, n + m)
    got = scan_split(X[:n], y[:n], X[n:])
    ties = 0
    for l in range(L):
        a, b = X[:n, : l + 1, 0], X[n:, : l + 1, 0]
        d2 = ((b[:, None, :] - a[None]) ** 2).sum(-1)  # (m, n)
        ref = []
        for q in range(m):
            order = np.lexsort((np.arange(n), d2[q]))[:8]  # by distance, then by index
            ties += d2[q, order[-1]] == np.sort(d2[q])[8]  # the 9th nearest ties with the 8th
            ref.append(knn.vote(torch.as_tensor(np.sqrt(d2[q, order]))[None], torch.as_tensor(y[order])[None], 2))
        np.testing.assert_array_equal(got[l], torch.cat(ref).numpy(), err_msg=f"prefix {l}")
    assert ties > 100  # the case is exercised


def test_small_candidate_sets_still_exact():
    """With 8 candidates per query the bound fails at almost every layer: the searches again must keep it exact."""
    rng = np.random.default_rng(5)
    N, L = 600, 8
    y = rng.integers(0, 2, N)
    X = rng.random((N, L, 1))
    tr, te = torch.as_tensor(X[:300]), torch.as_tensor(X[300:])
    got = knn._cumulative(tr, torch.as_tensor(y[:300]), te, 8, 2, n_cand=8)
    for l in range(L):
        clf = KNeighborsClassifier(8, weights="distance").fit(X[:300, : l + 1, 0], y[:300])
        np.testing.assert_array_equal(got[l].numpy(), clf.predict(X[300:, : l + 1, 0]))


def test_vote_hand_computed():
    d = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.5, 2.0], [1.0, 1.0, 4.0], [1.0, 1.0, 9.0]], dtype=torch.float64)
    lab = torch.tensor([[1, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 2]])
    # row 0: the zero-distance neighbour alone -> 1; row 1: class 0 has 2, class 1 has 1 + 0.5 -> 0;
    # row 2: class 1 has 1, class 0 has 1 + 0.25 -> 0; row 3: classes 0 and 1 tie at 1 -> 0 (smaller)
    assert knn.vote(d, lab, 3).tolist() == [1, 0, 0, 0]


def test_knn_predict_labels_and_fewer_rows_than_k():
    X = np.array([[0.0], [1.0], [10.0]])
    y = np.array(["a", "a", "b"])
    # k = 3: at 0.2, a: 1/0.2 + 1/0.8, b: 1/9.8; at 9.0, b: 1/1 beats a: 1/8 + 1/9
    assert knn.knn_predict(X, y, np.array([[0.2], [9.0]])).tolist() == ["a", "b"]
    assert knn.knn_predict(X, y, np.array([[10.0]])).tolist() == ["b"]  # exact match


def test_curve_f1_matches_probe_on_folds_grouped_by_example():
    rng = np.random.default_rng(0)
    feats = [rng.random((6, 3, 1)) for _ in range(50)]
    useful = [rng.integers(0, 2, 6) for _ in range(50)]
    data = ProbeData(feats, useful, [np.where(u, 0, -1) for u in useful])
    res = curve_f1(data.X, data.useful, data.group, 2, seed=3)
    folds = group_folds(data.group, 2, 3)
    ref = sklearn_curves(data.X, data.useful, folds)
    assert res["all"] == pytest.approx(f1_score(data.useful, ref["cumulative"][-1], average="macro"), abs=1e-9)
    assert res["single"][1] == pytest.approx(f1_score(data.useful, ref["single"][1], average="macro"), abs=1e-9)


def test_threads_setting_reaches_the_compiled_loops():
    if knn.numba is None:
        pytest.skip("numba is not installed")
    from mechprobe.utils import set_threads

    before_torch, before_numba = torch.get_num_threads(), knn.numba.get_num_threads()
    try:
        assert set_threads(1) == 1 and knn.numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before_torch)
        knn.numba.set_num_threads(before_numba)


def test_blocks_of_queries_do_not_change_the_answer(monkeypatch):
    """Searches and distances run in blocks of queries (bounded memory): blocks of 7 give sklearn's answer."""
    rng = np.random.default_rng(8)
    N, L = 400, 5
    y = rng.integers(0, 2, N)
    X = np.cumsum(rng.standard_normal((N, L, 2)) * 0.3, axis=1) + 0.3 * y[:, None, None]
    monkeypatch.setattr(knn, "_block", lambda m, per_query, budget=0: 7)
    got = knn._cumulative(torch.as_tensor(X[:200]), torch.as_tensor(y[:200]), torch.as_tensor(X[200:]), 8, 2, 16)
    for l in range(L):
        clf = KNeighborsClassifier(8, weights="distance").fit(X[:200, : l + 1].reshape(200, -1), y[:200])
        np.testing.assert_array_equal(got[l].numpy(), clf.predict(X[200:, : l + 1].reshape(200, -1)))


def test_radix_argsort_orders_float64_values():
    """The compiled sort keys on float32-rounded bits, then orders each run of equal keys by the float64
    values: negatives, zeros, exact ties, and values closer than a float32 step (runs short and long)."""
    if knn.numba is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(4)
    x = np.concatenate(
        [
            rng.standard_normal(3000) * 10.0 ** rng.integers(-6, 6, 3000),
            np.zeros(50),
            -np.zeros(5),
            np.repeat(rng.random(20), 7),  # exact ties
            1.0 + rng.random(30) * 1e-12,  # a short run of one float32 key
            0.5 + rng.random(500) * 1e-13,  # a long run (np.argsort inside)
            [np.inf, -np.inf],
        ]
    )
    x = x[rng.permutation(len(x))]
    n = len(x)
    work = (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.uint32), np.empty(n, np.uint32))
    order = knn._radix_argsort(x, *work, np.empty(2048, np.int64))
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(x[order], np.sort(x))


@pytest.mark.parametrize(
    "y",
    [
        np.array([1, 0, 1, 1, 0]),
        np.array([3, 7, 3, 0, 7], dtype=np.int32),  # gaps between the classes
        np.array([True, False, True]),
        np.array([-2, 5, -2]),  # negative: the np.unique path
        np.array(["b", "a", "b"]),
        np.array([2, 2, 2], dtype=np.uint8),
    ],
)
def test_label_encoding_equals_np_unique(y):
    classes, yi = knn._encode(y)
    ref_classes, ref_yi = np.unique(y, return_inverse=True)
    assert classes.dtype == ref_classes.dtype and np.array_equal(classes, ref_classes)
    assert np.array_equal(yi, ref_yi)
    back = knn._decode(classes, yi)
    assert back.dtype == y.dtype and np.array_equal(back, y)
