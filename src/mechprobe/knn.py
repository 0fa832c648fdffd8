"""Exact k-nearest-neighbour classification for the probe, with per-layer curves that scale.

Prediction rule (the same as sklearn's KNeighborsClassifier(n_neighbors=k, weights="distance")):
the k training rows nearest in Euclidean distance vote with weight 1/d; when a query has
training rows at distance 0, those vote with weight 1 and the others 0; the class with the
largest total wins, the smallest class index on a tie.

Features come layer by layer: X (N, L, D) (D = 1 head-averaged, or H per head). Two curves:
  * single:     layer l alone. With D = 1 this is a one-dimensional search: the k nearest of a
                query are a contiguous run of the sorted training values next to its insertion
                point. On the CPU (numba): one radix sort of all N values per layer serves every
                fold, and each query's run is found next to its insertion point, O(L N F k); on a GPU
                (torch): per fold, a sort and a binary search of log2(k) steps for all layers at
                once, O(L (n log n + m log k)).
  * cumulative: layers 0..l. The squared distance is additive over layers,
                    d2_l(i, j) = d2_{l-1}(i, j) + ||x_il - x_jl||^2      (non-decreasing in l),
                so each query keeps C candidates (its C nearest at the prefix where they were
                chosen, l0) and a bound tau: every other row had d2_{l0} >= tau, hence
                d2_l >= tau for all l >= l0. While the k-th nearest candidate has d2_l <= tau,
                the candidates' top k is the exact top k; only the queries whose bound fails are
                searched again in full (a matrix product over the prefix). The all-layers probe
                is the last point of this curve. With few dimensions (L D <= SCAN_MAX_DIMS) on the
                CPU, a compiled scan instead: per prefix the rows sorted by their projection on the
                first principal axis u; since (u.(x - q))^2 <= ||x - q||^2, each query scans
                outward from its place in that order and stops once the projected gap exceeds
                its k-th distance.
Full searches (a run of sorted values on one dimension; on the CPU a k-d tree up to KDTREE_MAX_DIMS
dimensions and sklearn's compiled brute force above; torch, ||b||^2 - 2 a.b in float32, on a
GPU) choose candidates, with a margin on tau for their rounding; the candidates' distances are
then computed exactly from differences. The rest runs in torch on the given device (a GPU when
the model is on one), in blocks of queries so memory stays bounded; torch and sklearn spread the
work over the machine's cores.
"""

import numpy as np
import torch

try:  # compiled loops for the single-layer curves on the CPU; without numba, the torch path below
    import numba
except ImportError:  # pragma: no cover - numba is in requirements.txt
    numba = None

N_NEIGHBORS = 8
_U = 1.2e-7  # twice float32's unit roundoff: the GPU search's rounding margin per summed term (see _Prefix.search)
_U64 = 4.5e-16  # the same for the float64 search on the CPU
_REL = 1e-12  # relative margin on tau for searches whose distances come from differences, as exact()'s do
SCAN_MAX_DIMS = 16  # up to this many dimensions the compiled scan along the principal axis beats the bound
SKLEARN_MIN_ROWS = 4096  # below this many training rows a call to sklearn costs more than torch's search
KDTREE_MAX_DIMS = 5  # up to this many dimensions a k-d tree answers a re-search faster than brute force (measured)


def vote(d, lab, n_classes):
    """Distance-weighted vote. d (m, k) distances, lab (m, k) class indices -> (m,) class index."""
    zero = d == 0
    w = torch.where(zero.any(1, keepdim=True), zero.to(d.dtype), 1.0 / d)
    scores = torch.zeros(d.shape[0], n_classes, dtype=d.dtype, device=d.device).scatter_add_(1, lab, w)
    return scores.argmax(1)  # first maximum: the smallest class index on a tie


