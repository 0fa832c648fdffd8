"""Task A: find the k-th smallest of a list of numbers (data, gold trees, tokenization).

A record is a list x_0..x_{n-1} of numbers and k (0-indexed). The answer is
sorted(x)[k]. Gold tree, with duplicates handled explicitly: order positions by
(value, position) -- a stable sort, so of two equal values the earlier position
ranks first. The first k+1 positions in that order are *useful*; the step of a
useful position is its rank r in 0..k (leaves first, the answer is step k, the
root). Every other position has step -1. Thus the useful values are exactly
sorted(x)[:k+1], each position is used once, and the tree is unique.

By hand:  python -m mechprobe.data ksmallest --out data/ksmallest/min01 --k 1
"""

import shutil
from pathlib import Path

import numpy as np

from .features import normalized_entropy
from .runs import data_lock, write_json, write_jsonl
from .utils import MechprobeError, get_logger, iter_jsonl, read_json

log = get_logger()
SPECIALS = ["<pad>", "<unk>"]


def gold_tree(numbers, k):
    """Return (useful, step) lists for one list; see the module docstring for the definition."""
    n = len(numbers)
    if not 0 <= k < n:
        raise MechprobeError(f"k={k} is outside the list: expected 0 <= k < {n}")
    order = sorted(range(n), key=lambda i: (numbers[i], i))  # stable: ties by position
    step = [-1] * n
    for r, i in enumerate(order[: k + 1]):
        step[i] = r
    return [s >= 0 for s in step], step


def make_record(numbers, k):
    useful, step = gold_tree(numbers, k)
    return {
        "numbers": [int(x) for x in numbers],
        "k": k,
        "answer": int(sorted(numbers)[k]),
        "useful": useful,
        "step": step,
    }


def generate(vocab, n_items, length, k, duplicates, rng):
    """Draw `n_items` lists of `length` numbers from `vocab` (with replacement iff duplicates)."""
    vocab = np.asarray(vocab)
    if not duplicates and len(vocab) < length:
        raise MechprobeError(
            f"a list of {length} distinct numbers needs at least {length} numbers in the vocabulary, got {len(vocab)}"
        )
    out = []
    for _ in range(n_items):
        if duplicates:
            nums = rng.choice(vocab, size=length, replace=True)
        else:
            nums = rng.choice(vocab, size=length, replace=False)
        out.append(make_record(nums.tolist(), k))
    return out


# ---------------------------------------------------------------- tokenization


def single_token_numbers(tokenizer, n, max_number=100000):
    """The first `n` non-negative integers that are one token both with and without a leading space."""
    found = []
    for x in range(max_number):
        a = tokenizer(str(x), add_special_tokens=False)["input_ids"]
        b = tokenizer(" " + str(x), add_special_tokens=False)["input_ids"]
        if _is_number_token(tokenizer, x, a) and _is_number_token(tokenizer, x, b):
            found.append(x)
            if len(found) == n:
                return found
    raise MechprobeError(
        f"the tokenizer has only {len(found)} integers below {max_number} that are one token with and without a "
        f"leading space; {n} were asked for"
    )


def _is_number_token(tokenizer, x, ids):
    """One token, not the unknown token, and decoding it gives the number back."""
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id and tokenizer.decode(ids).strip() == str(x)


def check_vocab_tokens(tokenizer, vocab, source="vocabulary"):
    """Raise naming the offenders when some number of `vocab` is not a single token both ways
    (with and without a leading space), or is the unknown token, or does not decode back to itself."""
    bad = []
    for x in vocab:
        a = tokenizer(str(x), add_special_tokens=False)["input_ids"]
        b = tokenizer(" " + str(x), add_special_tokens=False)["input_ids"]
        if not (_is_number_token(tokenizer, x, a) and _is_number_token(tokenizer, x, b)):
            bad.append(x)
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise MechprobeError(
            f"{source}: {len(bad)} of {len(vocab)} numbers are not a single known token that decodes back to the "
            "number "
            f"(with and without a leading space): {shown}"
        )


