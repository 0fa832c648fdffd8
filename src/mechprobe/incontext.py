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
from .prefix import prefix_kv
from .utils import MechprobeError, get_logger, progress

log = get_logger()


def answer_ids(tokenizer, words, lead=" "):
    """Token id of each answer word as it follows `lead` (a space in a plain prompt; the end of the
    assistant's header, a newline, in a chat prompt): the last id of lead + word (LLaMA's ' True' is
    '▁', '▁True')."""
    ids = []
    for w in words:
        enc = tokenizer(lead + w, add_special_tokens=False)["input_ids"]
        if not enc or (tokenizer.unk_token_id is not None and enc[-1] == tokenizer.unk_token_id):
            raise MechprobeError(f"answer word {w!r} has no token of its own in this tokenizer")
        if tokenizer.decode([enc[-1]]).strip().lstrip("▁") != w:
            raise MechprobeError(
                f"answer word {w!r} is not one token after {lead!r} in this tokenizer (its last token reads "
                f"{tokenizer.decode([enc[-1]])!r}); its score would be a piece's"
            )
        ids.append(enc[-1])
    if len(set(ids)) != len(ids):
        raise MechprobeError(f"answer words {words} share a token id {ids}")
    return ids


SENTINEL = "\x00{}\x00"  # stands for a turn's text while a chat template is rendered