def _block(m, per_query, budget=1 << 23):
    """Queries per block so that the largest per-block tensor (float64) stays around 64 MiB."""
    return int(max(1, min(m, budget // max(1, per_query))))


class _Prefix:
    """Training rows flattened over layers, with cumulative squared norms per layer prefix.

    Rows are centred on the training mean (distances do not change; the dot-product search
    loses less to rounding). The search runs in float32, the exact distances in float64.
    """

    def __init__(self, tr):  # tr (n, L, D)
        self.n, self.L, self.D = tr.shape
        self.mean = tr.mean(0, keepdim=True)
        tr = tr - self.mean
        self.flat = tr.reshape(self.n, -1)  # (n, L*D) float64
        self.flat32 = self.flat.float()
        self.sq = (tr * tr).sum(2).cumsum(1)  # (n, L): ||x_{0..l}||^2
        self.index = {}  # (a, b) -> search index of the columns [a, b) of flat (sorted values or a KDTree), built once

    def center(self, te):
        """Queries (m, L, D) -> centred and flattened (m, L*D)."""
        return (te - self.mean).reshape(te.shape[0], -1)

    def search(self, te_flat, lo, hi, c):
        """Candidates among all rows for centred queries te_flat (b, L*D) on layers [lo, hi):
        (idx (b, c), tau (b,)): every row outside idx has squared distance >= tau.

        On the CPU with many rows, sklearn's brute-force search (compiled, multi-threaded, float64);
        otherwise torch in float32, ranking rows by ||x||^2 - 2 q.x (||q||^2 is a constant of the
        query's row)."""
        a, b = lo * self.D, hi * self.D
        tr_sq = self.sq[:, hi - 1] - (self.sq[:, lo - 1] if lo > 0 else 0)
        q = te_flat[:, a:b]
        q_sq = (q * q).sum(1)
        if c >= self.n:
            idx = torch.arange(self.n, device=q.device).expand(q.shape[0], self.n)
            return idx, torch.full((q.shape[0],), float("inf"), dtype=q.dtype, device=q.device)
        if b - a == 1:  # one dimension: the c nearest are a run of the sorted values
            if (a, b) not in self.index:
                self.index[a, b] = torch.sort(self.flat[:, a])
            s, order = self.index[a, b]
            x = q[:, 0]
            lo = _runs(s[None], x[None].contiguous(), c)[0]
            ext = torch.cat([s.new_full((1,), -float("inf")), s, s.new_full((1,), float("inf"))])
            out = torch.minimum(x - ext[lo], ext[lo + c + 1] - x)  # the nearest value outside the run
            return order[lo[:, None] + torch.arange(c, device=q.device)], out * out * (1 - _REL)
        if q.device.type == "cpu" and self.n >= SKLEARN_MIN_ROWS and b - a <= KDTREE_MAX_DIMS:
            from sklearn.neighbors import KDTree

            if (a, b) not in self.index:
                self.index[a, b] = KDTree(self.flat[:, a:b].numpy())
            d, idx = self.index[a, b].query(q.numpy(), k=c)
            return torch.from_numpy(idx), torch.from_numpy(d[:, -1] ** 2) * (1 - _REL)
        if q.device.type == "cpu" and self.n >= SKLEARN_MIN_ROWS:
            from sklearn.neighbors import NearestNeighbors

            d, idx = (
                NearestNeighbors(n_neighbors=c, algorithm="brute").fit(self.flat[:, a:b].numpy()).kneighbors(q.numpy())
            )
            # float64 rounding of ||q||^2 + ||x||^2 - 2 q.x over F dimensions: at most (F + 4) u64 (2 ||x||^2 + ||q||^2)
            tau = torch.from_numpy(d[:, -1] ** 2) - _U64 * (b - a + 4) * (2 * tr_sq.max() + q_sq)
            return torch.from_numpy(idx), tau
        idx, top = [], []
        bs = _block(q.shape[0], self.n)
        for r0 in range(0, q.shape[0], bs):  # blocks of queries: one (bs, n) matrix at a time
            part = torch.addmm(tr_sq.float()[None, :], q[r0 : r0 + bs].float(), self.flat32[:, a:b].T, alpha=-2)
            vals, i = torch.topk(part, c, dim=1, largest=False, sorted=False)
            idx.append(i)
            top.append(vals.max(1).values.double())
        # float32 rounding of ||x||^2 - 2 q.x over F = b - a dimensions is at most (F + 4) u (2 ||x||^2 + ||q||^2)
        tau = torch.cat(top) + q_sq - _U * (b - a + 4) * (2 * tr_sq.max() + q_sq)
        return torch.cat(idx), tau

    def exact(self, te_flat, idx, lo, hi):
        """Exact squared distances (b, c) from each query to its candidates on layers [lo, hi)."""
        a, b = lo * self.D, hi * self.D
        out = torch.empty(idx.shape, dtype=self.flat.dtype, device=idx.device)
        bs = _block(idx.shape[0], idx.shape[1] * (b - a))
        for r0 in range(0, idx.shape[0], bs):  # blocks of queries: one (bs, c, F) difference at a time
            diff = te_flat[r0 : r0 + bs, None, a:b] - self.flat[idx[r0 : r0 + bs], a:b]
            out[r0 : r0 + bs] = (diff * diff).sum(-1)
        return out


def _finish(d2, idx, y, k, n_classes):
    """Top k of the candidates' squared distances -> predicted class per query."""
    top, j = torch.topk(d2, k, dim=1, largest=False)
    return vote(top.sqrt(), y[idx.gather(1, j)], n_classes)


def _cumulative(tr, y, te, k, n_classes, n_cand):
    """Predictions (L, m) for every prefix of layers 0..l: layer by layer for all queries, one search
    per layer for the queries whose bound failed (the searches and distances run in blocks)."""
    P = _Prefix(tr)
    m, L, _ = te.shape
    k = min(k, P.n)
    c = min(P.n, max(n_cand, 2 * k))
    out = torch.empty(L, m, dtype=torch.long, device=te.device)
    q = P.center(te)  # (m, L*D)
    idx, tau = P.search(q, 0, 1, c)  # (m, c), (m,)
    d2 = P.exact(q, idx, 0, 1)  # (m, c)
    for l in range(L):
        if l > 0:
            d2 += P.exact(q, idx, l, l + 1)
        bad = torch.kthvalue(d2, k, dim=1).values > tau
        if bad.any():  # the bound failed: search these queries again over layers 0..l
            rows = bad.nonzero().squeeze(1)
            i2, t2 = P.search(q[rows], 0, l + 1, c)
            idx[rows], tau[rows] = i2, t2
            d2[rows] = P.exact(q[rows], i2, 0, l + 1)
        out[l] = _finish(d2, idx, y, k, n_classes)
    return out


def _scan_loops(S, sp, sy, si, sf, Q, qp, qf, kf, n_classes, tol, out):
    """Compiled body of _cumulative_scan for one prefix: rows S (n, F) sorted by their projection sp (n,)
    on a unit vector u, with labels sy, row indices si and folds sf; queries Q (m, F), their projections
    qp and folds qf; a query's neighbours are the rows of the other folds, kf[fold] of them. From each
    query's place in the order the rows are visited by |u.(x - q)|, the nearer side first, keeping the
    k smallest squared distances (computed from differences; among equal distances the smaller row
    index); since (u.(x - q))^2 <= ||x - q||^2, the scan stops once |u.(x - q)| - tol (tol: a bound
    on the projections' rounding) exceeds the k-th distance: every row not visited is strictly farther."""
    n, F = S.shape
    for i in numba.prange(Q.shape[0]):
        k, f0 = kf[qf[i]], qf[i]
        bd, bl, bi = np.full(k, np.inf), np.zeros(k, np.int64), np.full(k, n, np.int64)  # best k by (d2, index)
        x = qp[i]
        right = np.searchsorted(sp, x)
        left = right - 1
        while left >= 0 or right < n:
            dl = x - sp[left] if left >= 0 else np.inf
            dr = sp[right] - x if right < n else np.inf
            if dl <= dr:
                j, dp = left, dl
                left -= 1
            else:
                j, dp = right, dr
                right += 1
            gap = dp - tol
            if gap > 0 and gap * gap > bd[k - 1]:
                break
            if sf[j] == f0:  # the query's own fold: not a training row
                continue
            d2 = 0.0
            for f in range(F):
                t = S[j, f] - Q[i, f]
                d2 += t * t
            _insert(bd, bl, bi, d2, sy[j], si[j], k)
        score = np.zeros(n_classes)
        zero = bd[0] == 0.0
        for t in range(k):
            if zero:
                score[bl[t]] += 1.0 if bd[t] == 0.0 else 0.0
            else:
                score[bl[t]] += 1.0 / np.sqrt(bd[t])
        best = 0
        for c in range(1, n_classes):
            if score[c] > score[best]:
                best = c
        out[i] = best


def _insert(bd, bl, bi, d2, label, r, k):
    """Insert row r (squared distance d2) into the best k (bd ascending, ties by index bi) when it belongs."""
    if d2 < bd[k - 1] or (d2 == bd[k - 1] and r < bi[k - 1]):
        p = k - 1
        while p > 0 and (bd[p - 1] > d2 or (bd[p - 1] == d2 and bi[p - 1] > r)):
            bd[p], bl[p], bi[p] = bd[p - 1], bl[p - 1], bi[p - 1]
            p -= 1
        bd[p], bl[p], bi[p] = d2, label, r


def _cumulative_scan(X, y, fold, queries, k, n_classes):
    """Out-of-fold predictions (L, len(queries)) for every prefix of layers 0..l, exact, for few
    dimensions on the CPU (compiled): X (N, L, D) float64, y (N,) class indices, fold (N,) fold
    indices 0..F-1; each query row's neighbours are the rows of the other folds. Per prefix all rows
    are sorted once by their projection on the first principal axis of the prefix (features of nearby
    layers are correlated, so most of the spread lies along it; any unit vector keeps the search exact)
    and each query scans outward from its place in that order (_scan_loops), skipping its own fold."""
    X = np.asarray(X, dtype=np.float64)
    N, L, D = X.shape
    A = X.reshape(N, -1)
    y, fold = np.ascontiguousarray(y, dtype=np.int64), np.ascontiguousarray(fold, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.int64)
    kf = np.minimum(k, N - np.bincount(fold)).astype(np.int64)  # neighbours per query fold: <= its training rows
    scale = np.abs(A).max(initial=0.0)
    C = A - A.mean(0)
    cov = C.T @ C
    out = np.empty((L, len(queries)), dtype=np.int64)
    for l in range(L):
        F = (l + 1) * D
        u = np.linalg.eigh(cov[:F, :F])[1][:, -1] if F > 1 else np.ones(1)  # the first principal axis
        p = A[:, :F] @ u
        order = np.argsort(p, kind="stable")
        tol = 4 * F * np.finfo(np.float64).eps * scale  # bounds the rounding of a projection difference
        S, Q = np.ascontiguousarray(A[order, :F]), np.ascontiguousarray(A[queries, :F])
        _scan_loops(S, p[order], y[order], order, fold[order], Q, p[queries], fold[queries], kf, n_classes, tol, out[l])
    return out


def _general(tr, y, te, k, n_classes):
    """Predictions (m,) on all features of tr (n, F), te (m, F): a search for 4k candidates, checked
    exact by its bound; queries whose bound fails search again with 8 times as many. With few
    dimensions on the CPU, the compiled scan along the principal axis (_cumulative_scan) instead."""
    if tr.device.type == "cpu" and numba is not None and tr.shape[1] <= SCAN_MAX_DIMS:
        X = torch.cat([tr, te]).numpy()[:, None, :]  # the training rows are fold 0, the queries fold 1
        fold = np.repeat([0, 1], [len(tr), len(te)])
        lab = np.concatenate([y.numpy(), np.zeros(len(te), np.int64)])
        pred = _cumulative_scan(X, lab, fold, np.arange(len(tr), len(X)), k, n_classes)
        return torch.from_numpy(pred[0])
    P = _Prefix(tr[:, None, :])
    k = min(k, P.n)
    out = torch.empty(te.shape[0], dtype=torch.long, device=te.device)
    q = P.center(te[:, None, :])
    rows = torch.arange(q.shape[0], device=q.device)
    c = min(P.n, 4 * k)
    while len(rows):
        idx, tau = P.search(q[rows], 0, 1, c)
        d2 = P.exact(q[rows], idx, 0, 1)
        ok = torch.kthvalue(d2, k, dim=1).values <= tau
        out[rows[ok]] = _finish(d2[ok], idx[ok], y, k, n_classes)
        rows, c = rows[~ok], min(P.n, 8 * c)
    return out


def _one_dim(tr, y, te, k, n_classes):
    """Predictions (L, m) for every layer alone, one-dimensional features tr (n, L), te (m, L).

    Per layer the training values are sorted once; the k nearest of a query form a contiguous run
    [lo, lo + k) of the sorted values with lo in [pos - k, pos] (pos: the query's insertion point),
    and lo is the first start whose left end is no farther than the value just past its right end,
    found by a binary search of ceil(log2(k + 1)) steps. All layers at once; no top-k."""
    n, L = tr.shape
    k = min(k, n)
    s, order = torch.sort(tr.T.contiguous(), dim=1)  # (L, n)
    ys = y[order]  # (L, n)
    x = te.T.contiguous()  # (L, m)
    lo = _runs(s, x, k)
    idx = lo[:, :, None] + torch.arange(k, device=s.device)  # (L, m, k)
    d = _take(s, idx) - x[:, :, None]  # (L, m, k)
    lab = _take(ys, idx)
    pred = vote(d.abs().reshape(-1, k), lab.reshape(-1, k), n_classes)
    return pred.reshape(L, -1)


def _runs(s, x, k):
    """Start lo (L, m) of the run [lo, lo + k) of sorted values s (L, n) nearest to each x (L, m)."""
    n = s.shape[1]
    pos = torch.searchsorted(s, x)
    lo, hi = (pos - k).clamp(0, n - k), pos.clamp(0, n - k)  # the answer lies in [lo, hi]
    inf = torch.full((s.shape[0], 1), float("inf"), dtype=s.dtype, device=s.device)
    ext = torch.cat([s, inf], 1)  # s[n] = +inf: nothing lies past the end
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        right = (x - ext.gather(1, mid)) > (ext.gather(1, mid + k) - x)  # the run should start further right
        lo = torch.where(right & (lo < hi), mid + 1, lo)
        hi = torch.where(~right & (lo < hi), mid, hi)
    return lo


def _radix_argsort(x, order, tmp, keys, ktmp, cnt):
    """Argsort of float64 x (n,) in O(n): an LSD radix sort (3 passes of 11 bits) on the float32-rounded
    values (rounding is monotone: x_i <= x_j implies f32(x_i) <= f32(x_j)), then each run of equal
    float32 keys put in float64 order (insertion; np.argsort for a run longer than 64). order, tmp
    (n,) int64, keys, ktmp (n,) uint32, cnt (2048,) int64 are work arrays; returns the order."""
    n = x.shape[0]
    for i in range(n):  # float bits -> unsigned keys in the same order (negatives flipped)
        kb = np.float32(x[i]).view(np.uint32)
        keys[i] = ~kb if kb >> 31 else kb | np.uint32(0x80000000)
        order[i] = i
    for shift in (0, 11, 22):
        cnt[:] = 0
        for i in range(n):
            cnt[(keys[i] >> shift) & 2047] += 1
        tot = 0
        for d in range(2048):
            c = cnt[d]
            cnt[d] = tot
            tot += c
        for i in range(n):
            d = (keys[i] >> shift) & 2047
            j = cnt[d]
            cnt[d] = j + 1
            tmp[j], ktmp[j] = order[i], keys[i]
        order, tmp, keys, ktmp = tmp, order, ktmp, keys
    i = 0
    while i < n:
        j = i + 1
        while j < n and keys[j] == keys[i]:
            j += 1
        if j - i > 64:
            run = order[i:j].copy()
            order[i:j] = run[np.argsort(x[run])]
        else:
            for a in range(i + 1, j):
                v, xv, b = order[a], x[order[a]], a - 1
                while b >= i and x[order[b]] > xv:
                    order[b + 1] = order[b]
                    b -= 1
                order[b + 1] = v
        i = j
    return order


def _run_vote(vals, labs, lo, kk, xq, score, n_classes):
    """The distance-weighted vote of the run vals[lo : lo + kk] (labels labs) for the value xq (see vote);
    score (n_classes,) is a work array."""
    same = 1
    for t in range(lo + 1, lo + kk):
        same &= labs[t] == labs[lo]
    if same:  # one label among the neighbours: the vote needs no weights
        return labs[lo]
    zeros = 0
    for t in range(lo, lo + kk):
        zeros += vals[t] == xq
    if zeros == 0 and n_classes == 2:  # two classes: two sums, no scatter
        s, s1 = 0.0, 0.0
        for t in range(lo, lo + kk):  # no branch on the label
            w = 1.0 / abs(vals[t] - xq)
            s += w
            s1 += w * labs[t]
        return np.int64(s1 > s - s1)
    score[:] = 0.0
    for t in range(lo, lo + kk):
        if zeros == 0:
            score[labs[t]] += 1.0 / abs(vals[t] - xq)
        elif vals[t] == xq:
            score[labs[t]] += 1.0
    best = 0
    for c in range(1, n_classes):
        if score[c] > score[best]:
            best = c
    return np.int64(best)


def _one_dim_folds_loops(X, y, fold, n_folds, k, n_classes, out):
    """Compiled body of _one_dim_folds: per layer (in parallel) one sort of all N values; per fold one
    pass that lists the training values in order (with k sentinels of -inf / +inf on either side) and
    one that finds each query's run of k nearest next to its insertion point (a, the number on its
    left, counts the i < k with left_i <= right_{k-1-i}: a monotone predicate) and votes."""
    N, L = X.shape
    for l in numba.prange(L):
        x = X[:, l].copy()  # this layer's values, contiguous (read from X (N, L) in the threads)
        order = _radix_argsort(
            x,
            np.empty(N, np.int64),
            np.empty(N, np.int64),
            np.empty(N, np.uint32),
            np.empty(N, np.uint32),
            np.empty(2048, np.int64),
        )
        sv, sf, sy = x[order], fold[order], y[order]  # values, folds and labels in sorted order
        pred = np.empty(N, np.int64)  # in sorted order
        vals, labs = np.empty(N + 2 * k), np.zeros(N + 2 * k, np.int64)
        qpos, qbelow = np.empty(N, np.int64), np.empty(N, np.int64)  # each query's sorted position, its index in vals
        score = np.empty(n_classes)
        vals[:k] = -np.inf
        for f in range(n_folds):
            nt, nq = 0, 0
            for p in range(N):  # branch-free: every value written, the counters advance by fold
                isq = sf[p] == f
                vals[k + nt], labs[k + nt] = sv[p], sy[p]
                qpos[nq], qbelow[nq] = p, k + nt  # below: index in vals of the first training value after it
                nt += 1 - isq
                nq += isq
            vals[k + nt : 2 * k + nt] = np.inf
            kk = min(k, nt)
            for j in range(nq):
                p, below = qpos[j], qbelow[j]
                xq, a = sv[p], 0
                for t in range(kk):
                    a += (xq - vals[below - 1 - t]) <= (vals[below + kk - 1 - t] - xq)
                pred[p] = _run_vote(vals, labs, below - a, kk, xq, score, n_classes)  # vals[lo : lo + kk]: nearest
        for p in range(N):
            out[l, order[p]] = pred[p]


if numba is not None:
    _radix_argsort = numba.njit(cache=True)(_radix_argsort)
    _run_vote = numba.njit(cache=True, inline="always", error_model="numpy")(_run_vote)
    # error_model="numpy": no zero check on the divisions (the vote divides only by nonzero distances)
    _one_dim_folds_loops = numba.njit(parallel=True, cache=True, error_model="numpy")(_one_dim_folds_loops)
    _insert = numba.njit(cache=True, inline="always")(_insert)
    _scan_loops = numba.njit(parallel=True, cache=True, error_model="numpy")(_scan_loops)


def _one_dim_folds(X, y, fold, k, n_classes):
    """Out-of-fold predictions (L, N) for every layer alone: X (N, L) float64, y (N,) class indices,
    fold (N,) fold indices 0..F-1; every fold must leave training rows. One radix sort per layer serves
    every fold, O(L N (1 + F k)), compiled (numba)."""
    out = np.empty((X.shape[1], X.shape[0]), dtype=np.int64)
    X = np.asarray(X, dtype=np.float64)  # any strides: each layer is copied out in its thread
    y, fold = np.ascontiguousarray(y, dtype=np.int64), np.ascontiguousarray(fold, dtype=np.int64)
    _one_dim_folds_loops(X, y, fold, int(fold.max()) + 1, k, n_classes, out)
    return out


def _encode(y):
    """(classes, index of each label in classes): np.unique(y, return_inverse=True), by counting when y holds
    small non-negative integers (labels of the probe: 0/1, steps), 10 x faster on 65,536 rows."""
    y = np.asarray(y)
    if y.dtype.kind in "iub" and y.size and 0 <= y.min() and y.max() < 1 << 16:
        yy = y.astype(np.int64, copy=False)
        classes = np.flatnonzero(np.bincount(yy))
        lut = np.zeros(int(classes[-1]) + 1, np.int64)
        lut[classes] = np.arange(len(classes))
        return classes.astype(y.dtype), lut[yy]
    return np.unique(y, return_inverse=True)


def _decode(classes, pred):
    """Labels of class indices pred: classes[pred], without the gather when classes are 0..C-1."""
    if classes.dtype.kind in "iu" and np.array_equal(classes, np.arange(len(classes))):
        return pred.astype(classes.dtype, copy=False)
    return classes[pred]


def _take(a, idx):
    """a (L, n), idx (L, m, k) -> a[l, idx[l, i, j]] (L, m, k)."""
    L, m, k = idx.shape
    return a.gather(1, idx.reshape(L, m * k)).reshape(L, m, k)


def knn_predict(X_train, y_train, X_test, k=N_NEIGHBORS, device="cpu"):
    """Class predictions for X_test (m, F) from X_train (n, F), labels y_train (n,) (any values)."""
    classes, yi = _encode(y_train)
    tr = torch.as_tensor(np.asarray(X_train, dtype=np.float64), device=device)
    te = torch.as_tensor(np.asarray(X_test, dtype=np.float64), device=device)
    pred = _general(
        tr.reshape(len(tr), -1), torch.as_tensor(yi, device=device), te.reshape(len(te), -1), k, len(classes)
    )
    return _decode(classes, pred.cpu().numpy())


def _single(tr, y, te, k, n_classes):
    """Predictions (L, m) from each layer alone (the torch paths): tr (n, L, D), te (m, L, D)."""
    if tr.shape[2] == 1:
        return _one_dim(tr[:, :, 0], y, te[:, :, 0], k, n_classes)
    return torch.stack(
        [_general(tr[:, l].contiguous(), y, te[:, l].contiguous(), k, n_classes) for l in range(tr.shape[1])]
    )


def fold_curves(X, y, folds, k=N_NEIGHBORS, device="cpu", curves=True, n_cand=64, cumulative=True):
    """Out-of-fold predictions for every layer selection.

    X (N, L, D) features, y (N,) labels, folds (N,) fold of each row. Returns a dict of
    (L, N) arrays of predicted labels: "cumulative"[l] from layers 0..l (the last row is the
    all-layers probe) and, when curves, "single"[l] from layer l alone. Without curves,
    "cumulative" holds the all-layers row only; with cumulative=False only "single" is computed.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2:
        X = X[:, :, None]
    classes, yi = _encode(y)
    N, L, D = X.shape
    Xt = torch.as_tensor(X, device=device)
    yt = torch.as_tensor(yi, device=device)
    cum = np.zeros((L, N), dtype=np.int64) if cumulative or not curves else None
    fold_ids, fold_idx = np.unique(folds, return_inverse=True)
    if len(fold_ids) < 2:
        raise ValueError("a fold left no training data")
    compiled = curves and D == 1 and numba is not None and Xt.device.type == "cpu"
    if compiled:  # every fold's single-layer curve from one sort per layer
        single = _one_dim_folds(X.reshape(N, L), yi, fold_idx, k, len(classes))  # a view: D == 1
    else:
        single = np.empty((L, N), dtype=np.int64) if curves else None
    scan = curves and cumulative and Xt.device.type == "cpu" and L * D <= SCAN_MAX_DIMS and numba is not None
    if scan:  # every fold's cumulative curve from one sort per prefix
        cum = _cumulative_scan(X, yi, fold_idx, np.arange(N), k, len(classes))
    for f in [] if compiled and (scan or not cumulative) else fold_ids:  # the work left per fold
        te_m, tr_m = folds == f, folds != f
        tr, te, ytr = (
            Xt[torch.as_tensor(tr_m, device=device)],
            Xt[torch.as_tensor(te_m, device=device)],
            yt[torch.as_tensor(tr_m, device=device)],
        )
        if not curves:
            flat_tr, flat_te = tr.reshape(len(tr), -1), te.reshape(len(te), -1)
            cum[L - 1, te_m] = _general(flat_tr, ytr, flat_te, k, len(classes)).cpu().numpy()
            continue
        if cumulative and not scan:
            cum[:, te_m] = _cumulative(tr, ytr, te, k, len(classes), n_cand).cpu().numpy()
        if compiled:
            continue
        single[:, te_m] = _single(tr, ytr, te, k, len(classes)).cpu().numpy()
    out = {"cumulative": _decode(classes, cum if curves else cum[-1:])} if cumulative else {}
    if curves:
        out["single"] = _decode(classes, single)
    return out


def macro_f1(y, pred, labels):
    """Macro F1 over `labels` (as sklearn's f1_score(average="macro", labels=labels), zero_division=0)."""
    y, pred = np.asarray(y), np.asarray(pred)
    f1 = []
    for c in labels:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))