def build_word_tokenizer(vocab):
    """A word-level tokenizer whose tokens are the numbers of `vocab` (plus <pad>, <unk>).

    Saved with `save_pretrained` next to a model, `AutoTokenizer.from_pretrained(dir)` loads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + [str(int(x)) for x in vocab]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<pad>")


def prompt_text(numbers):
    """The prompt is the numbers separated by single spaces, nothing else."""
    return " ".join(str(x) for x in numbers)


def answer_token_id(tokenizer, number):
    ids = tokenizer(" " + str(number), add_special_tokens=False)["input_ids"]
    if not _is_number_token(tokenizer, number, ids):
        raise MechprobeError(
            f"answer {number} is not a single known token of this tokenizer (got {ids}, "
            f"decoded {tokenizer.decode(ids)!r}; unknown token id {tokenizer.unk_token_id})"
        )
    return ids[0]


def encode_records(tokenizer, records):
    """Token ids (N, n) of the prompts and the answer ids (N,); each number must be one token."""
    import torch

    texts = [prompt_text(r["numbers"]) for r in records]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(records[0]["numbers"])
    unk = tokenizer.unk_token_id
    for i, ids in enumerate(enc):
        if len(ids) != len(records[i]["numbers"]) or len(ids) != n:
            raise MechprobeError(
                f"record {i}: {len(records[i]['numbers'])} numbers became {len(ids)} tokens; every number must be "
                f"one token and every list must have length {n}"
            )
        if unk is not None and unk in ids:
            bad = sorted({x for x, t in zip(records[i]["numbers"], ids) if t == unk})
            raise MechprobeError(
                f"record {i}: the tokenizer maps the numbers {bad} to its unknown token {tokenizer.unk_token!r}; "
                "use the tokenizer the model was trained with, or data drawn from its vocabulary"
            )
    cache = {}
    ans = []
    for r in records:
        a = r["answer"]
        if a not in cache:
            cache[a] = answer_token_id(tokenizer, a)
        ans.append(cache[a])
    return torch.tensor(enc, dtype=torch.long), torch.tensor(ans, dtype=torch.long)


# ---------------------------------------------------------------- attention on the lists


def check_fits(model, ids, where):
    """A clear error before any forward pass when the lists' prompts (ids (N, n)) are longer than the
    model's positions (models.check_positions)."""
    from .models import check_positions

    check_positions(model, int(ids.shape[1]), f"{where}: each list's prompt", "use shorter lists (length=)")


def last_token_attention(model, ids, batch_size=128, desc=None):
    """Attention of the last token of every list: rows (N, L, H, T) and accuracy logits (N, V)."""
    import torch

    from .capture import capture
    from .utils import progress

    rows, logits = [], []
    it = range(0, len(ids), batch_size)
    for s in progress(it, desc=desc, unit="batch", leave=False, disable=desc is None):
        b = ids[s : s + batch_size]
        mask = torch.ones_like(b)
        qp = torch.full((len(b), 1), b.shape[1] - 1, dtype=torch.long)
        r, lg = capture(model, b, mask, qp, return_logits=True)  # (b, L, H, 1, T), (b, V)
        rows.append(r[:, :, :, 0])
        logits.append(lg)
    return torch.cat(rows), torch.cat(logits)


def features_from_rows(rows, normalize="max", per_head=False):
    """rows (N, L, H, T) of a one-token-per-number prompt -> list of (T, L, H') features."""
    from .features import statement_features

    T = rows.shape[-1]
    spans = [(i, i + 1) for i in range(T)]
    return [statement_features(r[:, :, None], spans, "last", per_head, normalize).numpy() for r in rows]


def rank_order(rows, records):
    """Reorder the key axis of rows (N, ..., T) from position order to value-rank order."""
    import torch

    perm = torch.tensor(
        [sorted(range(len(r["numbers"])), key=lambda i: (r["numbers"][i], i)) for r in records]
    )  # (N, T)
    idx = perm.view(perm.shape[0], *([1] * (rows.dim() - 2)), perm.shape[1]).expand_as(rows)
    return torch.gather(rows, -1, idx)