def chat_pieces(tokenizer):
    """The text a tokenizer's chat template puts around the turns, as (start, user -> assistant,
    assistant -> user, end of the last user turn + generation prompt): rendered once with sentinel
    texts for one demonstration (user, assistant) and the query (user), then split at them."""
    if not getattr(tokenizer, "chat_template", None):
        raise MechprobeError("the chat prompt format needs a tokenizer with a chat template (this one has none)")
    msgs = [
        {"role": "user", "content": SENTINEL.format(0)},
        {"role": "assistant", "content": SENTINEL.format(1)},
        {"role": "user", "content": SENTINEL.format(2)},
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = text.split("\x00")
    if len(parts) != 7 or parts[1:6:2] != ["0", "1", "2"]:
        raise MechprobeError("the tokenizer's chat template does not render each turn's text once, as given")
    return (parts[0], parts[2], parts[4], parts[6])


class PromptBuilder:
    """The prompt text of an item after its demonstrations, with the character spans of its statements
    and question (build).

    Plain few-shot (chat=None, the paper's format): each demonstration's block
    `<statements> <question> <suffix> <answer>`, a blank line after each, then the query's block without
    its answer. Chat (chat=chat_pieces(tokenizer)): each demonstration a user turn (its block without the
    answer) and an assistant turn (the answer), the query a last user turn and the template's
    generation prompt; the answer is read where the assistant's reply starts."""

    def __init__(
        self, suffix="True or False?", answer_in_query=False, question_prefix="", answer_prefix=" ", chat=None
    ):
        self.suffix = suffix
        self.answer_in_query = answer_in_query
        self.question_prefix = question_prefix
        self.answer_prefix = answer_prefix
        self.chat = None if chat is None else tuple(chat)

    @property
    def answer_lead(self):
        """The text right before the answer word (answer_ids encodes the word after it)."""
        return self.answer_prefix if self.chat is None else (self.chat[1][-1:] or " ")

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
        if self.chat is not None:
            start, u2a, a2u, gen = self.chat
            head = start + "".join(self.block(d, False)[0] + u2a + d["answer"] + a2u for d in demos)
            text, spans, qspan = self.block(item, False)
            text += gen + (item["answer"] if self.answer_in_query else "")
            off = len(head)
            return head + text, [(a + off, b + off) for a, b in spans], (qspan[0] + off, qspan[1] + off)
        head = "".join(self.block(d, True)[0] + "\n\n" for d in demos)
        text, spans, qspan = self.block(item, self.answer_in_query)
        off = len(head)
        return head + text, [(a + off, b + off) for a, b in spans], (qspan[0] + off, qspan[1] + off)


def pick_demos(items, n_demos, seed, pool=None):
    """For each item, n_demos demonstrations from `pool` (default: items), never the item itself: one
    set drawn per run (seeded), so that the prompts share their first tokens (prefix.py runs them
    once); an item that is itself in that set gets it with the next drawn pool item in its place."""
    pool = items if pool is None else pool
    if n_demos == 0:
        return [[] for _ in items]
    need = n_demos + (1 if any(it["id"] in {p["id"] for p in pool} for it in items) else 0)
    if len(pool) < need:
        raise MechprobeError(
            f"{n_demos} demonstrations asked for, but the pool holds {len(pool)} items"
            + (" (an item is never its own demonstration)" if need > n_demos else "")
        )
    order = [int(j) for j in np.random.default_rng(seed).permutation(len(pool))[: n_demos + 1]]
    out = []
    for it in items:
        own = [j for j in order if pool[j]["id"] != it["id"]][:n_demos]
        out.append([pool[j] for j in own])
    return out


MAX_TEXT_CHARS = 100_000  # a statement or question longer than this is refused before tokenising


def check_text_lengths(items, source="items"):
    """A clear error naming the item when a statement or question is longer than MAX_TEXT_CHARS
    characters (a fast tokenizer aborts the process on tens of megabytes of text)."""
    for it in items:
        for k, text in enumerate([*it["statements"], it["question"]]):
            if len(text) > MAX_TEXT_CHARS:
                what = f"statement {k}" if k < len(it["statements"]) else "the question"
                where = f"{source}:{it['line']}" if "line" in it else source
                raise MechprobeError(
                    f"{where}: question {it.get('id', '?')}: {what} has {len(text):,} characters; expected at most "
                    f"{MAX_TEXT_CHARS:,}"
                )


def encode_items(tokenizer, items, demos, builder, source="items"):
    """Token ids, statement token spans, question token positions, text and offset mapping of every prompt
    (texts longer than MAX_TEXT_CHARS refused first)."""
    check_text_lengths(items, source)
    check_text_lengths({id(d): d for ds in demos for d in ds}.values(), source + " (demonstrations)")
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


def prefix_groups(model, enc, share_prefix=True):
    """The prompts grouped by the prefix they share (prefix.group; one group with none when the model
    cannot run on a cache or share_prefix is off), logged."""
    from . import prefix

    groups = prefix.model_groups(model, [e["ids"] for e in enc], [e["query"][0] for e in enc], share_prefix)
    shared = [g for g in groups if g.prefix]
    if shared:
        lens = sorted(g.prefix for g in shared)
        log.info(
            "%d of %d prompts run on a shared prefix (%s)",
            sum(len(g.members) for g in shared),
            len(enc),
            f"{lens[0]} tokens" if len(lens) == 1 else f"{len(lens)} prefixes of {lens[0]}-{lens[-1]} tokens",
        )
    return groups


def _halved(bs, n_tokens):
    """The batch size after an out-of-memory error: half, or a clear error at one prompt."""
    if bs == 1:
        raise MechprobeError(
            f"out of memory on a single prompt of {n_tokens} tokens; use fewer demonstrations, "
            "8-bit loading or a bigger device"
        ) from None
    log.info("out of memory: batch size lowered to %d", bs // 2)
    torch.cuda.empty_cache()
    return bs // 2


def run_items(
    model,
    enc,
    word_ids,
    batch_size=0,
    query_pool="mean",
    normalize="none",
    per_head=False,
    layers=None,
    desc=None,
    share_prefix=True,
):
    """Capture every prompt: features (S, L, H') per item, and the answer-word scores (n_items, n_words).

    share_prefix: prompts that start with the same tokens (the run's demonstrations) run only their
    own tokens on the shared prefix's keys and values, computed once (prefix.py; the same rows and
    scores as full passes)."""
    n = len(enc)
    feats, scores = [None] * n, [None] * n
    groups = prefix_groups(model, enc, share_prefix)
    bs = auto_batch_size(model, max(len(e["ids"]) for e in enc), batch_size)
    bar = progress(total=n, desc=desc, unit="prompt", disable=desc is None)
    for g in groups:
        P = g.prefix
        pkv = prefix_kv(model, enc[g.members[0]]["ids"][:P]) if P else None
        order = sorted(g.members, key=lambda i: len(enc[i]["ids"]))
        s = 0
        while s < len(order):
            idx = order[s : s + bs]
            ids, mask = pad_batch([enc[i]["ids"][P:] for i in idx], 0)
            qp = pad_queries([[q - P for q in enc[i]["query"]] for i in idx])
            try:
                rows, last = capture(model, ids, mask, qp, layers, return_logits=True, prefix=pkv)
            except torch.OutOfMemoryError:
                bs = _halved(bs, P + ids.shape[1])
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
