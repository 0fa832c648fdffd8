"""In-context prompts over statement-based items, answer scoring, and probe features.

An item is a dict: id, statements [str], question str, answer str (an answer word such as
"True", or a text), useful [bool], step [int] (-1 = not useful), depth int, group int.
The prompt is N demonstrations followed by the query:

    <statements of demo 1> <question 1> <suffix> <answer 1>\n\n ... <statements> <question> <suffix>

Statement and question character spans are recorded while the text is built, mapped to tokens
with the offset mapping, and the question's tokens are the probe's queries. The answer is read
from the next-token scores at the last position, restricted to the answer words' token ids
(resolved from the tokenizer: the last id of the word encoded after a space).
"""

import numpy as np
import torch

from .capture import capture, pad_batch, pad_queries
from .features import statement_features, token_spans
from .models import model_device
from .utils import MechprobeError, get_logger, progress

log = get_logger()


def answer_ids(tokenizer, words):
    """Token id of each answer word as it follows a space (the last id: LLaMA's ' True' is '▁', '▁True')."""
    ids = []
    for w in words:
        enc = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if not enc or (tokenizer.unk_token_id is not None and enc[-1] == tokenizer.unk_token_id):
            raise MechprobeError(f"answer word {w!r} has no token of its own in this tokenizer")
        ids.append(enc[-1])
    if len(set(ids)) != len(ids):
        raise MechprobeError(f"answer words {words} share a token id {ids}")
    return ids


class PromptBuilder:
    def __init__(self, suffix="True or False?", answer_in_query=False, question_prefix="", answer_prefix=" "):
        self.suffix = suffix
        self.answer_in_query = answer_in_query
        self.question_prefix = question_prefix
        self.answer_prefix = answer_prefix

    def block(self, item, with_answer):
        """Text of one item and the character spans of its statements and question (relative)."""
        parts, spans = [], []
        pos = 0
        for s in item["statements"]:
            if parts:
                parts.append(" ")
                pos += 1
            spans.append((pos, pos + len(s)))
            parts.append(s)
            pos += len(s)
        q0 = pos + 1 + len(self.question_prefix)
        text = "".join(parts) + " " + self.question_prefix + item["question"]
        qspan = (q0, q0 + len(item["question"]))
        if self.suffix:
            text += " " + self.suffix
        if with_answer:
            text += self.answer_prefix + item["answer"]
        return text, spans, qspan

    def build(self, item, demos):
        """Full prompt text, statement char spans, question char span (of the query item)."""
        head = "".join(self.block(d, True)[0] + "\n\n" for d in demos)
        text, spans, qspan = self.block(item, self.answer_in_query)
        off = len(head)
        return head + text, [(a + off, b + off) for a, b in spans], (qspan[0] + off, qspan[1] + off)


def pick_demos(items, n_demos, seed, pool=None):
    """For each item, n_demos other items (seeded) from `pool` (default: items)."""
    pool = items if pool is None else pool
    rng = np.random.default_rng(seed)
    out = []
    for it in items:
        cand = [j for j in rng.permutation(len(pool))[: n_demos + 1] if pool[j]["id"] != it["id"]][:n_demos]
        out.append([pool[j] for j in cand])
    return out


def encode_items(tokenizer, items, demos, builder, source="items"):
    """Token ids, statement token spans, question token positions, text and offset mapping of every prompt."""
    enc = []
    for it, ds in zip(items, demos):
        text, spans, qspan = builder.build(it, ds)
        e = tokenizer(text, return_offsets_mapping=True)
        where = f"{source}:{it['line']}: question {it['id']}" if "line" in it else f"{source}: question {it['id']}"
        st = token_spans(e["offset_mapping"], spans, text, where)
        ((q0, q1),) = token_spans(e["offset_mapping"], [qspan], text, where + " (question)")
        enc.append(
            {
                "ids": e["input_ids"],
                "spans": st,
                "query": list(range(q0, q1)),
                "text": text,
                "offsets": e["offset_mapping"],
            }
        )
    return enc


def auto_batch_size(model, max_len, requested=0):
    """Batch size: the one asked for, or one that fits the free memory of the model's device."""
    if requested:
        return requested
    dev = model_device(model)
    cfg = model.config
    H = getattr(cfg, "num_attention_heads", 12)
    d = getattr(cfg, "hidden_size", 768)
    per_seq = 4 * (3 * H * max_len * max_len + 40 * max_len * d)  # bytes: one layer's eager attention + activations
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
        return int(max(1, min(64, 0.5 * free // per_seq)))
    return int(max(1, min(32, (1 << 30) // per_seq)))  # ~1 GiB of working memory on the CPU


def run_items(
    model, enc, word_ids, batch_size=0, query_pool="mean", normalize="none", per_head=False, layers=None, desc=None
):
    """Capture every prompt: features (S, L, H') per item, and the answer-word scores (n_items, n_words)."""
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]["ids"]))
    feats, scores = [None] * len(enc), [None] * len(enc)
    bs = auto_batch_size(model, max(len(e["ids"]) for e in enc), batch_size)
    pad = 0
    bar = progress(total=len(enc), desc=desc, unit="prompt", disable=desc is None)
    s = 0
    while s < len(order):
        idx = order[s : s + bs]
        ids, mask = pad_batch([enc[i]["ids"] for i in idx], pad)
        try:
            rows, last = capture(
                model, ids, mask, pad_queries([enc[i]["query"] for i in idx]), layers, return_logits=True
            )
        except torch.OutOfMemoryError:
            if bs == 1:
                raise MechprobeError(
                    f"out of memory on a single prompt of {ids.shape[1]} tokens; use fewer demonstrations, 8-bit "
                    "loading or a bigger device"
                ) from None
            bs = max(1, bs // 2)
            log.info("out of memory: batch size lowered to %d", bs)
            torch.cuda.empty_cache()
            continue
        for j, i in enumerate(idx):
            nq = len(enc[i]["query"])
            feats[i] = statement_features(
                rows[j], enc[i]["spans"], query_pool, per_head, normalize, n_queries=nq
            ).numpy()
            scores[i] = last[j, word_ids].numpy()
        bar.update(len(idx))
        s += len(idx)
    bar.close()
    return feats, np.stack(scores)