def model_accuracy(model, ids, answers, batch_size=512):
    """Share of lists whose argmax next-token prediction at the last position is the answer token."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            logits = model(input_ids=ids[i : i + batch_size].to(dev), logits_to_keep=1).logits[:, -1]  # (B, V)
            correct += (logits.argmax(-1).cpu() == answers[i : i + batch_size]).sum().item()
    return correct / len(ids)


class ListTask:
    """The k-th smallest lists as a training task (training.run_loop): data {split: (ids, answers)}."""

    def __init__(self, data, batch_size, seed):
        self.data, self.batch_size, self.seed = data, batch_size, seed

    def epoch_batches(self, epoch):
        """The epoch's seeded permutation of the training lists, cut into batches."""
        import torch

        n = len(self.data["train"][0])
        perm = torch.from_numpy(np.random.default_rng(self.seed * 1000 + epoch).permutation(n))
        return [perm[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

    def batch(self, idx):
        ids, answers = self.data["train"]
        return ids[idx], None, answers[idx]  # one length: no padding

    def accuracy(self, model, split):
        return model_accuracy(model, *self.data[split])


def answer_accuracy(logits, answers):
    """Share of lists whose argmax prediction (logits (N, V)) is the answer token (answers (N,))."""
    return float((logits.argmax(-1) == answers).float().mean())


# ---------------------------------------------------------------- files


def load_split(data_dir, split):
    """Read `<data_dir>/<split>.jsonl`, checking every record's fields."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir():
        what = "is a file, not a data directory" if Path(data_dir).exists() else "data directory not found"
        raise MechprobeError(
            f"{data_dir}: {what} (generate one with python -m mechprobe.data ksmallest --out {data_dir})"
        )
    meta_k = load_meta(data_dir).get("k") if (Path(data_dir) / "meta.json").exists() else None
    rows = []
    for line, r in iter_jsonl(path):
        if not isinstance(r, dict):
            raise MechprobeError(f"{path}:{line}: expected a JSON object")
        for key in ("numbers", "k", "answer"):
            if key not in r:
                raise MechprobeError(f"{path}:{line}: missing field '{key}'; expected numbers, k, answer, useful, step")
        nums, k = r["numbers"], r["k"]
        if not isinstance(nums, list) or not nums or not all(isinstance(x, int) for x in nums):
            raise MechprobeError(f"{path}:{line}: field 'numbers' must be a non-empty list of integers")
        if not isinstance(k, int) or not 0 <= k < len(nums):
            raise MechprobeError(f"{path}:{line}: k={k} is outside the list of {len(nums)} numbers")
        if meta_k is not None and k != meta_k:
            raise MechprobeError(
                f"{path}:{line}: k={k}, but {Path(data_dir) / 'meta.json'} says k={meta_k}; the records and "
                "meta.json must agree"
            )
        if r["answer"] != sorted(nums)[k]:
            raise MechprobeError(f"{path}:{line}: answer {r['answer']} is not the k-th smallest ({sorted(nums)[k]})")
        useful, step = gold_tree(nums, k)
        r["useful"], r["step"] = useful, step
        rows.append(r)
    if not rows:
        raise MechprobeError(f"{path}: no records")
    return rows


def load_meta(data_dir):
    return read_json(Path(data_dir) / "meta.json", "dataset meta.json")


def write_dataset(out, vocab, k, length=16, duplicates=True, seed=0, sizes=(100000, 2000, 2000), source="range"):
    """Generate and write train/val/test JSONL and meta.json into `out` (atomically per file)."""
    out = Path(out)
    if not 0 <= k < length:
        raise MechprobeError(f"k={k} is outside the list: expected 0 <= k < {length}")
    if len(sizes) != 3 or any(int(n) < 1 for n in sizes):
        raise MechprobeError(
            f"sizes={' '.join(map(str, sizes))}: expected three positive numbers of lists (train val test)"
        )
    if not vocab:
        raise MechprobeError("the vocabulary is empty: VOCAB_SIZE must be at least 1")
    if out.exists() and not out.is_dir():
        raise MechprobeError(f"{out}: is a file; the dataset needs a folder")
    if out.exists() and any(out.iterdir()):
        raise MechprobeError(
            f"{out}: holds files but no meta.json (an incomplete dataset?); delete it or choose another data_dir"
        )
    tmp = out.with_name("." + out.name + ".tmp")  # generated apart, renamed when complete
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), sizes):
        write_jsonl(tmp / f"{split}.jsonl", generate(vocab, n, length, k, duplicates, rng))
    meta = {
        "k": k,
        "length": length,
        "duplicates": duplicates,
        "seed": seed,
        "sizes": dict(zip(("train", "val", "test"), sizes)),
        "vocab_source": source,
        "vocab": [int(x) for x in vocab],
        "tree": "useful = k+1 smallest by (value, position); step = rank; others step -1",
    }
    write_json(tmp / "meta.json", meta)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    return meta


def vocab_for(tokenizer_dir, vocab_size):
    """Numbers 0..N-1 for the embedded word-level tokenizer, or the single-token numbers of a real one."""
    if tokenizer_dir in (None, "", "scratch"):
        return list(range(vocab_size)), "range"
    from .models import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    return single_token_numbers(tok, vocab_size), f"single-token numbers of {tokenizer_dir}"


def head_entropy(rows, records):
    """rows (N, L, H, T) -> dict of (L, H) arrays: position, rank, per_list."""
    return {
        "position": normalized_entropy(rows.mean(0)).numpy(),
        "rank": normalized_entropy(rank_order(rows, records).mean(0)).numpy(),
        "per_list": normalized_entropy(rows).mean(0).numpy(),
    }


def placed_lists(vocab, length, k, positions, n, seed):
    """Lists whose k+1 smallest numbers (distinct) sit at `positions` (in rank order)."""
    if len(positions) != k + 1 or any(not 0 <= p < length for p in positions) or len(set(positions)) != len(positions):
        raise MechprobeError(
            f"positions={positions}: expected {k + 1} distinct positions in 0..{length - 1} (one per useful number)"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        vals = np.sort(rng.choice(vocab, length, replace=False))
        rest = list(vals[k + 1 :])
        rng.shuffle(rest)
        nums = [None] * length
        for r, p in enumerate(positions):
            nums[p] = int(vals[r])
        it = iter(rest)
        nums = [x if x is not None else int(next(it)) for x in nums]
        out.append(make_record(nums, k))
    return out


def ensure_data(data_dir, model_arg, k, vocab_size, seed, sizes, tok=None, length=16):
    """Generate the dataset when `data_dir` holds none yet (and say so), one run at a time (data_lock)."""
    with data_lock(data_dir):
        return _ensure_data(data_dir, model_arg, k, vocab_size, seed, sizes, tok, length)


def _ensure_data(data_dir, model_arg, k, vocab_size, seed, sizes, tok, length):
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise MechprobeError(f"{data_dir}: is a file; the data directory must be a folder")
    if (Path(data_dir) / "meta.json").exists():
        meta = load_meta(data_dir)
        log.info("using the existing dataset in %s (sizes %s; delete it to regenerate)", data_dir, meta.get("sizes"))
        return meta
    log.info(
        "data directory %s has no dataset yet: generating it (k=%d, %d numbers, sizes %s)",
        data_dir,
        k,
        vocab_size,
        sizes,
    )
    if model_arg == "scratch":
        vocab, source = list(range(vocab_size)), "range"
    else:
        vocab, source = single_token_numbers(tok, vocab_size), f"single-token numbers of {model_arg}"
    return write_dataset(data_dir, vocab, k, length=length, sizes=sizes, seed=seed, source=source)


def load_splits(data_dir, tok):
    """{split: (ids (N, n), answer ids (N,))} for train / val / test."""
    return {s: encode_records(tok, load_split(data_dir, s)) for s in ("train", "val", "test")}


def mean_matrices(rows, records):
    """rows (N, L, H, T) -> position-order and rank-order (T, L) means of the head average."""
    avg = rows.mean(2)  # (N, L, T)
    return avg.mean(0).T.numpy(), rank_order(avg, records).mean(0).T.numpy()


def probe_trees(rows, records, seed=0):
    """The tree the probe predicts for every list, out of fold (probing.oof_tree, 2 folds)."""
    from .probing import ProbeData, oof_tree

    data = ProbeData(features_from_rows(rows), [r["useful"] for r in records], [r["step"] for r in records])
    return [t.tolist() for t in oof_tree(data, 2, seed)]
